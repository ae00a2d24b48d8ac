#!/usr/bin/env python3
"""Helper for bench/syncthing_scan.sh (stdlib only). Two subcommands:

  config HOME --gui HOST:PORT --listen tcp://HOST:PORT --apikey KEY
      Edits HOME/config.xml (made by `syncthing generate --no-default-folder`) so that
      Syncthing talks to nothing but 127.0.0.1: GUI/REST and sync listener on loopback,
      global and local discovery, relays, NAT/UPnP, STUN, usage and crash reporting,
      auto-upgrade, LAN address announcement and the browser off; folders it creates
      default to the watcher off. setLowPriority is turned off (it renices Syncthing,
      which only matters under contention, and weft is not reniced either).

  measure --url URL --apikey KEY --pid PID --folder-id ID --path DIR --label L
      Adds one send-receive folder at DIR via REST (POST /rest/config/folders, from
      /rest/config/defaults/folder with the watcher off) and times:
        initial_wall_s  POST of the folder -> the StateChanged event scanning->idle
                        after which /rest/db/status reports localFiles and localBytes
                        equal to what is on disk (Syncthing counts a directory as 128
                        bytes), wall clock in this process;
        initial_event_s Syncthing's own time in state "scanning" (from the timestamp
                        of the event entering "scanning" to that of the next event);
        rescan_wall_s   POST /rest/db/scan?folder=ID on the unchanged folder (the call
                        returns when the scan is done), wall clock;
        rescan_event_s  Syncthing's time in "scanning" during that rescan.
      Also reports Syncthing's peak RSS (VmHWM of the largest process under PID). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET


def cmd_config(a) -> int:
    path = os.path.join(a.home, "config.xml")
    tree = ET.parse(path)
    root = tree.getroot()
    gui = root.find("gui")
    gui.set("tls", "false")
    gui.find("address").text = a.gui
    gui.find("apikey").text = a.apikey
    opts = root.find("options")

    def setopt(name: str, value: str) -> None:
        for el in opts.findall(name):
            opts.remove(el)
        el = ET.SubElement(opts, name)
        el.text = value

    for el in opts.findall("listenAddress"):
        opts.remove(el)
    ET.SubElement(opts, "listenAddress").text = a.listen
    setopt("globalAnnounceEnabled", "false")
    setopt("localAnnounceEnabled", "false")
    setopt("relaysEnabled", "false")
    setopt("natEnabled", "false")
    setopt("stunKeepaliveStartS", "0")
    setopt("urAccepted", "-1")
    setopt("crashReportingEnabled", "false")
    setopt("autoUpgradeIntervalH", "0")
    setopt("startBrowser", "false")
    setopt("announceLANAddresses", "false")
    setopt("setLowPriority", "false")
    for el in opts.findall("globalAnnounceServer"):
        opts.remove(el)
    for el in opts.findall("stunServer"):
        opts.remove(el)
    # Our own device: no "dynamic" address to resolve.
    for dev in root.findall("device"):
        for ad in dev.findall("address"):
            ad.text = a.listen
    defaults = root.find("defaults")
    if defaults is not None:
        folder = defaults.find("folder")
        if folder is not None:
            folder.set("fsWatcherEnabled", "false")
    tree.write(path)
    return 0


class Rest:
    def __init__(self, url: str, apikey: str):
        self.url = url.rstrip("/")
        self.apikey = apikey

    def call(self, method: str, path: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("X-API-Key", self.apikey)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None


def on_disk(path: str) -> tuple[int, int, int]:
    files = dirs = size = 0
    for dp, dn, fn in os.walk(path):
        dn[:] = [d for d in dn if not d.startswith(".st")]
        dirs += len(dn)
        for f in fn:
            files += 1
            size += os.lstat(os.path.join(dp, f)).st_size
    return files, dirs, size


def descendants(pid: int) -> list[int]:
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


def vmhwm_kib(pid: int) -> int | None:
    """Peak RSS of the largest process in PID's tree (`syncthing serve` runs a small
    monitor process whose child does the work)."""
    best = None
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        v = int(line.split()[1])
                        best = v if best is None else max(best, v)
        except OSError:
            pass
    return best


def last_event_id(rest: Rest) -> int:
    """The last StateChanged event id. A filtered subscription numbers its events on its
    own (`id`; `globalID` is the global number), so ask the same filtered subscription the
    waits use. Blocks up to 1 s when there is none yet (outside any timed span)."""
    ev = rest.call("GET", "/rest/events?events=StateChanged&limit=1&timeout=1")
    return ev[-1]["id"] if ev else 0


def parse_time(t: str) -> float:
    """Seconds since the epoch of an RFC 3339 event time with nanoseconds."""
    from datetime import datetime
    main, _, frac = t.rstrip("Z").partition(".")
    base = datetime.fromisoformat(main + "+00:00").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def scanning_time(events: list) -> float:
    """Syncthing's own time in state "scanning": from each event entering "scanning" to
    the next event of the folder, by the events' timestamps."""
    total, start = 0.0, None
    for ev in events:
        d = ev["data"]
        t = parse_time(ev["time"])
        if start is not None:
            total += t - start
            start = None
        if d.get("to") == "scanning":
            start = t
    return total


