#!/usr/bin/env bash
# Two devices on loopback: weft vs Syncthing vs rsync, in one run.
#
#   bench/sync.sh [--runs N] [--pause S] [--small] [--tools LIST] [--only LIST]
#                 [--timeout S] [--latency-samples N] [--port-base P] [--no-build]
#
#   --runs N             runs of each sync-time figure (W1, W2), median reported (default 3)
#   --pause S            seconds to pause after `sync` before each timed span (default 2)
#   --small              validate on small data: 1,000 files of W1 (d0/) and one 50 MiB file
#                        instead of W1/W2 (W3 unchanged); the report says so
#   --tools LIST         comma-separated subset of weft,syncthing,rsync (default: all three)
#   --only LIST          comma-separated subset of sync,latency,w3 (default: all)
#   --timeout S          bound on each sync wait (default 600)
#   --latency-samples N  samples of the 1 KiB latency figure (default 10)
#   --port-base P        fixed ports P+1..P+599 on 127.0.0.1, a block of 30 per pair (default
#                        29100: below the ephemeral range, so no outgoing connection takes
#                        them; checked free)
#   --no-build           use target/release/weft as it is
#   --sets LIST          comma-separated subset of W1,W2 for the sync-time figure (default: both)
#
# Figures, for each tool on the same seeded data (details: bench/README.md, "Sync benchmark"):
#   1. end-to-end sync time of W1 and W2: both sides up and connected, the data set renamed
#      into A's folder, until every file is on B (then SHA-256 of every file checked);
#   2. latency of a new 1 KiB file, median of 10 (Syncthing: default watcher delay and 1 s);
#   3. bytes on the wire for W3's 10-byte insert and 1 MiB overwrite;
#   4. peak RSS (VmHWM) of each side during the W2 sync.
# Everything runs in a network namespace of its own with only loopback where `unshare -n`
# works (root), else on the host's 127.0.0.1. Every process it starts is stopped on exit,
# also on error or Ctrl-C. Writes bench/out/sync-DATE.md (also printed); raw JSON and the
# tools' logs stay in bench/out/sync-DATE/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
ARGS=("$@")
RUNS=3
PAUSE=2
SMALL=0
TOOLS="weft,syncthing,rsync"
ONLY="sync,latency,w3"
TIMEOUT=600
LAT_N=10
PORT_BASE=29100
DO_BUILD=1
SETS="W1,W2"
SEED=1
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --pause) PAUSE="$2"; shift 2 ;;
    --small) SMALL=1; shift ;;
    --tools) TOOLS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --latency-samples) LAT_N="$2"; shift 2 ;;
    --port-base) PORT_BASE="$2"; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --sets) SETS="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "sync.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for t in ${TOOLS//,/ }; do
  case "$t" in weft|syncthing|rsync) ;; *) echo "sync.sh: unknown tool $t" >&2; exit 2 ;; esac
done
has_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

log() { echo "[sync] $*" >&2; }
die() { echo "[sync] error: $*" >&2; exit 1; }

DATA="$HERE/data"
WEFT="${WEFT_BIN:-$ROOT/target/release/weft}"

# ---- stage 1, on the host: packages, build, data; then re-run in a network namespace ----
if [[ -z "${WEFT_SYNC_STAGE2:-}" ]]; then
  apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$1 is missing: apt-get install $1 (as root)"
    log "installing Debian's $1 package"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
  }
  has_tool rsync && ! command -v rsync >/dev/null 2>&1 && apt_install rsync
  has_tool syncthing && ! command -v syncthing >/dev/null 2>&1 && apt_install syncthing
  command -v ss >/dev/null 2>&1 || apt_install iproute2
  if has_tool weft; then
    if ((DO_BUILD)) && [[ -z "${WEFT_BIN:-}" ]]; then
      log "building weft (release)"
      (cd "$ROOT" && cargo build --release -p weft-cli) >&2 || die "the weft CLI did not build (cargo build --release -p weft-cli)"
    fi
    [[ -x "$WEFT" ]] || die "$WEFT is missing (cargo build --release -p weft-cli)"
    for sub in up invite join status; do
      "$WEFT" "$sub" --help >/dev/null 2>&1 || die "$WEFT has no working \`$sub\` subcommand"
    done
  fi
  python3 "$HERE/gen.py" --seed "$SEED" --out "$DATA" W1 W2 W3
  export WEFT_SYNC_STAGE2=1
  if command -v unshare >/dev/null && command -v ip >/dev/null && unshare -n true 2>/dev/null; then
    export WEFT_SYNC_NETNS=1
    exec unshare -n -- bash "$0" "${ARGS[@]}" --no-build
  fi
  exec bash "$0" "${ARGS[@]}" --no-build
fi

# ---- stage 2: the measurements -------------------------------------------------------------
NETWORK="shared host network, 127.0.0.1 only"
if [[ -n "${WEFT_SYNC_NETNS:-}" ]]; then
  ip link set lo up
  NETWORK="own network namespace with only loopback (all three tools in the same one)"
fi

