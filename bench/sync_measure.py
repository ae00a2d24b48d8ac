#!/usr/bin/env python3
"""Two devices on loopback: weft, Syncthing and rsync measured in one run (stdlib only).
Driven by bench/sync.sh, which builds, installs, generates the data sets and runs this in
a network namespace of its own; see bench/README.md ("Sync benchmark") for the method.

    sync_measure.py --work DIR --out RUN_DIR --weft BIN [--tools weft,syncthing,rsync]
                    [--only sync,latency,w3,rss] [--runs N] [--pause S] [--timeout S]
                    [--port-base P] [--latency-samples N]
                    --w1 LABEL=DIR --w2 LABEL=DIR --w3 DIR

For each tool, with fresh homes and folders for every measurement ("pair"):

  sync     W1 and W2, --runs times each, the tools' order rotated per run: both sides up
           and connected (weft: `weft up` on A and B, paired with invite/join, peered; Syncthing:
           two instances, the folder shared, connected; rsync: `rsync --daemon` on B's
           folder). The data set is first copied (`cp -a`) to a staging directory on the
           same file system, then `sync` and a pause. Timed: from just before the staged
           directory is renamed into A's folder (one rename: all files appear at once) until
           every file of the set is on B under its final name at its full size (polled every
           20 ms; all three tools write to a temporary name and rename). Then, untimed, every
           file on B is SHA-256'd and compared with the source. What triggers indexing:
           weft, its watcher; Syncthing, `POST /rest/db/scan` on A right after the rename
           (its watcher is off in these pairs: with the default 10 s delay it would only add
           waiting); rsync, `rsync -a --stats A/ rsync://127.0.0.1:PORT/b/` started right after
           the rename. W2's run also records peak RSS (VmHWM) of each side's processes.
  latency  one pair; a warm-up file, then N (default 10) times: 1,024 random bytes written
           to a new file on A (open, write, close); timed from just before the open until the
           file is on B with the same 1,024 bytes, polled every 5 ms; 1 s pause between
           samples. Syncthing: watcher on with its default delay (10 s), then the same with
           fsWatcherDelayS=1 (PATCH of the folder on both sides). rsync: no watch mode.
  w3       one pair; base.bin placed on A (rename) and synced to B (checked by SHA-256), 3 s
           pause; then insert10.bin is renamed over A's base.bin (staged copy, atomic
           replace) and bytes on the wire are counted until B's base.bin has insert10's
           SHA-256 ("at completion") and again 3 s later ("settled"); base restored the same
           way (not counted), then overwrite1m.bin likewise. Wire bytes: `ss -tinpO`
           bytes_sent + bytes_received over every TCP socket of A's processes whose peer
           socket belongs to B's processes (both directions, TCP payload: TLS/Noise framing
           included, TCP/IP headers not), delta across the span; rsync: `--stats` total bytes
           sent + received. Cross-check for all: the loopback interface's byte counter
           (headers included; in the benchmark's own network namespace only these tools
           use it).

Nothing is deleted while measuring: every finished pair is moved to WORK/graveyard/ (see finish_pair; sync.sh removes WORK at the end).

One JSON object per measurement is appended to RUN_DIR/results.jsonl; tools' logs go to
RUN_DIR/logs/. A failure (timeout, crash, wrong content) is recorded with the tool's
state and log tail and the run goes on with the next measurement.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st_measure  # noqa: E402  (config editing and the REST client of syncthing_scan.sh)

CLK_TCK = os.sysconf("SC_CLK_TCK")
META_NAMES = {".weft", ".stfolder", ".stversions", ".stignore"}


def log(msg: str) -> None:
    print(f"[sync] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Failure(Exception):
    """A measurement failed; the message says how (recorded, the run goes on)."""


# ---- processes -----------------------------------------------------------------------

class Procs:
    """Every long-running process this script starts: each in a session of its own (so a
    whole tool tree can be signalled by its process group), its pid listed in PIDFILE for
    sync.sh's trap while it runs."""

    def __init__(self, pidfile: str):
        self.pidfile = pidfile
        self.live: dict[int, subprocess.Popen] = {}

    def _write(self) -> None:
        with open(self.pidfile + ".tmp", "w") as f:
            for pid in self.live:
                f.write(f"{pid}\n")
        os.replace(self.pidfile + ".tmp", self.pidfile)

    def start(self, args: list[str], logpath: str, env: dict | None = None) -> subprocess.Popen:
        logf = open(logpath, "ab")
        p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        logf.close()
        self.live[p.pid] = p
        self._write()
        return p

    def stop(self, p: subprocess.Popen, grace: float = 15.0) -> dict:
        """SIGTERM to the process group, SIGKILL after `grace` s. Returns how it ended."""
        out = {"pid": p.pid}
        if p.poll() is not None:
            out["already_exited"] = p.returncode
        else:
            t0 = time.monotonic()
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
                out["exit_s"] = round(time.monotonic() - t0, 3)
                out["returncode"] = p.returncode
            except subprocess.TimeoutExpired:
                out["hung_on_sigterm_s"] = grace
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)
        # Anything left in its group (children that outlived it).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.live.pop(p.pid, None)
        self._write()
        return out

    def forget(self, p: subprocess.Popen) -> None:
        """A process that exited by itself (asked to over its own API); anything left in
        its process group is killed."""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.live.pop(p.pid, None)
        self._write()

    def stop_all(self) -> None:
        for p in list(self.live.values()):
            self.stop(p, grace=5)


