#!/usr/bin/env python3
"""Turns what bench/sync.sh leaves in a run directory into the Markdown report.

    python3 bench/sync_report.py bench/out/sync-DATE/ > bench/out/sync-DATE.md

Reads machine.json, sets.json and results.jsonl (one JSON object per measurement, written
by sync_measure.py: kind "sync", "latency" or "w3"). A measurement that failed is listed
under "Failures and problems" with its error; a figure with no successful measurement
shows as "failed" or "not run".
"""
from __future__ import annotations

import json
import os
import statistics
import sys

MIB = 1024 * 1024
TARGET_LATENCY_MS = 300
TARGET_INSERT = 200_000
TARGET_OVERWRITE = 1_200_000
TARGET_RSS_KIB = 64 * 1024
TARGET_RSYNC_FACTOR = 1.5
TOOLS = ("weft", "syncthing", "rsync")


def n(x, digits=0) -> str:
    return f"{x:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**PASS**" if ok else "**FAIL**")


def secs(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def main() -> int:
    d = sys.argv[1]
    m = json.load(open(os.path.join(d, "machine.json"))) if os.path.exists(os.path.join(d, "machine.json")) else {}
    sets = json.load(open(os.path.join(d, "sets.json"))) if os.path.exists(os.path.join(d, "sets.json")) else {}
    recs = []
    p = os.path.join(d, "results.jsonl")
    if os.path.exists(p):
        recs = [json.loads(line) for line in open(p) if line.strip()]
    tools_run = m.get("tools", list(TOOLS))

    def cell_missing(tool: str, kind: str, **match) -> str:
        if tool not in tools_run:
            return "not run"
        fails = [r for r in recs if r["kind"] == kind and r["tool"] == tool
                 and all(r.get(k) == v for k, v in match.items()) and not r.get("ok")]
        return "**failed** (see below)" if fails else "not run"

    lines: list[str] = []
    w = lines.append
    w(f"# weft sync benchmark, {m.get('date', '?')}")
    w("")
    w("Produced by `bench/sync.sh` (what each figure times: bench/README.md, \"Sync benchmark\"). "
      "Two devices on one machine over 127.0.0.1, fresh homes and folders for every measurement, "
      f"{m.get('network', '?')}. Times are medians over the runs listed under Details; "
      "MB = 10^6 bytes, KB = 10^3 bytes.")
    if m.get("small"):
        w("")
        w("**Small validation data** (`--small`): not the W1/W2 data sets of the targets; the sync-time "
          "and RSS figures below are not comparable with baseline.md.")
    w("")
    w("| figure | weft | target | result | Syncthing | rsync |")
    w("|---|---|---|---|---|---|")

    # ---- end-to-end sync times
    sync = [r for r in recs if r["kind"] == "sync"]
    for label, info in sets.items():
        med = {}
        for t in TOOLS:
            ok = [r["wall_s"] for r in sync if r["tool"] == t and r["set"] == label and r.get("ok")]
            if ok:
                med[t] = statistics.median(ok)
        cells = {t: (secs(med[t]) + f" ({n(info['bytes'] / med[t] / 1e6)} MB/s)") if t in med
                 else cell_missing(t, "sync", set=label) for t in TOOLS}
        checks, parts = [], []
        if "weft" in med and "syncthing" in med:
            checks.append(med["weft"] < med["syncthing"])
            parts.append(f"{med['weft'] / med['syncthing']:.2f}× Syncthing's time")
        if "weft" in med and "rsync" in med:
            checks.append(med["weft"] <= TARGET_RSYNC_FACTOR * med["rsync"])
            parts.append(f"{med['weft'] / med['rsync']:.2f}× rsync's")
        res = verdict(all(checks) if checks else None) + (f" ({'; '.join(parts)})" if parts else "")
        w(f"| {label} end-to-end sync ({n(info['files'])} files, {n(info['bytes'] / 1e6, 1)} MB) | {cells['weft']} | "
          f"faster than Syncthing, ≤ {TARGET_RSYNC_FACTOR}× rsync | {res} | {cells['syncthing']} | {cells['rsync']} |")

    # ---- latency
    lat = {r["tool"]: r for r in recs if r["kind"] == "latency" and r.get("ok")}
    if "weft" in lat:
        s = lat["weft"]["samples_ms"]
        med = statistics.median(s)
        wc = f"{med:.0f} ms (min {min(s):.0f}, max {max(s):.0f}, n={len(s)})"
        res = verdict(med < TARGET_LATENCY_MS)
    else:
        wc, res = cell_missing("weft", "latency"), "—"
    if "syncthing" in lat:
        sc = "; ".join(f"{statistics.median(v) / 1000:.2f} s with {k}" for k, v in lat["syncthing"]["variants"].items())
    else:
        sc = cell_missing("syncthing", "latency")
    w(f"| New 1 KiB file on A → complete on B, median | {wc} | < {TARGET_LATENCY_MS} ms | {res} | {sc} | "
      f"{'no watch mode' if 'rsync' in tools_run else 'not run'} |")

    # ---- W3
    w3 = {r["tool"]: r for r in recs if r["kind"] == "w3" and r.get("ok")}

    def w3bytes(tool: str, edit: str) -> tuple[int, str] | None:
        r = w3.get(tool)
        if not r or edit not in r["edits"]:
            return None
        e = r["edits"][edit]
        if tool == "rsync":
            st = e["rsync_stats"]
            tot = st["sent"] + st["received"]
            return tot, f"{n(tot)} B (`--stats`: sent {n(st['sent'])} + received {n(st['received'])})"
        a, s3 = e["at_completion"], e["settled_3s"]
        return a["total"], (f"{n(a['total'])} B (A→B {n(a['a_to_b'])}, B→A {n(a['b_to_a'])}; "
                            f"{n(s3['total'])} B 3 s later)")

    for edit, label, target in (("insert10", "W3: 10 bytes inserted at offset 0 of 100 MiB, bytes on the wire", TARGET_INSERT),
                                ("overwrite1m", "W3: 1 MiB overwritten at offset 50 MiB, bytes on the wire", TARGET_OVERWRITE)):
        cells = {}
        for t in TOOLS:
            b = w3bytes(t, edit)
            cells[t] = b[1] if b else cell_missing(t, "w3")
        wb = w3bytes("weft", edit)
        w(f"| {label} | {cells['weft']} | < {n(target)} B | {verdict(wb[0] < target if wb else None)} | "
          f"{cells['syncthing']} | {cells['rsync']} |")

    # ---- peak RSS during the W2 sync
    rss_recs = [r for r in sync if r.get("rss_figure") and r.get("ok")]
    rss = {}
    for t in TOOLS:
        rs = [r for r in rss_recs if r["tool"] == t]
        if rs:
            rss[t] = {side: max((r["sides"].get(side, {}).get("peak_rss_kib") or 0) for r in rs) for side in ("A", "B")}
    w2label = list(sets)[1] if len(sets) > 1 else "W2"

    def rsscell(t: str) -> str:
        if t not in rss:
            return cell_missing(t, "sync", set=w2label)
        a, b = rss[t]["A"], rss[t]["B"]
        names = ("client", "daemon") if t == "rsync" else ("A", "B")
        return f"{names[0]} {a / 1024:.1f} MiB, {names[1]} {b / 1024:.1f} MiB"

    res = verdict(max(rss["weft"].values()) < TARGET_RSS_KIB) if "weft" in rss else "—"
    w(f"| Peak RSS of each side during the {w2label} sync (VmHWM, max over runs) | {rsscell('weft')} | < 64 MiB each | {res} | "
      f"{rsscell('syncthing')} | {rsscell('rsync')} |")

    w("")
    w("Sync times: from the rename that puts the data set into A's folder until every file is on B at "
      "full size under its final name (SHA-256 of every file checked afterwards). Indexing is included: weft's "
      "watcher; Syncthing `POST /rest/db/scan` right after the rename (watcher off); rsync "
      "`rsync -a --stats` over its daemon protocol. weft and Syncthing fsync what they write; rsync does not. "
      "Wire bytes: TCP payload in both directions between the two processes (`ss -tin` bytes_sent + "
      "bytes_received), \"3 s later\" includes the index/acknowledgement traffic that follows; rsync from `--stats`.")

    # ---- failures and problems
    probs = []
    for r in recs:
        what = f"{r['tool']} {r['kind']}" + (f" {r['set']} run {r['run']}" if r["kind"] == "sync" else "")
        if not r.get("ok"):
            probs.append(f"{what}: {r.get('error', 'failed').strip()}"
                         + (f"\n\n  state at the error: `{json.dumps(r.get('state_at_error'))[:1500]}`" if r.get("state_at_error") else ""))
        for pr in r.get("problems", []):
            probs.append(f"{what}: {pr}")
        for side, st in (r.get("stop") or {}).items():
            if isinstance(st, dict) and "already_exited" in st:
                probs.append(f"{what}: {side} had already exited (code {st['already_exited']}) when the harness stopped it")
            if isinstance(st, dict) and st.get("no_exit_within_15s_of_rest_shutdown"):
                probs.append(f"{what}: Syncthing {side} did not exit within 15 s of POST /rest/system/shutdown")
    if probs:
        w("")
        w("## Failures and problems")
        w("")
        for pr in probs:
            w(f"- {pr}")

    # ---- details
    w("")
    w("## Details")
    w("")
    for label in sets:
        for t in TOOLS:
            rs = [r for r in sync if r["tool"] == t and r["set"] == label]
            if not rs:
                continue
            parts = []
            for r in rs:
                if not r.get("ok"):
                    parts.append(f"run {r['run']}: failed")
                    continue
                wire = r["wire"]
                wb = (f"wire {n(wire['total'])} B" if t != "rsync"
                      else f"--stats {n(r.get('rsync_stats', {}).get('sent', 0) + r.get('rsync_stats', {}).get('received', 0))} B")
                cpu = ", ".join(f"{k} CPU {v['cpu_s']:.1f} s / RSS {v['peak_rss_kib'] / 1024:.0f} MiB"
                                for k, v in sorted(r["sides"].items()) if v.get("peak_rss_kib"))
                idle = r.get("idle_cpu")
                idle_s = (", idle afterwards " + ", ".join(f"{k} {v:.2f} s CPU in 5 s" for k, v in sorted(idle.items()))) if idle else ""
                parts.append(f"run {r['run']}: {r['wall_s']:.3f} s, {wb}, lo {n(wire.get('lo_bytes') or 0)} B, {cpu}{idle_s}; "
                             f"load {r.get('load_at_start', '?')}")
            w(f"- {t} {label}: " + "; ".join(parts))
    for t, r in lat.items():
        if t == "syncthing":
            for k, v in r["variants"].items():
                w(f"- syncthing latency, {k}: {', '.join(f'{x:.0f}' for x in v)} ms")
        else:
            w(f"- {t} latency samples: {', '.join(f'{x:.0f}' for x in r['samples_ms'])} ms")
    for t, r in w3.items():
        for edit, e in r["edits"].items():
            extra = ""
            if t == "rsync":
                st = e["rsync_stats"]
                extra = f"--stats sent {n(st['sent'])} received {n(st['received'])} literal {n(st.get('literal', 0))} matched {n(st.get('matched', 0))}; "
            else:
                a = e["at_completion"]
                extra = f"wire at completion {n(a['total'])} B over {a['connections']} connection(s); 3 s later {n(e['settled_3s']['total'])} B; "
            w(f"- {t} W3 {edit}: on B after {e['wall_s']:.3f} s; {extra}loopback {n(e['settled_3s'].get('lo_bytes') or 0)} B incl. headers (3 s later)")
    for r in sync:
        sa = r.get("status_after")
        if r["tool"] == "weft" and isinstance(sa, dict) and r.get("ok"):
            b = (sa.get("status") or {}).get("B") or {}
            w(f"- weft {r['set']} run {r['run']}: both in sync {sa.get('in_sync_after_s')} s after B held everything; "
              f"B's status bytes_received {n(b.get('bytes_received', 0))}")

    w("")
    w("## Machine")
    w("")
    for k, label in (("nproc", "nproc"), ("cpu", "CPU"), ("kernel", "uname -r"), ("mem", "memory"),
                     ("weft_commit", "weft commit (HEAD of the work tree)"), ("weft_binary", "weft binary"),
                     ("rustc", "rustc"), ("syncthing", "Syncthing"), ("rsync", "rsync"), ("network", "network"),
                     ("load_start", "load average at start"), ("load_end", "load average at end"),
                     ("runs", "runs per sync figure"), ("seed", "data seed"), ("pause", "pause after sync (s)")):
        if k in m:
            w(f"- {label}: {m[k]}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
