#!/usr/bin/env bash
# bench/run.sh standard|big -- run the benchmarks and rewrite BENCHMARKS.md.
#
#   standard  (make bench) the standard set against build/mephisto-router,
#             its echo limit (mr-echo) and wrk; about 8 minutes on 2 cores
#   big       (make bench-big) 100,000 agents heartbeating every 6 s
#
# Each figure is measured BENCH_RUNS times (3) and BENCHMARKS.md gets the
# medians (bench/report.py); the raw RESULT lines stay in $OUT/bench/.
# The router is started here for every run (a fresh temporary config,
# static folder and state database, on a free port of 127.0.0.1) and is
# stopped by its PID at the end of the run, and on any exit (trap).
# Before each run the script waits (at most BENCH_QUIET_WAIT seconds, 60)
# for the machine to be idle, so that other work on it does not land in the
# figures; what else ran during each measurement is in the results
# (other_cpu_pct).
#
# Env: OUT (build), BENCH_RUNS (3), BENCH_QUIET_WAIT (60).
set -euo pipefail

MODE=${1:-standard}
case "$MODE" in standard|big) ;; *) echo "usage: bench/run.sh standard|big" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-build}
BIN=$ROOT/$OUT
RUNS=${BENCH_RUNS:-3}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
RESULTS_DIR=$BIN/bench
RESULTS=$RESULTS_DIR/$MODE.txt
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3

say() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh

for b in mephisto-router mr-load mr-echo; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (make all $OUT/mr-load $OUT/mr-echo)"
done

TMP=$(mktemp -d /tmp/mr-bench.XXXXXX)
ROUTER_PID=
ECHO_PID=

stop_router() { bench_stop "$ROUTER_PID" router; ROUTER_PID=; }
stop_echo() { bench_stop "$ECHO_PID" mr-echo; ECHO_PID=; }

cleanup() {
  local rc=$?
  [ "$rc" -eq 0 ] || say "stopped with exit code $rc (line ${BASH_LINENO[0]:-?})"
  stop_router
  stop_echo
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools and limits ----

if ! command -v wrk >/dev/null; then
  say "wrk is missing: installing the Debian package"
  DEPS_PACKAGES_EXTRA=wrk bash dist/deps.sh "$OUT" >&2 ||
    apt-get install -y --no-install-recommends wrk >&2 ||
    die "cannot install wrk"
fi
command -v curl >/dev/null || die "curl is missing (dist/deps.sh installs it)"

# Every connection is a descriptor, in the router's workers and in mr-load.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
[ "$FD_LIMIT" = unlimited ] && FD_LIMIT=1048576
# The worker refuses to start when the limit is below max_connections + 64.
MAX_CONN=$((FD_LIMIT - 100))

# ---- the router ----

WORKERS=2
mkdir -p "$TMP/static" "$TMP/uploads"
printf '<!doctype html><html><head><title>task</title></head><body><div id="app"></div><script src="bundle.js"></script></body></html>\n' >"$TMP/static/index.html"
# a small static file: the per-request cost, not the bandwidth
head -c 137 /dev/zero | tr '\0' 'x' >"$TMP/static/hello.txt"

start_router() { bench_start_router "$BIN/mephisto-router" "$TMP" "$WORKERS" "$MAX_CONN"; }

start_echo() {
  ECHO_PORT=$(bench_free_port)
  "$BIN/mr-echo" --port "$ECHO_PORT" >"$TMP/echo.log" 2>&1 &
  ECHO_PID=$!
  for _ in $(seq 50); do
    grep -q listening "$TMP/echo.log" 2>/dev/null && return 0
    sleep 0.1
  done
  die "mr-echo did not start"
}

# ---- waiting for a quiet machine ----

# CPU used by other user processes over one second, % of one core. From
# the processes' own times: this VM's /proc/stat is tick-sampled and misses
# short bursts.
others_busy() {
  "$PYTHON" - "$$" <<'PY'
import os, sys, time
skip = {os.getpid(), int(sys.argv[1])}
def snap():
    t = {}
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in skip:
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rfind(")") + 2:].split()
        if int(f[6]) & 0x00200000:  # kernel thread
            continue
        t[p] = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return t
a = snap(); time.sleep(1); b = snap()
print(int(sum(v - a.get(k, 0) for k, v in b.items()) * 100 / os.sysconf("SC_CLK_TCK")))
PY
}

wait_quiet() {
  local start=$SECONDS b
  while :; do
    b=$(others_busy)
    [ "${b:-0}" -le 15 ] && return 0
    if [ $((SECONDS - start)) -ge "$QUIET_WAIT" ]; then
      say "other processes still use ${b}% of a core after ${QUIET_WAIT} s: measuring anyway"
      return 0
    fi
  done
}

# ---- running mr-load ----