def folder_events(rest: Rest, folder: str, since: int, timeout: int):
    evs = rest.call("GET", f"/rest/events?events=StateChanged&since={since}&timeout={timeout}",
                    timeout=timeout + 30) or []
    last = max([since] + [ev["id"] for ev in evs])
    return [ev for ev in evs if (ev.get("data") or {}).get("folder") == folder], last


def wait_idle(rest: Rest, folder: str, since: int, files: int, dirs: int, size: int, deadline: float):
    """Long-polls StateChanged events until the folder went to idle with the expected
    counts. Returns (monotonic time the idle event was received, the folder's events)."""
    seen = []
    while time.monotonic() < deadline:
        evs, since = folder_events(rest, folder, since, 30)
        for ev in evs:
            seen.append(ev)
            if ev["data"].get("to") == "idle":
                t = time.monotonic()
                st = rest.call("GET", f"/rest/db/status?folder={folder}")
                # Syncthing counts a directory as 128 bytes in localBytes.
                if st.get("localFiles") == files and st.get("localBytes") in (size, size + 128 * dirs):
                    return t, seen
    raise SystemExit(f"timed out waiting for folder {folder} to be idle with {files} files")


def cmd_measure(a) -> int:
    rest = Rest(a.url, a.apikey)
    path = os.path.abspath(a.path)
    files, dirs, size = on_disk(path)
    my_id = rest.call("GET", "/rest/system/status")["myID"]
    version = rest.call("GET", "/rest/system/version")["version"]
    folder = rest.call("GET", "/rest/config/defaults/folder")
    folder.update({
        "id": a.folder_id,
        "label": a.label,
        "path": path,
        "type": "sendreceive",
        "fsWatcherEnabled": False,
        "devices": [{"deviceID": my_id}],
    })
    since = last_event_id(rest)
    deadline = time.monotonic() + a.timeout

    t0 = time.monotonic()
    rest.call("POST", "/rest/config/folders", folder)
    t1, initial_events = wait_idle(rest, a.folder_id, since, files, dirs, size, deadline)
    initial_wall = t1 - t0
    rss_initial = vmhwm_kib(a.pid)

    time.sleep(a.pause)
    since = last_event_id(rest)
    t0 = time.monotonic()
    rest.call("POST", f"/rest/db/scan?folder={a.folder_id}")
    t1 = time.monotonic()
    rescan_wall = t1 - t0
    # The rescan's own state changes (already emitted: the call returns after the scan).
    rescan_events, _ = folder_events(rest, a.folder_id, since, 1)
    st2 = rest.call("GET", f"/rest/db/status?folder={a.folder_id}")
    brief = lambda evs: [(ev["time"], ev["data"].get("from"), ev["data"].get("to")) for ev in evs]

    out = {
        "tool": "syncthing",
        "version": version,
        "label": a.label,
        "path": path,
        "files": files,
        "dirs": dirs,
        "bytes": size,
        "initial_wall_s": round(initial_wall, 4),
        "initial_event_s": round(scanning_time(initial_events), 4),
        "initial_events": brief(initial_events),
        "rescan_wall_s": round(rescan_wall, 4),
        "rescan_event_s": round(scanning_time(rescan_events), 4),
        "rescan_events": brief(rescan_events),
        "local_files": st2.get("localFiles"),
        "local_bytes": st2.get("localBytes"),
        "peak_rss_kib_after_initial": rss_initial,
        "peak_rss_kib": vmhwm_kib(a.pid),
    }
    print(json.dumps(out))
    print(f"[syncthing_scan] {a.label}: initial scan {initial_wall:.3f} s wall "
          f"({out['initial_event_s']:.3f} s scanning), rescan {rescan_wall * 1000:.0f} ms, "
          f"peak RSS {(out['peak_rss_kib'] or 0) / 1024:.0f} MiB", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("home")
    c.add_argument("--gui", required=True)
    c.add_argument("--listen", required=True)
    c.add_argument("--apikey", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--url", required=True)
    m.add_argument("--apikey", required=True)
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--folder-id", required=True)
    m.add_argument("--path", required=True)
    m.add_argument("--label", required=True)
    m.add_argument("--timeout", type=float, default=600)
    m.add_argument("--pause", type=float, default=2.0, help="seconds between the initial scan and the rescan")
    a = p.parse_args()
    try:
        return cmd_config(a) if a.cmd == "config" else cmd_measure(a)
    except urllib.error.HTTPError as e:
        print(f"st_measure: HTTP {e.code} {e.reason}: {e.read().decode(errors='replace')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
