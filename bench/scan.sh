#!/usr/bin/env bash
# weft's scan benchmark: the figures the project's README reports.
#
#   bench/scan.sh [--runs N] [--pause S] [--no-syncthing] [--no-weft] [--no-build]
#
#   --runs N        runs per throughput/rescan figure, median reported (default 3)
#   --pause S       seconds to pause after `sync` before each timed run (default 2)
#   --no-syncthing  skip Syncthing's scan of W1/W2 (bench/syncthing_scan.sh)
#   --no-weft       skip everything that needs the weft binary (passes tool, Syncthing only)
#   --no-build      use the binaries already built
#
# In one run, with the page cache warm (files read with cat first) and `sync` + a pause
# before each timed command:
#   - builds weft (`cargo build --release -p weft-cli` → target/release/weft) and
#     bench/passes (weft-bench-passes), and generates W1/W2/W3 (seed 1) if missing;
#   - the compute ceiling of W1 and W2 (weft-bench-passes);
#   - W1 and W2 fresh scans: new home, `weft init`, `weft folder add DIR --no-scan`, then
#     `weft scan --json` timed (wall clock; elapsed_ms from its JSON also kept): MB/s,
#     files/s, and the ratio to the two-core ceiling of the same bytes (target ≥ 0.70);
#   - W1 rescan with nothing changed (a second `weft scan --json`; target < 150 ms);
#   - W3: a folder holding base.bin is scanned; insert10.bin is copied over base.bin and
#     rescanned (new_chunk_bytes + log_bytes, target ≤ 192 KiB); base restored, rescanned;
#     overwrite1m.bin copied over, rescanned (target ≤ 1.25 MiB);
#   - peak RSS of a scan of a folder holding only W2's 1 GiB file (`/usr/bin/time -v`
#     "Maximum resident set size"; target < 64 MiB);
#   - Syncthing's scan of W1 and W2 (bench/syncthing_scan.sh).
# Writes bench/out/scan-DATE.md (also printed) and keeps the raw JSON in bench/out/scan-DATE/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNS=3
PAUSE=2
SEED=1
DO_SYNCTHING=1
DO_WEFT=1
DO_BUILD=1
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --pause) PAUSE="$2"; shift 2 ;;
    --no-syncthing) DO_SYNCTHING=0; shift ;;
    --no-weft) DO_WEFT=0; shift ;;
    --no-build) DO_BUILD=0; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "scan.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[scan] $*" >&2; }
die() { echo "[scan] error: $*" >&2; exit 1; }

DATA="$HERE/data"
DATE="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$HERE/out/scan-$DATE"
REPORT="$HERE/out/scan-$DATE.md"
mkdir -p "$HERE/out"
WORK="$(mktemp -d "$HERE/out/scan-work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

WEFT="${WEFT_BIN:-$ROOT/target/release/weft}" # WEFT_BIN: measure another build
PASSES="$HERE/passes/target/release/weft-bench-passes"

if [[ ! -x /usr/bin/time ]]; then
  log "installing Debian's time package (for /usr/bin/time -v)"
  [[ $(id -u) -eq 0 ]] || die "/usr/bin/time is missing: apt-get install time"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2
fi

# ---- build ------------------------------------------------------------------------
if ((DO_BUILD)); then
  log "building bench/passes (release)"
  cargo build --release --manifest-path "$HERE/passes/Cargo.toml" >&2 \
    || die "bench/passes did not build"
  if ((DO_WEFT)); then
    log "building weft (release)"
    (cd "$ROOT" && cargo build --release -p weft-cli) >&2 \
      || die "the weft CLI did not build (cargo build --release -p weft-cli); rerun with --no-weft to measure only the passes tool and Syncthing"
  fi
fi
[[ -x "$PASSES" ]] || die "$PASSES is missing: cargo build --release --manifest-path bench/passes/Cargo.toml"
if ((DO_WEFT)); then
  [[ -x "$WEFT" ]] || die "$WEFT is missing: the weft CLI (cargo build --release -p weft-cli) is needed; rerun with --no-weft to measure only the passes tool and Syncthing"
  for sub in init folder scan; do
    "$WEFT" "$sub" --help >/dev/null 2>&1 || die "$WEFT has no working \`$sub\` subcommand yet (the CLI contract: init, folder add, scan --json)"
  done