DATE="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$HERE/out/sync-$DATE"
REPORT="$HERE/out/sync-$DATE.md"
mkdir -p "$RUN_DIR"
WORK="$(mktemp -d "$HERE/out/sync-work.XXXXXX")"
PY_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  # Whatever the measuring script had running (each in a process group of its own).
  if [[ -f "$WORK/pids" ]]; then
    while read -r pid; do
      [[ -n "$pid" ]] || continue
      kill -TERM -- "-$pid" 2>/dev/null || true
    done < "$WORK/pids"
    sleep 1
    while read -r pid; do
      [[ -n "$pid" ]] || continue
      kill -KILL -- "-$pid" 2>/dev/null || true
    done < "$WORK/pids"
  fi
  if [[ -n "${WEFT_BENCH_KEEP_WORK:-}" ]]; then
    # Nothing deleted: back-to-back runs start on a file system without recently
    # deleted inodes (see below). bench/out/kept/ is then yours to remove.
    mkdir -p "$HERE/out/kept" && mv "$WORK" "$HERE/out/kept/"
  else
    rm -rf "$WORK"
    date +%s > "$HERE/out/.last-cleanup"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# On an ext4 without a journal (the benchmark machine's), a new inode skips over every
# inode deleted in the last minutes (`recently_deleted` in ext4's ialloc.c; measured
# here: still so after 2 minutes, gone after 5.5). Creating 10,000 files then costs
# ~2 s of kernel time instead of ~0.2 s, for whichever tool runs next. So nothing is
# deleted during the run (sync_measure.py moves the finished many-file pairs aside;
# they go with the work directory at the end) and a run waits until 5.5 minutes after the
# last one's cleanup (WEFT_BENCH_KEEP_WORK=1 keeps the work directory instead).
WAIT_AFTER_DELETE=330
if [[ -f "$HERE/out/.last-cleanup" ]]; then
  since=$(( $(date +%s) - $(cat "$HERE/out/.last-cleanup" 2>/dev/null || echo 0) ))
  if (( since >= 0 && since < WAIT_AFTER_DELETE )); then
    log "waiting $((WAIT_AFTER_DELETE - since)) s: the last run's files were deleted $since s ago (ext4's recently-deleted inodes)"
    sync
    sleep $((WAIT_AFTER_DELETE - since))
  fi
fi

# A copy of the binary, so that a rebuild during the run does not change what is measured.
BIN="not used"
if has_tool weft; then
  mkdir -p "$WORK/bin"
  cp "$WEFT" "$WORK/bin/weft"
  BIN="$WEFT, modified $(date -r "$WEFT" '+%Y-%m-%d %H:%M:%S')"
fi

if ((SMALL)); then
  log "small validation data: W1s = W1/d0 (1,000 files), W2s = 50 MiB of W2/big.bin"
  mkdir -p "$WORK/data/W1s" "$WORK/data/W2s"
  cp -al "$DATA/W1/d0" "$WORK/data/W1s/d0"
  head -c $((50 * 1024 * 1024)) "$DATA/W2/big.bin" > "$WORK/data/W2s/big50m.bin"
  W1="W1s=$WORK/data/W1s"
  W2="W2s=$WORK/data/W2s"
else
  W1="W1=$DATA/W1"
  W2="W2=$DATA/W2"
fi

load1="$(cut -d' ' -f1 /proc/loadavg)"
if ((!SMALL)) && awk -v l="$load1" 'BEGIN { exit !(l > 1.5) }'; then
  log "warning: load average $load1 (> 1.5): other work is running; figures will be distorted"
fi

commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit (work tree has uncommitted changes)"
fi
st_version="not run"
has_tool syncthing && st_version="$(syncthing --version | awk 'NR == 1 {print $2}')"
rsync_version="not run"
has_tool rsync && rsync_version="$(rsync --version | awk 'NR == 1 {print $3, $4, $5, $6}')"
python3 - "$RUN_DIR/machine.json" "$DATE" "$commit" "$BIN" "$st_version" "$rsync_version" "$NETWORK" \
  "$RUNS" "$SEED" "$PAUSE" "$SMALL" "$TOOLS" <<'EOF'
import json, os, platform, subprocess, sys
out, date, commit, binary, stv, rsv, net, runs, seed, pause, small, tools = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
json.dump({"date": date, "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "mem": mem,
           "weft_commit": commit, "weft_binary": binary, "rustc": rustc, "syncthing": stv, "rsync": rsv,
           "network": net, "runs": int(runs), "seed": int(seed), "pause": float(pause), "small": small == "1",
           "tools": tools.split(","), "load_start": " ".join(open("/proc/loadavg").read().split()[:3])},
          open(out, "w"), indent=1)
EOF

log "$NETWORK; tools $TOOLS; figures $ONLY; $RUNS run(s); results in $RUN_DIR"
python3 "$HERE/sync_measure.py" --work "$WORK" --out "$RUN_DIR" --weft "$WORK/bin/weft" \
  --tools "$TOOLS" --only "$ONLY" --runs "$RUNS" --pause "$PAUSE" --timeout "$TIMEOUT" \
  --port-base "$PORT_BASE" --latency-samples "$LAT_N" --w1 "$W1" --w2 "$W2" --w3 "$DATA/W3" --sets "$SETS" &
PY_PID=$!
wait "$PY_PID" || die "sync_measure.py failed (exit $?)"
PY_PID=""

python3 - "$RUN_DIR/machine.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
json.dump(m, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$HERE/sync_report.py" "$RUN_DIR" > "$REPORT"
cat "$REPORT"
log "report: $REPORT (raw JSON and logs in $RUN_DIR)"
