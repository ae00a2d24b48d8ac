#!/usr/bin/env bash
# Syncthing's scan of the benchmark data sets, for comparison with weft's.
#
#   bench/syncthing_scan.sh [--runs N] [--pause S] [--out FILE] LABEL=DIR [LABEL=DIR ...]
#   e.g. bench/syncthing_scan.sh W1=bench/data/W1 W2=bench/data/W2
#
# For each data set and each run (default 3), with a fresh Syncthing home every time:
#   1. `syncthing generate --no-default-folder`; config.xml edited by st_measure.py so that
#      GUI/REST (with an API key) and the sync listener are on 127.0.0.1 ports, and global
#      and local discovery, relays, NAT, STUN, usage/crash reporting and auto-upgrade are
#      off (folders created later default to the watcher off);
#   2. the data set's files are read once (page cache warm), then `sync` and a pause;
#   3. `syncthing serve --no-browser --no-restart` is started and REST awaited;
#   4. st_measure.py adds one send-receive folder on the data set via REST and times the
#      initial scan (folder added -> idle with every file indexed), then a rescan of the
#      unchanged folder (POST /rest/db/scan), and reads Syncthing's peak RSS (VmHWM);
#   5. Syncthing is shut down via REST; the home and the .stfolder marker it made in the
#      data set are removed.
# Where `unshare -n` works (root), the whole script re-runs itself in a fresh network
# namespace that has only a loopback interface, so Syncthing cannot reach anything else.
#
# Output: one JSON line per run appended to FILE (default bench/out/syncthing-DATE.jsonl),
# and on stdout one JSON object: {"version": ..., "sets": {LABEL: {median_... , runs: [...]}}}.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNS=3
PAUSE=2
OUT=""
SETS=()
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --pause) PAUSE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *=*) SETS+=("$1"); shift ;;
    *) echo "syncthing_scan.sh: unexpected argument $1 (want LABEL=DIR)" >&2; exit 2 ;;
  esac
done
((${#SETS[@]})) || { echo "usage: $0 [--runs N] [--pause S] [--out FILE] LABEL=DIR ..." >&2; exit 2; }

log() { echo "[syncthing_scan] $*" >&2; }

if ! command -v syncthing >/dev/null 2>&1; then
  log "installing Debian's syncthing package"
  if [[ $(id -u) -ne 0 ]]; then echo "syncthing is missing: apt-get install syncthing (as root)" >&2; exit 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq syncthing >&2
fi

# Re-run inside a network namespace with only loopback, where possible.
if [[ -z "${WEFT_BENCH_NETNS:-}" ]] && command -v unshare >/dev/null && command -v ip >/dev/null \
   && unshare -n true 2>/dev/null; then
  export WEFT_BENCH_NETNS=1
  exec unshare -n -- bash "$0" --runs "$RUNS" --pause "$PAUSE" ${OUT:+--out "$OUT"} "${SETS[@]}"
fi
NETNS="shared host network (config keeps Syncthing on 127.0.0.1)"
if [[ -n "${WEFT_BENCH_NETNS:-}" ]]; then
  ip link set lo up
  NETNS="own network namespace, loopback only"
fi

mkdir -p "$HERE/out"
[[ -n "$OUT" ]] || OUT="$HERE/out/syncthing-$(date +%Y%m%d-%H%M%S).jsonl"
WORK="$(mktemp -d "$HERE/out/st-work.XXXXXX")"
ST_PID=""
MARKERS=()

cleanup() {
  if [[ -n "$ST_PID" ]] && kill -0 "$ST_PID" 2>/dev/null; then
    kill "$ST_PID" 2>/dev/null || true
    wait "$ST_PID" 2>/dev/null || true
  fi
  for m in "${MARKERS[@]}"; do rmdir "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

VERSION="$(syncthing --version | awk '{print $2}')"
log "Syncthing $VERSION; $NETNS; $RUNS run(s) per set; results in $OUT"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

for spec in "${SETS[@]}"; do
  label="${spec%%=*}"
  dir="$(cd "${spec#*=}" && pwd)"
  for ((r = 1; r <= RUNS; r++)); do
    home="$WORK/home-$label-$r"
    gport="$(free_port)"
    lport="$(free_port)"
    apikey="weftbench$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    syncthing generate --home="$home" --no-default-folder --skip-port-probing >/dev/null 2>&1
    python3 "$HERE/st_measure.py" config "$home" --gui "127.0.0.1:$gport" \
      --listen "tcp://127.0.0.1:$lport" --apikey "$apikey"

    # Page cache warm, dirty pages written back, then a pause.
    find "$dir" -type f -print0 | xargs -0 cat > /dev/null
    sync
    sleep "$PAUSE"

    STNOUPGRADE=1 STNODEFAULTFOLDER=1 syncthing serve --home="$home" --no-browser --no-restart \
      --no-upgrade --gui-address="http://127.0.0.1:$gport" --gui-apikey="$apikey" \
      > "$home/syncthing.log" 2>&1 &
    ST_PID=$!
    MARKERS+=("$dir/.stfolder")
    for ((i = 0; i < 300; i++)); do
      curl -fsS -H "X-API-Key: $apikey" "http://127.0.0.1:$gport/rest/system/ping" >/dev/null 2>&1 && break
      kill -0 "$ST_PID" 2>/dev/null || { cat "$home/syncthing.log" >&2; echo "syncthing exited" >&2; exit 1; }
      sleep 0.1
    done
    sleep 1 # let start-up work settle

    if ! python3 "$HERE/st_measure.py" measure --url "http://127.0.0.1:$gport" --apikey "$apikey" \
        --pid "$ST_PID" --folder-id "wbench-$label" --path "$dir" --label "$label" \
        --pause "$PAUSE" >> "$RESULTS"; then
      tail -20 "$home/syncthing.log" >&2
      exit 1
    fi
    # (st_measure.py prints a one-line summary on stderr)

    curl -fsS -X POST -H "X-API-Key: $apikey" "http://127.0.0.1:$gport/rest/system/shutdown" >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do kill -0 "$ST_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$ST_PID" 2>/dev/null || true
    wait "$ST_PID" 2>/dev/null || true
    ST_PID=""
    rmdir "$dir/.stfolder" 2>/dev/null || true
    rm -rf "$home"
  done
done

cat "$RESULTS" >> "$OUT"
python3 - "$RESULTS" "$VERSION" "$NETNS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sets = {}
for r in rows:
    sets.setdefault(r["label"], []).append(r)
out = {"tool": "syncthing", "version": sys.argv[2], "network": sys.argv[3], "sets": {}}
for label, rs in sets.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    out["sets"][label] = {
        "files": rs[0]["files"], "bytes": rs[0]["bytes"], "runs": len(rs),
        "median_initial_wall_s": med("initial_wall_s"),
        "median_initial_event_s": med("initial_event_s"),
        "median_rescan_wall_s": med("rescan_wall_s"),
        "max_peak_rss_kib": max(r["peak_rss_kib"] or 0 for r in rs),
        "initial_wall_s": [r["initial_wall_s"] for r in rs],
        "rescan_wall_s": [r["rescan_wall_s"] for r in rs],
    }
print(json.dumps(out))
EOF