fi

warm() { find "$1" -type f -print0 | xargs -0 -r cat > /dev/null; }
settle() { sync; sleep "$PAUSE"; }

# weft_do ARGS...: runs weft, dies with its stderr on failure.
weft_do() {
  if ! "$WEFT" "$@" > "$WORK/do.out" 2> "$WORK/do.err"; then
    cat "$WORK/do.err" >&2
    die "\`weft $*\` failed"
  fi
}

# weft_timed RESULT.json ARGS...: runs `weft ARGS` under /usr/bin/time -v, wall clock
# from bash's EPOCHREALTIME around it; writes {"args", "wall_s", "user_s", "sys_s",
# "maxrss_kib", "scan": <stdout parsed as JSON>}.
weft_timed() {
  local res="$1"; shift
  local t0 t1 rc=0
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$WORK/time.txt" "$WEFT" "$@" > "$WORK/timed.out" 2> "$WORK/timed.err" || rc=$?
  t1=$EPOCHREALTIME
  if ((rc)); then
    cat "$WORK/timed.err" >&2
    die "\`weft $*\` failed (exit $rc)"
  fi
  python3 - "$res" "$t0" "$t1" "$WORK/time.txt" "$WORK/timed.out" "weft $*" <<'EOF' \
    || die "\`weft $*\` did not print the JSON object the benchmark expects (see above)"
import json, sys
res, t0, t1, tfile, ofile, args = sys.argv[1:]
tv = {}
for line in open(tfile):
    k, _, v = line.strip().rpartition(": ")
    tv[k] = v
raw = open(ofile).read()
try:
    scan = json.loads(raw)
except ValueError:
    sys.stderr.write(f"{args}: stdout is not JSON:\n{raw[:2000]}\n")
    sys.exit(1)
if isinstance(scan, list) and len(scan) == 1:
    scan = scan[0]
need = ["files_added", "files_changed", "bytes_read", "new_chunks", "new_chunk_bytes", "log_bytes", "elapsed_ms"]
missing = [k for k in need if not isinstance(scan, dict) or k not in scan]
if missing:
    sys.stderr.write(f"{args}: JSON lacks {missing}:\n{raw[:2000]}\n")
    sys.exit(1)
json.dump({"args": args, "wall_s": float(t1) - float(t0),
           "user_s": float(tv["User time (seconds)"]), "sys_s": float(tv["System time (seconds)"]),
           "maxrss_kib": int(tv["Maximum resident set size (kbytes)"]), "scan": scan}, open(res, "w"), indent=1)
EOF
}

# ---- preflight: the CLI contract on a tiny folder, before anything slow ---------------
if ((DO_WEFT)); then
  mkdir -p "$WORK/smoke/dir"
  head -c 100000 /dev/urandom > "$WORK/smoke/dir/a.bin"
  weft_do --home "$WORK/smoke/home" init --name bench
  weft_do --home "$WORK/smoke/home" folder add "$WORK/smoke/dir" --name smoke --no-scan
  weft_timed "$WORK/smoke.json" --home "$WORK/smoke/home" scan --json
  rm -rf "$WORK/smoke" "$WORK/smoke.json"
fi

# ---- data -------------------------------------------------------------------------
python3 "$HERE/gen.py" --seed "$SEED" --out "$DATA" W1 W2 W3

