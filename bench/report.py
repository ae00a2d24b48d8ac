#!/usr/bin/env python3
"""Turns the JSON files bench/scan.sh leaves in a run directory into the Markdown report.

    python3 bench/report.py bench/out/scan-DATE/  > bench/out/scan-DATE.md

Files read (each optional; a missing one shows as "not run"):
  machine.json                       machine info, load averages
  passes-W1.json, passes-W2.json     weft-bench-passes output
  weft-W1-fresh-N.json, weft-W2-fresh-N.json, weft-W1-rescan-N.json
  w3-0-base.json, w3-1-insert10.json, w3-2-restore.json, w3-3-overwrite1m.json
  rss-big.json
  syncthing.json                     syncthing_scan.sh summary
A weft-*.json / w3-*.json / rss-*.json file is {"args", "wall_s", "user_s", "sys_s",
"maxrss_kib", "scan": <the JSON `weft scan --json` printed>}.
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import sys

KIB = 1024
MIB = 1024 * KIB

TARGET_RATIO = 0.70
TARGET_RESCAN_MS = 150
TARGET_INSERT = 192 * KIB
TARGET_OVERWRITE = int(1.25 * MIB)
TARGET_RSS_KIB = 64 * 1024


def load(d: str, name: str):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def load_runs(d: str, pattern: str) -> list:
    out = []
    for p in sorted(glob.glob(os.path.join(d, pattern))):
        with open(p) as f:
            out.append(json.load(f))
    return out


def n(x, digits=0) -> str:
    return f"{x:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**PASS**" if ok else "**FAIL**")


def main() -> int:
    d = sys.argv[1]
    m = load(d, "machine.json") or {}
    passes = {s: load(d, f"passes-{s}.json") for s in ("W1", "W2")}
    fresh = {s: load_runs(d, f"weft-{s}-fresh-*.json") for s in ("W1", "W2")}
    rescan = load_runs(d, "weft-W1-rescan-*.json")
    w3 = {k: load(d, f"w3-{k}.json") for k in ("0-base", "1-insert10", "2-restore", "3-overwrite1m")}
    rss = load(d, "rss-big.json")
    st = load(d, "syncthing.json")
    sets_info = m.get("sets", {})
    checks: list[str] = []

    lines = []
    w = lines.append
    w(f"# weft scan benchmark, {m.get('date', '?')}")
    w("")
    w("Produced by `bench/scan.sh` (see bench/README.md for what is timed and how). "
      "Medians over the runs listed under Details; MB = 10^6 bytes; page cache warm.")
    w("")
    w("| figure | weft | target | ratio | result | Syncthing, same run |")
    w("|---|---|---|---|---|---|")

    st_sets = (st or {}).get("sets", {})

    for s in ("W1", "W2"):
        info = sets_info.get(s, {})
        nbytes, nfiles = info.get("bytes"), info.get("files")
        label = f"{s} fresh scan ({n(nbytes / 1e6, 1) if nbytes else '?'} MB, {n(nfiles) if nfiles else '?'} files)"
        p = passes[s]
        ceil_mbps = p["two_core_ceiling_mbps"] if p else None
        target = f"≥ {TARGET_RATIO:.2f} × two-core ceiling" + (f" ({n(ceil_mbps)} MB/s → ≥ {n(TARGET_RATIO * ceil_mbps)} MB/s)" if ceil_mbps else "")
        sts = st_sets.get(s)
        st_cell = (f"{sts['median_initial_wall_s']:.3f} s, {n(sts['bytes'] / sts['median_initial_wall_s'] / 1e6)} MB/s"
                   if sts else "not run")
        runs = fresh[s]
        if not runs or not nbytes:
            w(f"| {label} | not run | {target} | — | — | {st_cell} |")
            continue
        wall = statistics.median(r["wall_s"] for r in runs)
        el = statistics.median(r["scan"]["elapsed_ms"] for r in runs)
        mbps = nbytes / wall / 1e6
        fps = nfiles / wall
        ratio = mbps / ceil_mbps if ceil_mbps else None
        cell = f"{wall:.3f} s wall: {n(mbps)} MB/s, {n(fps)} files/s (elapsed_ms {n(el)}: {n(nbytes / (el / 1000) / 1e6)} MB/s)"
        if sts:
            cell_ratio = sts["median_initial_wall_s"] / wall
            st_cell += f"; weft is {cell_ratio:.2f}× Syncthing's speed"
        w(f"| {label} | {cell} | {target} | {f'{ratio:.2f}' if ratio else '—'} | "
          f"{verdict(ratio >= TARGET_RATIO if ratio else None)} | {st_cell} |")
        for r in runs:
            sc = r["scan"]
            if sc.get("files_added") != nfiles or sc.get("bytes_read") != nbytes:
                checks.append(f"{s} fresh scan: files_added {sc.get('files_added')} (want {nfiles}), "
                              f"bytes_read {sc.get('bytes_read')} (want {nbytes})")

    sts = st_sets.get("W1")
    st_cell = f"{sts['median_rescan_wall_s'] * 1000:.0f} ms (POST /rest/db/scan)" if sts else "not run"
    if rescan:
        ms = statistics.median(r["wall_s"] for r in rescan) * 1000
        el = statistics.median(r["scan"]["elapsed_ms"] for r in rescan)
        w(f"| W1 rescan, nothing changed | {ms:.0f} ms wall (elapsed_ms {n(el)}) | < {TARGET_RESCAN_MS} ms | "
          f"{ms / TARGET_RESCAN_MS:.2f} | {verdict(ms < TARGET_RESCAN_MS)} | {st_cell} |")
        for r in rescan:
            sc = r["scan"]
            changed = sum(sc.get(k, 0) for k in ("files_added", "files_changed", "files_deleted", "files_moved"))
            if changed or sc.get("new_chunk_bytes"):
                checks.append(f"W1 rescan reported changes: {sc}")
    else:
        w(f"| W1 rescan, nothing changed | not run | < {TARGET_RESCAN_MS} ms | — | — | {st_cell} |")

    def w3row(key: str, label: str, target: int, st_ref: str):
        r = w3[key]
        if not r:
            w(f"| {label} | not run | ≤ {n(target)} B | — | — | {st_ref} |")
            return
        sc = r["scan"]
        tot = sc["new_chunk_bytes"] + sc["log_bytes"]
        w(f"| {label} | {n(tot)} B (new_chunk_bytes {n(sc['new_chunk_bytes'])} in {sc['new_chunks']} chunks "
          f"+ log_bytes {n(sc['log_bytes'])}) | ≤ {n(target)} B | {tot / target:.2f} | {verdict(tot <= target)} | {st_ref} |")
        if sc.get("files_changed") != 1:
            checks.append(f"W3 {key}: files_changed {sc.get('files_changed')} (want 1)")

    w3row("1-insert10", "W3: 10 bytes inserted at offset 0 of 100 MiB", TARGET_INSERT,
          "203,910 B on the wire (baseline.md; not measured here)")
    w3row("3-overwrite1m", "W3: 1 MiB overwritten at offset 50 MiB", TARGET_OVERWRITE,
          "1,123,455 B on the wire (baseline.md; not measured here)")

    st_rss = max((v["max_peak_rss_kib"] for v in st_sets.values()), default=None)
    st_cell = f"{st_rss / 1024:.0f} MiB (peak of its W1/W2 runs, VmHWM)" if st_rss else "not run"
    if rss:
        kib = rss["maxrss_kib"]
        w(f"| Peak RSS, scan of a folder holding the 1 GiB file | {kib / 1024:.1f} MiB | < 64 MiB | "
          f"{kib / TARGET_RSS_KIB:.2f} | {verdict(kib < TARGET_RSS_KIB)} | {st_cell} |")
    else:
        w(f"| Peak RSS, scan of a folder holding the 1 GiB file | not run | < 64 MiB | — | — | {st_cell} |")

    w("")
    w("ratio: throughput rows, weft's wall-clock rate ÷ the two-core compute ceiling of the same "
      "bytes (higher is better); other rows, the figure ÷ its target (lower is better).")

    if checks:
        w("")
        w("**Checks that failed** (the scan did not report what the data set implies):")
        w("")
        for c in checks:
            w(f"- {c}")

    w("")
    w("## Compute ceiling (weft-bench-passes, one core, fastest of its runs)")
    w("")
    w("| data | bytes | chunks | CDC | keyed BLAKE3 | ChaCha20-Poly1305 seal | BLAKE3 id | combined, 1 core | two-core ceiling | fused pipeline, 1 core |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for s, p in passes.items():
        if not p:
            w(f"| {s} | not run |||||||||")
            continue
        ps = p["passes"]
        w(f"| {s} | {n(p['bytes'])} | {n(p['chunks'])} | {ps['cdc']['gbps']:.2f} GB/s | {ps['keyed_blake3']['gbps']:.2f} GB/s | "
          f"{ps['seal']['gbps']:.2f} GB/s | {ps['id_blake3']['gbps']:.2f} GB/s | {p['combined_single_core_gbps']:.3f} GB/s | "
          f"**{p['two_core_ceiling_gbps']:.3f} GB/s** | {p['fused_single_core']['gbps']:.3f} GB/s |")
    w("")
    w("combined = 1 / Σ(1 / rate) over the four passes; two-core ceiling = 2 × combined. "
      "Compute only: reading files, the index and the log are not in it.")
    w("")
    w("Floors (weft-bench-passes, two threads, each file opened and read(2) into a buffer the "
      "thread reuses, wall clock, fastest run): what a scan that reads through the page cache "
      "could reach before its index, log and database, as a share of the ceiling above.")
    w("")
    w("| data | read only | read + fused passes | read + passes + every ciphertext appended to a file |")
    w("|---|---|---|---|")
    for s, p in passes.items():
        fl = (p or {}).get("two_thread_floors")
        if not fl:
            continue
        c = p["two_core_ceiling_gbps"]
        w(f"| {s} | " + " | ".join(f"{fl[k]:.3f} GB/s ({fl[k] / c:.0%})" for k in ("read_gbps", "read_passes_gbps", "read_passes_pack_gbps")) + " |")

    w("")
    w("## Details")
    w("")
    for s in ("W1", "W2"):
        if fresh[s]:
            w(f"- weft {s} fresh scans: " + "; ".join(
                f"{r['wall_s']:.3f} s wall, elapsed_ms {r['scan']['elapsed_ms']}, CPU {r['user_s'] + r['sys_s']:.2f} s "
                f"(user {r['user_s']:.2f} + sys {r['sys_s']:.2f}), max RSS {r['maxrss_kib'] / 1024:.0f} MiB, "
                f"new_chunk_bytes {n(r['scan']['new_chunk_bytes'])}, log_bytes {n(r['scan']['log_bytes'])}"
                for r in fresh[s]))
    if rescan:
        w("- weft W1 rescans: " + "; ".join(f"{r['wall_s'] * 1000:.0f} ms wall (elapsed_ms {r['scan']['elapsed_ms']})" for r in rescan))
    for k, r in w3.items():
        if r:
            sc = r["scan"]
            w(f"- weft W3 {k}: {r['wall_s']:.3f} s wall; files added/changed {sc['files_added']}/{sc['files_changed']}, "
              f"bytes_read {n(sc['bytes_read'])}, new_chunks {sc['new_chunks']}, new_chunk_bytes {n(sc['new_chunk_bytes'])}, "
              f"log_entries {sc['log_entries']}, log_bytes {n(sc['log_bytes'])}")
    if rss:
        w(f"- weft scan of the 1 GiB file: {rss['wall_s']:.3f} s wall, max RSS {rss['maxrss_kib']} KiB "
          f"(`/usr/bin/time -v` \"Maximum resident set size\")")
    for s, v in st_sets.items():
        w(f"- Syncthing {s}: initial scan {', '.join(f'{x:.3f}' for x in v['initial_wall_s'])} s wall "
          f"(Syncthing's own time in state scanning, median {v['median_initial_event_s']:.3f} s); "
          f"rescan {', '.join(f'{x * 1000:.0f}' for x in v['rescan_wall_s'])} ms; peak RSS {v['max_peak_rss_kib'] / 1024:.0f} MiB")
    if st:
        w(f"- Syncthing network: {st.get('network')}")

    w("")
    w("## Machine")
    w("")
    for k, label in (("nproc", "nproc"), ("cpu", "CPU"), ("kernel", "uname -r"), ("mem", "memory"),
                     ("weft_commit", "weft commit (HEAD of the work tree)"), ("weft_binary", "weft binary"), ("rustc", "rustc"), ("syncthing", "Syncthing"),
                     ("load_start", "load average at start"), ("load_end", "load average at end"),
                     ("runs", "runs per figure"), ("seed", "data seed")):
        if k in m:
            w(f"- {label}: {m[k]}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