def run(args: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise Failure(f"`{' '.join(args)}` did not finish within {timeout} s") from e
    if check and r.returncode != 0:
        raise Failure(f"`{' '.join(args)}` failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def proc_sample(pid: int) -> tuple[int, float] | None:
    """(VmHWM KiB, CPU seconds user+system) of one process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            hwm = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return hwm, cpu
    except (OSError, IndexError, ValueError):
        return None


class Sampler:
    """Every 0.05 s: VmHWM and CPU time of every process in each side's trees (the largest
    value seen per pid is kept: both only grow, and a process that exits keeps its last)."""

    def __init__(self, sides):
        self.sides = sides  # callable -> {"A": [root pids], "B": [...]}
        self.seen: dict[str, dict[int, tuple[int, float]]] = {}
        self.base: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _once(self, record_base: bool = False) -> None:
        for side, roots in self.sides().items():
            d = self.seen.setdefault(side, {})
            for r in roots:
                for pid in tree(r):
                    s = proc_sample(pid)
                    if s:
                        # A zombie has no VmHWM line: keep the largest values seen.
                        old = d.get(pid, (0, 0.0))
                        d[pid] = (max(old[0], s[0]), max(old[1], s[1]))
                        if record_base:
                            self.base.setdefault(pid, s[1])

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self._once()

    def start(self) -> "Sampler":
        self._once(record_base=True)
        self._t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        self._once()
        out = {}
        for side, d in self.seen.items():
            out[side] = {
                "peak_rss_kib": max((v[0] for v in d.values()), default=None),
                "cpu_s": round(sum(v[1] - self.base.get(pid, 0.0) for pid, v in d.items()), 2),
                "pids": len(d),
            }
        return out


# ---- wire bytes ------------------------------------------------------------------------

SS_LINE = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s*(.*)$")


def ss_sockets() -> list[dict]:
    r = run(["ss", "-tinpHO"], timeout=20)
    out = []
    for line in r.stdout.splitlines():
        m = SS_LINE.match(line.strip())
        if not m:
            continue
        local, peer, rest = m.groups()
        pids = [int(x) for x in re.findall(r"pid=(\d+)", rest)]
        sent = re.search(r"\bbytes_sent:(\d+)", rest)
        recv = re.search(r"\bbytes_received:(\d+)", rest)
        out.append({"local": local, "peer": peer, "pids": pids,
                    "sent": int(sent.group(1)) if sent else 0, "recv": int(recv.group(1)) if recv else 0})
    return out


def lo_bytes() -> int:
    """Bytes sent on the loopback interface of this network namespace (/proc/self/net/dev
    is per namespace; /sys/class/net is that of whoever mounted /sys)."""
    try:
        with open("/proc/self/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[8])
    except (OSError, IndexError, ValueError):
        pass
    return -1


def wire_snapshot(a_roots: list[int], b_roots: list[int]) -> dict:
    """TCP sockets of A's processes whose peer socket belongs to B's processes, keyed by
    (local, peer): (bytes_sent, bytes_received) as seen from A; plus the lo counter."""
    a = {p for r in a_roots for p in tree(r)}
    b = {p for r in b_roots for p in tree(r)}
    socks = ss_sockets()
    owner = {s["local"]: set(s["pids"]) for s in socks}
    conns = {}
    for s in socks:
        if set(s["pids"]) & a and owner.get(s["peer"], set()) & b:
            conns[f"{s['local']}->{s['peer']}"] = (s["sent"], s["recv"])
    return {"conns": conns, "lo": lo_bytes(), "t": time.monotonic()}


def wire_delta(s0: dict, s1: dict) -> dict:
    sent = recv = 0
    for k, (s, r) in s1["conns"].items():
        s_0, r_0 = s0["conns"].get(k, (0, 0))
        sent += s - s_0
        recv += r - r_0
    closed = [k for k in s0["conns"] if k not in s1["conns"]]
    return {"a_to_b": sent, "b_to_a": recv, "total": sent + recv,
            "connections": len(s1["conns"]), "closed_during_span": closed,
            "lo_bytes": s1["lo"] - s0["lo"] if s0["lo"] >= 0 else None}


# ---- data ---------------------------------------------------------------------------------

def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def manifest(root: str) -> list[tuple[str, int, str]]:
    """(relative path, size, SHA-256) of every file of a data set, sorted; the tools' own
    metadata directories (a `.weft/` that `weft scan` leaves in bench/data's sets, a
    Syncthing `.stfolder`) are not part of the set and are skipped."""
    out = []
    for dp, dn, fn in os.walk(root):
        dn[:] = sorted(d for d in dn if d not in META_NAMES)
        for f in sorted(fn):
            p = os.path.join(dp, f)
            out.append((os.path.relpath(p, root), os.lstat(p).st_size, sha256(p)))
    return out


def wait_all(dst: str, files: list[tuple[str, int, str]], deadline: float, alive, interval: float = 0.02) -> float:
    """Polls until every file of the manifest is at DST/rel with its full size; returns the
    monotonic time it first saw that. Each pass stats pending files in a rotating order
    and stops after 32 misses, so a pass stays cheap while most files are still missing."""
    pending = [(os.path.join(dst, rel), size) for rel, size, _ in files]
    i = 0
    while True:
        misses = 0
        n = len(pending)
        checked = 0
        keep = []
        while checked < n and misses < 32:
            path, size = pending[(i + checked) % n]
            checked += 1
            try:
                if os.stat(path).st_size == size:
                    continue
            except OSError:
                pass
            misses += 1
            keep.append((path, size))
        if checked == n and not keep:
            return time.monotonic()
        # Rebuild: the unchecked rest, then the misses (checked again next pass, last).
        rest = [pending[(i + k) % n] for k in range(checked, n)]
        pending = rest + keep
        i = 0
        if time.monotonic() > deadline:
            raise Failure(f"timed out: {len(pending)} of {len(files)} files not (fully) on B, e.g. "
                          + ", ".join(os.path.relpath(p, dst) for p, _ in pending[:5]))
        alive()
        time.sleep(interval)


def verify(dst: str, files: list[tuple[str, int, str]]) -> dict:
    bad, missing = [], []
    for rel, size, h in files:
        p = os.path.join(dst, rel)
        try:
            if sha256(p) != h:
                bad.append(rel)
        except OSError:
            missing.append(rel)
    want = {rel for rel, _, _ in files}
    extra = []
    for dp, dn, fn in os.walk(dst):
        dn[:] = [d for d in dn if d not in META_NAMES]
        for f in fn:
            rel = os.path.relpath(os.path.join(dp, f), dst)
            if rel not in want and f not in META_NAMES:
                extra.append(rel)
    return {"ok": not bad and not missing and not extra, "mismatched": bad[:20], "n_mismatched": len(bad),
            "missing": missing[:20], "n_missing": len(missing), "extra": extra[:20], "n_extra": len(extra)}


def free_port_check(port: int, wait_s: float = 30) -> None:
    import socket
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.close()
            return
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise Failure(f"port 127.0.0.1:{port} is in use")
            if not said:
                log(f"port 127.0.0.1:{port} is in use; waiting up to {wait_s:.0f} s for it to be free")
                said = True
            time.sleep(0.5)


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---- the tools ---------------------------------------------------------------------------

class Ctx:
    def __init__(self, a):
        self.work = a.work
        self.out = a.out
        self.weft = a.weft
        self.pause = a.pause
        self.timeout = a.timeout
        self.port = a.port_base
        self.procs = Procs(os.path.join(a.work, "pids"))
        self.logs = os.path.join(a.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.seq = 0

    def pair_dir(self, tool: str, tag: str) -> str:
        self.seq += 1
        d = os.path.join(self.work, f"{self.seq:02d}-{tool}-{tag}")
        os.makedirs(d)
        return d

    def pair_ports(self) -> int:
        """Base of the block of 30 ports the pair made last (by pair_dir) uses: each of
        the first 20 pairs gets its own, so no run waits for ports a previous run's
        processes or connections still hold (Syncthing dials from its listen port, and
        those connections linger in TIME_WAIT after it exits)."""
        return self.port + 30 * ((self.seq - 1) % 20)


class Pair:
    tool = "?"
    src = dst = ""

    def trigger(self) -> None:
        """Called right after the data is in A's folder."""

    def trigger_wait(self) -> None:
        """Waits for what trigger() started, if anything."""

    def roots(self) -> dict:
        return {}

    def alive(self) -> None:
        pass

    def state(self) -> dict:
        return {}

    def stop(self) -> dict:
        return {}


class WeftPair(Pair):
    tool = "weft"

    def __init__(self, ctx: Ctx, tag: str):
        self.ctx = ctx
        self.dir = ctx.pair_dir("weft", tag)
        self.ha = os.path.join(self.dir, "home-a")
        self.hb = os.path.join(self.dir, "home-b")
        self.src = os.path.join(self.dir, "a", "share")
        self.bparent = os.path.join(self.dir, "b")
        base = ctx.pair_ports()
        self.pa_port, self.pb_port = base + 1, base + 2
        self.loga = os.path.join(ctx.logs, f"{os.path.basename(self.dir)}-a.log")
        self.logb = os.path.join(ctx.logs, f"{os.path.basename(self.dir)}-b.log")
        self.pa = self.pb = None

    def weft(self, home: str, *args, timeout: float = 30, check: bool = True):
        return run([self.ctx.weft, "--home", home, *args], timeout=timeout, check=check)

    def status(self, home: str) -> dict | None:
        r = self.weft(home, "status", "--json", timeout=15, check=False)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def start(self) -> None:
        os.makedirs(self.src)
        os.makedirs(self.bparent)
        for p in (self.pa_port, self.pb_port):
            free_port_check(p)
        self.pa = self.ctx.procs.start(
            [self.ctx.weft, "--home", self.ha, "up", self.src, "--listen", f"/ip4/127.0.0.1/tcp/{self.pa_port}", "--no-mdns"],
            self.loga)
        deadline = time.monotonic() + 30
        while self.status(self.ha) is None:
            self.alive()
            if time.monotonic() > deadline:
                raise Failure("weft A: no answer on its control socket within 30 s")
            time.sleep(0.1)
        inv = json.loads(self.weft(self.ha, "invite", "--json").stdout)
        joined = json.loads(self.weft(self.hb, "join", inv["code"], "--path", self.bparent, "--name", "bench-b",
                                      "--json", timeout=60).stdout)
        folders = joined.get("folders") or []
        if len(folders) != 1:
            raise Failure(f"weft join: expected one folder, got {joined}")
        self.dst = folders[0][1]
        self.pb = self.ctx.procs.start(
            [self.ctx.weft, "--home", self.hb, "up", "--listen", f"/ip4/127.0.0.1/tcp/{self.pb_port}",
             "--peer", f"/ip4/127.0.0.1/tcp/{self.pa_port}", "--no-mdns"], self.logb)
        deadline = time.monotonic() + 60
        while True:
            self.alive()
            sa, sb = self.status(self.ha), self.status(self.hb)
            if (sa and sb and sa.get("peers") and sb.get("peers") and sb.get("folders")
                    and all(f.get("state") == "in sync" for f in sb["folders"] + sa["folders"])):
                break
            if time.monotonic() > deadline:
                raise Failure(f"weft: A and B not peered and in sync within 60 s: A {sa}, B {sb}")
            time.sleep(0.2)
        if not os.path.isdir(self.dst):
            raise Failure(f"weft B's folder {self.dst} does not exist after join")

    def roots(self) -> dict:
        return {"A": [self.pa.pid] if self.pa else [], "B": [self.pb.pid] if self.pb else []}

    def alive(self) -> None:
        for side, p, lg in (("A", self.pa, self.loga), ("B", self.pb, self.logb)):
            if p is not None and p.poll() is not None:
                raise Failure(f"weft {side} exited (code {p.returncode}); log tail:\n{tail(lg)}")

    def state(self) -> dict:
        return {"A": self.status(self.ha), "B": self.status(self.hb)}

    def wait_in_sync(self, timeout: float = 15) -> dict:
        """After B holds everything: how long until both report every folder "in sync" with
        nothing to go (a check of `weft status`, not part of any timing)."""
        t0 = time.monotonic()
        st = {}
        while time.monotonic() - t0 < timeout:
            st = self.state()
            if all(s and s.get("folders") and all(f.get("state") == "in sync" and not f.get("files_to_go")
                                                   for f in s["folders"]) for s in st.values()):
                return {"in_sync_after_s": round(time.monotonic() - t0, 3), "status": st}
            time.sleep(0.2)
        return {"in_sync_after_s": None, "status": st}

    def stop(self) -> dict:
        out = {}
        for side, p in (("B", self.pb), ("A", self.pa)):
            if p is not None:
                out[side] = self.ctx.procs.stop(p)
        return out


class SyncthingPair(Pair):
    tool = "syncthing"
    FOLDER = "wbench"

    def __init__(self, ctx: Ctx, tag: str, watcher: bool = False):
        self.ctx = ctx
        self.watcher = watcher
        self.dir = ctx.pair_dir("syncthing", tag)
        self.src = os.path.join(self.dir, "a", "share")
        self.dst = os.path.join(self.dir, "b", "share")
        self.ports = ctx.pair_ports()
        self.sides = {}
        self.scan_thread = None
        self.scan_error = None

    def start(self) -> None:
        os.makedirs(self.src)
        os.makedirs(self.dst)
        for i, side in enumerate(("A", "B")):
            home = os.path.join(self.dir, f"home-{side.lower()}")
            lport, gport = self.ports + 11 + 2 * i, self.ports + 12 + 2 * i
            free_port_check(lport)
            free_port_check(gport)
            apikey = "weftbench" + os.urandom(12).hex()
            run(["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"], timeout=60)
            ns = argparse.Namespace(home=home, gui=f"127.0.0.1:{gport}", listen=f"tcp://127.0.0.1:{lport}", apikey=apikey)
            st_measure.cmd_config(ns)
            lg = os.path.join(self.ctx.logs, f"{os.path.basename(self.dir)}-{side.lower()}.log")
            env = dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1")
            p = self.ctx.procs.start(
                ["syncthing", "serve", f"--home={home}", "--no-browser", "--no-restart", "--no-upgrade",
                 f"--gui-address=http://127.0.0.1:{gport}", f"--gui-apikey={apikey}"], lg, env=env)
            self.sides[side] = {"proc": p, "rest": st_measure.Rest(f"http://127.0.0.1:{gport}", apikey),
                                "lport": lport, "log": lg, "path": self.src if side == "A" else self.dst}
        deadline = time.monotonic() + 60
        for side, s in self.sides.items():
            while True:
                self.alive()
                try:
                    s["id"] = s["rest"].call("GET", "/rest/system/status", timeout=5)["myID"]
                    break
                except (OSError, urllib.error.URLError, ValueError):
                    if time.monotonic() > deadline:
                        raise Failure(f"Syncthing {side}: REST did not answer within 60 s")
                    time.sleep(0.1)
        for side, other in (("A", "B"), ("B", "A")):
            s, o = self.sides[side], self.sides[other]
            dev = s["rest"].call("GET", "/rest/config/defaults/device")
            dev.update({"deviceID": o["id"], "name": f"bench-{other.lower()}",
                        "addresses": [f"tcp://127.0.0.1:{o['lport']}"]})
            s["rest"].call("POST", "/rest/config/devices", dev)
            folder = s["rest"].call("GET", "/rest/config/defaults/folder")
            folder.update({"id": self.FOLDER, "label": "share", "path": s["path"], "type": "sendreceive",
                           "fsWatcherEnabled": self.watcher,
                           "devices": [{"deviceID": s["id"]}, {"deviceID": o["id"]}]})
            s["rest"].call("POST", "/rest/config/folders", folder)
        deadline = time.monotonic() + 90
        while True:
            self.alive()
            ok = True
            for side, other in (("A", "B"), ("B", "A")):
                s = self.sides[side]
                c = s["rest"].call("GET", "/rest/system/connections", timeout=10)["connections"]
                st = s["rest"].call("GET", f"/rest/db/status?folder={self.FOLDER}", timeout=10)
                if not c.get(self.sides[other]["id"], {}).get("connected") or st.get("state") != "idle":
                    ok = False
            if ok:
                break
            if time.monotonic() > deadline:
                raise Failure(f"Syncthing: A and B not connected and idle within 90 s: {self.state()}")
            time.sleep(0.2)

    def set_watch_delay(self, seconds: int) -> None:
        for s in self.sides.values():
            s["rest"].call("PATCH", f"/rest/config/folders/{self.FOLDER}",
                           {"fsWatcherEnabled": True, "fsWatcherDelayS": seconds})
        time.sleep(2)  # the folder restarts with the new setting
        for s in self.sides.values():
            got = s["rest"].call("GET", f"/rest/config/folders/{self.FOLDER}")
            if got.get("fsWatcherDelayS") != seconds:
                raise Failure(f"Syncthing did not take fsWatcherDelayS={seconds}: {got.get('fsWatcherDelayS')}")

    def watch_delay(self) -> int | None:
        return self.sides["A"]["rest"].call("GET", f"/rest/config/folders/{self.FOLDER}").get("fsWatcherDelayS")

    def trigger(self) -> None:
        if self.watcher:
            return
        self.scan_error = None

        def scan():
            try:
                self.sides["A"]["rest"].call("POST", f"/rest/db/scan?folder={self.FOLDER}", timeout=self.ctx.timeout)
            except Exception as e:  # noqa: BLE001
                self.scan_error = repr(e)

        self.scan_thread = threading.Thread(target=scan, daemon=True)
        self.scan_thread.start()

    def trigger_wait(self) -> None:
        if self.scan_thread:
            self.scan_thread.join(timeout=60)
            self.scan_thread = None
        if self.scan_error:
            raise Failure(f"Syncthing: POST /rest/db/scan failed: {self.scan_error}")

    def roots(self) -> dict:
        return {side: [s["proc"].pid] for side, s in self.sides.items()}

    def alive(self) -> None:
        for side, s in self.sides.items():
            if s["proc"].poll() is not None:
                raise Failure(f"Syncthing {side} exited (code {s['proc'].returncode}); log tail:\n{tail(s['log'])}")

    def state(self) -> dict:
        out = {}
        for side, s in self.sides.items():
            try:
                out[side] = {k: v for k, v in s["rest"].call("GET", f"/rest/db/status?folder={self.FOLDER}", timeout=10).items()
                             if k in ("state", "needFiles", "needBytes", "localFiles", "localBytes", "globalFiles", "errors")}
            except Exception as e:  # noqa: BLE001
                out[side] = repr(e)
        return out

    def stop(self) -> dict:
        out = {}
        for side, s in self.sides.items():
            try:
                s["rest"].call("POST", "/rest/system/shutdown", timeout=5)
            except Exception:  # noqa: BLE001
                pass
        for side, s in self.sides.items():
            try:
                s["proc"].wait(timeout=15)
                out[side] = {"pid": s["proc"].pid, "exited_after_rest_shutdown": s["proc"].returncode}
                self.ctx.procs.forget(s["proc"])
            except subprocess.TimeoutExpired:
                out[side] = self.ctx.procs.stop(s["proc"])
                out[side]["no_exit_within_15s_of_rest_shutdown"] = True
        return out


class RsyncPair(Pair):
    tool = "rsync"

    def __init__(self, ctx: Ctx, tag: str):
        self.ctx = ctx
        self.dir = ctx.pair_dir("rsync", tag)
        self.src = os.path.join(self.dir, "a", "share")
        self.dst = os.path.join(self.dir, "b", "share")
        self.port = ctx.pair_ports() + 21
        self.log = os.path.join(ctx.logs, f"{os.path.basename(self.dir)}-daemon.log")
        self.daemon = None
        self.client = None
        self.client_result = None
        self.stats: list[dict] = []

    def start(self) -> None:
        os.makedirs(self.src)
        os.makedirs(self.dst)
        free_port_check(self.port)
        conf = os.path.join(self.dir, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"use chroot = no\nuid = 0\ngid = 0\nlog file = {self.log}\n"
                    f"[b]\n  path = {self.dst}\n  read only = no\n")
        self.daemon = self.ctx.procs.start(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                            f"--port={self.port}", "--address=127.0.0.1"], self.log)
        import socket
        deadline = time.monotonic() + 30
        while True:
            self.alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Failure("rsync daemon not listening within 30 s")
                time.sleep(0.05)

    def trigger(self) -> None:
        self.client_out = os.path.join(self.dir, "client.out")
        with open(self.client_out, "w") as o:
            self.client = subprocess.Popen(["rsync", "-a", "--stats", self.src + "/", f"rsync://127.0.0.1:{self.port}/b/"],
                                           stdout=o, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def trigger_wait(self) -> None:
        """Reaps the client with wait4, which also gives its CPU time."""
        p = self.client
        if p is None:
            return
        deadline = time.monotonic() + self.ctx.timeout
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid == p.pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.client_cpu_s = ru.ru_utime + ru.ru_stime
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    p.wait()
                    raise Failure(f"rsync client did not finish within {self.ctx.timeout} s")
                time.sleep(0.005)
        finally:
            self.client = None
        out = open(self.client_out).read()
        if p.returncode != 0:
            raise Failure(f"rsync failed (exit {p.returncode}): {out.strip()[-2000:]}")
        st = {"client_cpu_s": round(self.client_cpu_s, 2)}
        for key, name in (("Total bytes sent", "sent"), ("Total bytes received", "received"),
                          ("Number of regular files transferred", "files_transferred"),
                          ("Literal data", "literal"), ("Matched data", "matched")):
            m = re.search(re.escape(key) + r":\s*([\d,.]+)", out)
            if m:
                st[name] = int(m.group(1).replace(",", "").split(".")[0])
        self.stats.append(st)

    def roots(self) -> dict:
        r = {"B": [self.daemon.pid] if self.daemon else []}
        # (No poll() here: this runs in the sampler's thread, and only trigger_wait may reap.)
        r["A"] = [self.client.pid] if self.client else []
        return r

    def alive(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise Failure(f"rsync daemon exited (code {self.daemon.returncode}); log tail:\n{tail(self.log)}")

    def stop(self) -> dict:
        return {"daemon": self.ctx.procs.stop(self.daemon)} if self.daemon else {}


def make_pair(ctx: Ctx, tool: str, tag: str, **kw) -> Pair:
    return {"weft": WeftPair, "syncthing": SyncthingPair, "rsync": RsyncPair}[tool](ctx, tag, **kw)


# ---- measurements -----------------------------------------------------------------------

class Recorder:
    def __init__(self, path: str):
        self.path = path

    def add(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def stage_copy(ctx: Ctx, src: str, name: str, preserve: bool = True) -> str:
    """Copies SRC to the staging directory (same file system as the folders, so the
    rename into a folder is atomic). preserve=False gives the copy a new mtime (an edit
    made now: rsync's quick check compares size and mtime, and W3's files have equal
    sizes and near-equal mtimes)."""
    stage = os.path.join(ctx.work, "stage")
    os.makedirs(stage, exist_ok=True)
    dst = os.path.join(stage, name)
    if os.path.exists(dst):
        shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
    run(["cp", "-a" if preserve else "-r", src, dst], timeout=600)
    if os.path.isdir(dst):
        for dp, dn, _ in os.walk(dst):
            for d in [d for d in dn if d in META_NAMES]:
                shutil.rmtree(os.path.join(dp, d))
                dn.remove(d)
    return dst


def settle(ctx: Ctx) -> None:
    os.sync()
    time.sleep(ctx.pause)


def finish_pair(ctx: Ctx, pair: Pair, rec: dict) -> None:
    """Stops the pair and moves its directory aside (sync.sh removes the work directory
    at the end). Nothing is deleted while measuring: on an ext4 without a journal, as on
    the benchmark machine, every new inode skips over the inodes deleted in the last
    minutes (`recently_deleted` in ext4's ialloc.c), and the next pair's 10,000 files
    then cost ~2 s of kernel time more to create, for whichever tool came after a
    deletion; freeing a W2 pair's 3 GB (discarded blocks, on a file system mounted with
    `discard`) slowed the next W1 sync too."""
    try:
        rec["stop"] = pair.stop()
    except Exception as e:  # noqa: BLE001
        rec["stop_error"] = repr(e)
    for side, how in (rec.get("stop") or {}).items():
        if isinstance(how, dict) and how.get("hung_on_sigterm_s"):
            rec.setdefault("problems", []).append(f"{pair.tool} {side} did not exit within {how['hung_on_sigterm_s']} s of SIGTERM")
    d = getattr(pair, "dir", "")
    if d and os.path.isdir(d):
        grave = os.path.join(ctx.work, "graveyard")
        os.makedirs(grave, exist_ok=True)
        os.rename(d, os.path.join(grave, os.path.basename(d)))


def measure_sync(ctx: Ctx, rec_out: Recorder, tool: str, label: str, data: str, files, run_no: int,
                 sample_rss: bool) -> None:
    rec = {"kind": "sync", "tool": tool, "set": label, "run": run_no, "files": len(files),
           "bytes": sum(s for _, s, _ in files), "load_before": loadavg()}
    pair = make_pair(ctx, tool, f"{label}-r{run_no}")
    log(f"{tool}: {label} sync, run {run_no}")
    try:
        pair.start()
        staged = stage_copy(ctx, data, label)
        settle(ctx)
        rec["load_at_start"] = loadavg()
        w0 = wire_snapshot(pair.roots().get("A", []), pair.roots().get("B", [])) if tool != "rsync" else {"conns": {}, "lo": lo_bytes()}
        sampler = Sampler(pair.roots).start()
        deadline = time.monotonic() + ctx.timeout
        rec["t0_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat()  # to match the tools' logs
        t0 = time.monotonic()
        os.rename(staged, os.path.join(pair.src, label))
        pair.trigger()
        try:
            if tool == "rsync":
                pair.trigger_wait()
            t1 = wait_all(os.path.join(pair.dst, label), files, deadline, pair.alive)
        finally:
            rss = sampler.stop()
        rec["wall_s"] = round(t1 - t0, 4)
        if tool != "rsync":
            pair.trigger_wait()
        w1 = wire_snapshot(pair.roots().get("A", []), pair.roots().get("B", [])) if tool != "rsync" else {"conns": {}, "lo": lo_bytes()}
        rec["wire"] = wire_delta(w0, w1)
        if tool == "rsync" and pair.stats:
            rec["rsync_stats"] = pair.stats[-1]
        if tool == "rsync" and pair.stats:
            # The client's exact CPU time (wait4). Not its ru_maxrss: that includes the RSS of
            # this Python process it was forked from; its peak RSS is the sampler's VmHWM.
            a = rss.setdefault("A", {"peak_rss_kib": None, "cpu_s": 0.0, "pids": 1})
            a["cpu_s"] = pair.stats[-1]["client_cpu_s"]
        rec["sides"] = rss
        if sample_rss:
            rec["rss_figure"] = True
        log(f"{tool}: {label} on B after {rec['wall_s']:.3f} s; verifying (SHA-256 of every file)")
        rec["verify"] = verify(os.path.join(pair.dst, label), files)
        if not rec["verify"]["ok"]:
            rec.setdefault("problems", []).append(f"B's copy differs from the source: {rec['verify']}")
        if isinstance(pair, WeftPair):
            rec["status_after"] = pair.wait_in_sync()
            if rec["status_after"]["in_sync_after_s"] is None:
                rec.setdefault("problems", []).append("weft status did not report both folders in sync within 15 s of B holding everything")
        elif isinstance(pair, SyncthingPair):
            rec["status_after"] = pair.state()
        if tool != "rsync":
            rec["idle_cpu"] = idle_cpu(pair, IDLE_WINDOW_S)
            for side, c in rec["idle_cpu"].items():
                if c / IDLE_WINDOW_S > IDLE_LIMIT:
                    rec.setdefault("problems", []).append(
                        f"{tool} {side} used {c:.2f} s of CPU in {IDLE_WINDOW_S:.0f} s with nothing to do "
                        f"({100 * c / IDLE_WINDOW_S:.0f}% of a core) after the sync")
        rec["ok"] = rec["verify"]["ok"]
    except Failure as e:
        rec["ok"] = False
        rec["error"] = str(e)
        try:
            rec["state_at_error"] = pair.state()
        except Exception:  # noqa: BLE001
            pass
        log(f"{tool}: {label} FAILED: {e}")
    except Exception as e:  # noqa: BLE001
        rec["ok"] = False
        rec["error"] = f"harness error: {e!r}\n{traceback.format_exc()}"
        log(f"{tool}: {label} harness error: {e!r}")
    finally:
        finish_pair(ctx, pair, rec)
        shutil.rmtree(os.path.join(ctx.work, "stage"), ignore_errors=True)
    rec["load_after"] = loadavg()
    rec_out.add(rec)
    if rec.get("ok"):
        wire = (rec["wire"]["total"] if tool != "rsync"
                else rec.get("rsync_stats", {}).get("sent", 0) + rec.get("rsync_stats", {}).get("received", 0))
        log(f"{tool}: {label} run {run_no}: {rec['wall_s']:.3f} s, wire {wire:,} B, "
            + ", ".join(f"{k} peak RSS {v['peak_rss_kib'] / 1024:.0f} MiB CPU {v['cpu_s']:.1f} s"
                        for k, v in sorted(rec["sides"].items()) if v.get("peak_rss_kib")))


IDLE_WINDOW_S = 5.0
IDLE_LIMIT = 0.05  # fraction of a core an idle node may use before it is flagged


def idle_cpu(pair: Pair, seconds: float) -> dict:
    """CPU seconds each side uses over SECONDS once the sync is done, B verified and the
    status checked: a node with nothing to do should use next to none."""
    def cpu():
        return {side: sum((proc_sample(p) or (0, 0.0))[1] for r in roots for p in tree(r))
                for side, roots in pair.roots().items()}
    c0 = cpu()
    time.sleep(seconds)
    c1 = cpu()
    return {side: round(c1[side] - c0.get(side, 0.0), 2) for side in c1}


def wait_file(dst: str, data: bytes, deadline: float, alive, interval: float) -> float:
    n = len(data)
    last_alive = time.monotonic()
    while True:
        try:
            if os.stat(dst).st_size == n:
                with open(dst, "rb") as f:
                    if f.read() == data:
                        return time.monotonic()
        except OSError:
            pass
        now = time.monotonic()
        if now > deadline:
            raise Failure(f"timed out waiting for {dst} on B")
        if now - last_alive > 0.5:
            alive()
            last_alive = now
        time.sleep(interval)


def latency_samples(ctx: Ctx, pair: Pair, n: int, tag: str) -> list[float]:
    # Warm-up: one file through the whole path first.
    data = os.urandom(1024)
    with open(os.path.join(pair.src, f"warmup-{tag}.bin"), "wb") as f:
        f.write(data)
    wait_file(os.path.join(pair.dst, f"warmup-{tag}.bin"), data, time.monotonic() + 120, pair.alive, 0.02)
    time.sleep(2)
    out = []
    for i in range(n):
        data = os.urandom(1024)
        name = f"lat-{tag}-{i}.bin"
        t0 = time.monotonic()
        with open(os.path.join(pair.src, name), "wb") as f:
            f.write(data)
        t1 = wait_file(os.path.join(pair.dst, name), data, t0 + 60, pair.alive, 0.005)
        out.append(round((t1 - t0) * 1000, 1))
        time.sleep(1.0)
    return out


def measure_latency(ctx: Ctx, rec_out: Recorder, tool: str, n: int) -> None:
    if tool == "rsync":
        return
    rec = {"kind": "latency", "tool": tool, "samples_n": n, "load_before": loadavg()}
    pair = make_pair(ctx, tool, "latency", **({"watcher": True} if tool == "syncthing" else {}))
    log(f"{tool}: latency of a new 1 KiB file, {n} samples")
    try:
        pair.start()
        if isinstance(pair, SyncthingPair):
            rec["variants"] = {}
            d = pair.watch_delay()
            s = latency_samples(ctx, pair, n, f"d{d}")
            rec["variants"][f"fsWatcherDelayS={d} (default)"] = s
            log(f"syncthing: delay {d} s: median {statistics.median(s):.0f} ms")
            pair.set_watch_delay(1)
            s = latency_samples(ctx, pair, n, "d1")
            rec["variants"]["fsWatcherDelayS=1"] = s
            log(f"syncthing: delay 1 s: median {statistics.median(s):.0f} ms")
        else:
            s = latency_samples(ctx, pair, n, "x")
            rec["samples_ms"] = s
            log(f"{tool}: median {statistics.median(s):.0f} ms ({s})")
        rec["ok"] = True
    except Failure as e:
        rec["ok"] = False
        rec["error"] = str(e)
        try:
            rec["state_at_error"] = pair.state()
        except Exception:  # noqa: BLE001
            pass
        log(f"{tool}: latency FAILED: {e}")
    except Exception as e:  # noqa: BLE001
        rec["ok"] = False
        rec["error"] = f"harness error: {e!r}\n{traceback.format_exc()}"
        log(f"{tool}: latency harness error: {e!r}")
    finally:
        finish_pair(ctx, pair, rec)
    rec["load_after"] = loadavg()
    rec_out.add(rec)


def wait_content(path: str, want_sha: str, want_size: int, deadline: float, alive) -> float:
    """Polls PATH every 20 ms; when its (inode, size, mtime) changes and the size is right,
    hashes it; returns the monotonic time it first matched."""
    last = None
    while True:
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != last and st.st_size == want_size:
                t = time.monotonic()
                if sha256(path) == want_sha:
                    return t
                last = key
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for {path} on B to have SHA-256 {want_sha[:16]}…")
        alive()
        time.sleep(0.02)


def measure_w3(ctx: Ctx, rec_out: Recorder, tool: str, w3: str) -> None:
    rec = {"kind": "w3", "tool": tool, "load_before": loadavg(), "edits": {}}
    pair = make_pair(ctx, tool, "w3")
    log(f"{tool}: W3 bytes on the wire")
    shas = {v: (sha256(os.path.join(w3, f"{v}.bin")), os.path.getsize(os.path.join(w3, f"{v}.bin")))
            for v in ("base", "insert10", "overwrite1m")}
    try:
        pair.start()
        target = os.path.join(pair.src, "base.bin")
        on_b = os.path.join(pair.dst, "base.bin")
        snap = (lambda: wire_snapshot(pair.roots()["A"], pair.roots()["B"])) if tool != "rsync" \
            else (lambda: {"conns": {}, "lo": lo_bytes(), "t": time.monotonic()})
        for step, v in enumerate(("base", "insert10", "base", "overwrite1m")):
            staged = stage_copy(ctx, os.path.join(w3, f"{v}.bin"), f"{v}.bin", preserve=False)
            settle(ctx)
            w0 = snap()
            t0 = time.monotonic()
            os.rename(staged, target)
            pair.trigger()
            if tool == "rsync":
                pair.trigger_wait()
            t1 = wait_content(on_b, shas[v][0], shas[v][1], time.monotonic() + 300, pair.alive)
            w1 = snap()
            if tool != "rsync":
                pair.trigger_wait()
            time.sleep(3)
            w2 = snap()
            name = {0: "initial base", 1: "insert10", 2: "restore base", 3: "overwrite1m"}[step]
            e = {"wall_s": round(t1 - t0, 3), "at_completion": wire_delta(w0, w1), "settled_3s": wire_delta(w0, w2)}
            if tool == "rsync":
                e["rsync_stats"] = pair.stats[-1]
            rec["edits"][name] = e
            tot = e["rsync_stats"]["sent"] + e["rsync_stats"]["received"] if tool == "rsync" else e["at_completion"]["total"]
            log(f"{tool}: W3 {name}: on B after {t1 - t0:.3f} s, {tot:,} B on the wire"
                + (f" ({e['settled_3s']['total']:,} B 3 s later)" if tool != "rsync" else ""))
        rec["ok"] = True
    except Failure as e:
        rec["ok"] = False
        rec["error"] = str(e)
        try:
            rec["state_at_error"] = pair.state()
        except Exception:  # noqa: BLE001
            pass
        log(f"{tool}: W3 FAILED: {e}")
    except Exception as e:  # noqa: BLE001
        rec["ok"] = False
        rec["error"] = f"harness error: {e!r}\n{traceback.format_exc()}"
        log(f"{tool}: W3 harness error: {e!r}")
    finally:
        finish_pair(ctx, pair, rec)
        shutil.rmtree(os.path.join(ctx.work, "stage"), ignore_errors=True)
    rec["load_after"] = loadavg()
    rec_out.add(rec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weft", required=True)
    p.add_argument("--tools", default="weft,syncthing,rsync")
    p.add_argument("--only", default="sync,latency,w3")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pause", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--port-base", type=int, default=29100)
    p.add_argument("--latency-samples", type=int, default=10)
    p.add_argument("--w1", required=True)
    p.add_argument("--w2", required=True)
    p.add_argument("--w3", required=True)
    p.add_argument("--sets", default="W1,W2", help="which of W1,W2 the sync figure runs")
    a = p.parse_args()
    tools = [t for t in a.tools.split(",") if t]
    only = set(a.only.split(","))
    ctx = Ctx(a)
    rec = Recorder(os.path.join(a.out, "results.jsonl"))

    def on_signal(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        sets = []
        wanted = set(a.sets.split(","))
        for spec, which in ((a.w1, "W1"), (a.w2, "W2")):
            if which not in wanted:
                continue
            label, _, d = spec.partition("=")
            log(f"hashing {label} ({d})")
            sets.append((label, d, manifest(d)))
        with open(os.path.join(a.out, "sets.json"), "w") as f:
            json.dump({label: {"path": d, "files": len(m), "bytes": sum(s for _, s, _ in m)} for label, d, m in sets}, f)
        if "sync" in only:
            for r in range(1, a.runs + 1):
                order = tools[(r - 1) % len(tools):] + tools[:(r - 1) % len(tools)]
                for label, d, m in sets:
                    for t in order:
                        measure_sync(ctx, rec, t, label, d, m, r, sample_rss=(label.startswith("W2")))
        if "latency" in only:
            for t in tools:
                measure_latency(ctx, rec, t, a.latency_samples)
        if "w3" in only:
            for t in tools:
                measure_w3(ctx, rec, t, a.w3)
    finally:
        ctx.procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