mkdir -p "$RUN_DIR"
# ---- machine info -----------------------------------------------------------------
commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit (work tree has uncommitted changes)"
fi
st_version="not run"
((DO_SYNCTHING)) && st_version="$(syncthing --version 2>/dev/null | awk '{print $2}' || echo 'not installed yet')"
python3 - "$RUN_DIR/machine.json" "$DATE" "$commit" "$st_version" "$RUNS" "$SEED" "$DATA" "$DO_WEFT" "$WEFT" "$DO_BUILD" <<'EOF'
import json, os, platform, subprocess, sys, time
out, date, commit, stv, runs, seed, data, do_weft, weft, built = sys.argv[1:]
binary = "not used"
if do_weft == "1":
    binary = (f"{weft}, modified {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(os.path.getmtime(weft)))}"
              + ("" if built == "1" else " (--no-build: may not match the commit)"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
sets = {}
for s in ("W1", "W2", "W3"):
    try:
        sets[s] = json.load(open(os.path.join(data, f"{s}.marker")))
    except OSError:
        pass
json.dump({"date": date, "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "mem": mem,
           "weft_commit": commit, "weft_binary": binary, "rustc": rustc, "syncthing": stv, "runs": int(runs), "seed": int(seed),
           "load_start": " ".join(open("/proc/loadavg").read().split()[:3]), "sets": sets},
          open(out, "w"), indent=1)
EOF

# ---- compute ceiling --------------------------------------------------------------
for s in W1 W2; do
  log "compute ceiling of $s (weft-bench-passes)"
  warm "$DATA/$s"
  floors=()
  [[ $s == W1 ]] && floors=(--floors) # many small files: what reading them leaves
  "$PASSES" --runs "$RUNS" --label "$s" "${floors[@]}" "$DATA/$s" > "$RUN_DIR/passes-$s.json"
done

# ---- weft ---------------------------------------------------------------------------
if ((DO_WEFT)); then
  for s in W1 W2; do
    for ((r = 1; r <= RUNS; r++)); do
      h="$WORK/home-$s-$r"
      weft_do --home "$h" init --name bench
      weft_do --home "$h" folder add "$DATA/$s" --name "$s" --no-scan
      warm "$DATA/$s"
      settle
      log "weft $s fresh scan, run $r"
      weft_timed "$RUN_DIR/weft-$s-fresh-$r.json" --home "$h" scan --json
      if [[ $s == W1 ]]; then
        settle
        log "weft W1 rescan (nothing changed), run $r"
        weft_timed "$RUN_DIR/weft-W1-rescan-$r.json" --home "$h" scan --json
      fi
      rm -rf "$h"
    done
  done

  log "weft W3 edits"
  f="$WORK/w3"
  h="$WORK/home-W3"
  mkdir -p "$f"
  cp "$DATA/W3/base.bin" "$f/base.bin"
  weft_do --home "$h" init --name bench
  weft_do --home "$h" folder add "$f" --name W3 --no-scan
  settle
  weft_timed "$RUN_DIR/w3-0-base.json" --home "$h" scan --json
  step=1
  for v in insert10 base overwrite1m; do
    sleep 1 # distinct mtimes even at one-second resolution
    cp "$DATA/W3/$v.bin" "$f/base.bin"
    settle
    name="$v"; [[ $v == base ]] && name=restore
    weft_timed "$RUN_DIR/w3-$step-$name.json" --home "$h" scan --json
    step=$((step + 1))
  done
  rm -rf "$h" "$f"

  log "weft peak RSS, folder holding the 1 GiB file"
  f="$WORK/big"
  h="$WORK/home-big"
  mkdir -p "$f"
  ln "$DATA/W2/big.bin" "$f/big.bin" 2>/dev/null || cp "$DATA/W2/big.bin" "$f/big.bin"
  weft_do --home "$h" init --name bench
  weft_do --home "$h" folder add "$f" --name big --no-scan
  warm "$f"
  settle
  weft_timed "$RUN_DIR/rss-big.json" --home "$h" scan --json
  rm -rf "$h" "$f"
fi

# ---- Syncthing -----------------------------------------------------------------------
if ((DO_SYNCTHING)); then
  log "Syncthing scans of W1 and W2"
  "$HERE/syncthing_scan.sh" --runs "$RUNS" --pause "$PAUSE" --out "$RUN_DIR/syncthing-runs.jsonl" \
    W1="$DATA/W1" W2="$DATA/W2" > "$RUN_DIR/syncthing.json"
  st_version="$(syncthing --version | awk '{print $2}')"
fi

python3 - "$RUN_DIR/machine.json" "$st_version" <<'EOF'
import json, sys
p, stv = sys.argv[1:]
m = json.load(open(p))
m["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
m["syncthing"] = stv
json.dump(m, open(p, "w"), indent=1)
EOF

python3 "$HERE/report.py" "$RUN_DIR" > "$REPORT"
cat "$REPORT"
log "report: $REPORT (raw JSON in $RUN_DIR)"