# run_load LABEL [--echo] SCENARIO ARGS...: one run against a fresh router
# (or the running mr-echo); its RESULT line goes to $RESULTS as
# "RESULT label=LABEL run=N ...".
RUN_NO=0
run_load() {
  local label=$1 target out rc attempt other use_echo=0
  shift
  if [ "$1" = --echo ]; then use_echo=1; shift; fi
  for attempt in 1 2 3; do
    rc=0
    if [ "$use_echo" = 1 ]; then
      target=(--url "ws://127.0.0.1:$ECHO_PORT" --pid "$ECHO_PID")
    else
      start_router
      target=(--url "ws://127.0.0.1:$ROUTER_PORT" --pid "$ROUTER_PID")
    fi
    wait_quiet
    out=$TMP/$label.$RUN_NO.out
    say "$label (run $RUN_NO): mr-load $* ${target[*]}"
    timeout 900 "$BIN/mr-load" "$@" "${target[@]}" >"$out" 2>&1 || rc=$?
    [ -z "$ROUTER_PID" ] || stop_router
    sed 's/^/    /' "$out" >&2
    # Other processes took more than a quarter of a core while this
    # measured: not this router's figure; measure again (twice at most).
    other=$(grep -o 'other_cpu_pct=[0-9]*' "$out" | tail -1 | cut -d= -f2 || true)
    if [ "${other:-0}" -gt 25 ] && [ "$attempt" -lt 3 ]; then
      say "$label: other processes used ${other}% of a core meanwhile: measuring again"
      continue
    fi
    break
  done
  [ "$rc" -eq 0 ] || say "$label: mr-load exited with $rc (a check failed; kept in the results)"
  grep '^RESULT ' "$out" | sed "s/^RESULT /RESULT label=$label run=$RUN_NO /" >>"$RESULTS" || true
}

# run_wrk LABEL PATH: wrk -t2 -c100 -d5s against a fresh router
run_wrk() {
  local label=$1 path=$2 out rps p50 p99
  start_router
  wait_quiet
  out=$TMP/$label.$RUN_NO.out
  say "$label (run $RUN_NO): wrk -t2 -c100 -d5s --latency http://127.0.0.1:$ROUTER_PORT$path"
  wrk -t2 -c100 -d5s --latency "http://127.0.0.1:$ROUTER_PORT$path" >"$out" 2>&1 || true
  sed 's/^/    /' "$out" >&2
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(awk '$1 == "50%" { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  errors=$(awk '/Non-2xx|Socket errors/ { print }' "$out" | tr -s ' ' | tr ' ' '_')
  echo "RESULT label=$label run=$RUN_NO scenario=wrk path=$path rate=${rps:-0} p50=${p50:-n/a} p99=${p99:-n/a} errors=${errors:-none}" >>"$RESULTS"
  stop_router
}

median_of() { # median_of LABEL KEY: the median of KEY over LABEL's runs
  "$PYTHON" bench/report.py --median "$RESULTS" "$1" "$2"
}

mkdir -p "$RESULTS_DIR"
: >"$RESULTS"
{
  echo "# mode=$MODE runs=$RUNS date=$(date -u +%Y-%m-%dT%H:%M:%SZ) fd_limit=$FD_LIMIT"
  echo "# commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +changes)"
} >>"$RESULTS"
BENCH_START=$SECONDS

if [ "$MODE" = standard ]; then
  start_echo
  for RUN_NO in $(seq "$RUNS"); do
    run_load up-100x50 up --agents 100 --window 50 --duration 5
  done
  HALF=$(median_of up-100x50 rate | awk '{ printf "%d", $1 / 2 }')
  [ "${HALF:-0}" -gt 0 ] || HALF=1000
  for RUN_NO in $(seq "$RUNS"); do
    run_load up-100x50-half up --agents 100 --window 50 --duration 5 --rate "$HALF"
    run_load up-100x1 up --agents 100 --window 1 --duration 5
    run_load down-100x50 down --agents 100 --window 50 --duration 5
    run_load register-50 register --clients 50 --duration 5
    run_load heartbeat-1000 heartbeat --agents 1000 --interval 0.1 --duration 5
    run_load echo-up-100x50 --echo up --agents 100 --window 50 --duration 5
    run_load echo-down-100x50 --echo down --agents 100 --window 50 --duration 5
    run_load echo-up-100x1 --echo up --agents 100 --window 1 --duration 5
  done
  for RUN_NO in $(seq "$RUNS"); do
    run_load connect-10000 connect --agents 10000 --interval 6 --duration 12
    run_load churn-10000 churn --agents 10000 --rounds 3
  done
  for RUN_NO in $(seq "$RUNS"); do
    run_wrk wrk-is-alive /is_alive
    run_wrk wrk-static /hello.txt
  done
  stop_echo
else
  # 100,000 sockets need 100,000 descriptors on each side. A worker may
  # hold FD_LIMIT - 100 of them, and one mr-load process as many.
  need_workers=$(( (100000 + MAX_CONN - 1) / MAX_CONN ))
  WORKERS=$(( need_workers < 2 ? 2 : need_workers + 2 )) # room for an uneven spread
  [ "$WORKERS" -le 64 ] || die "the open-file limit ($FD_LIMIT) is too low for 100,000 connections"
  PROCS=$(( (100000 + FD_LIMIT - 200) / (FD_LIMIT - 100) ))
  [ "$PROCS" -ge 1 ] || PROCS=1
  say "open-file limit $FD_LIMIT: the router runs $WORKERS workers, mr-load $PROCS agent processes"
  echo "# big: workers=$WORKERS procs=$PROCS" >>"$RESULTS"
  for RUN_NO in $(seq "$RUNS"); do
    # RTT is timed from one heartbeat interval after the last agent
    # attached (--warmup 6): the steady state, not the connect storm.
    run_load connect-100000 connect --agents 100000 --interval 6 --warmup 6 --duration 12 \
      --procs "$PROCS" --concurrency 500 --connect-timeout 300
  done
fi
echo "# elapsed=$((SECONDS - BENCH_START))s" >>"$RESULTS"
say "done in $((SECONDS - BENCH_START)) s; results in $RESULTS"

"$PYTHON" bench/report.py --write BENCHMARKS.md "$RESULTS_DIR"
say "BENCHMARKS.md rewritten"
