#!/usr/bin/env bash
# bench/state.sh -- the state database's figures (make bench-state):
#   recovery  a state database with 10,000 agents and 100,000 queued packets
#             (made with the sqlite3 CLI on the router's own schema): time
#             from starting the router to its first answer on /is_alive, and
#             the load time the router logs;
#   up        mr-load up (100 agents x 50 in flight, 5 s) with state_path on
#             disk and with state_path = :memory:.
# BENCH_RUNS (3) runs each; RESULT lines go to $OUT/bench/state.txt, and
# bench/report.py adds them to BENCHMARKS.md. Every process started here is
# stopped by its PID, also on failure (trap).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-build}
BIN=$PWD/$OUT
RUNS=${BENCH_RUNS:-3}
PYTHON=${PYTHON:-/usr/bin/python3}
RESULTS=$BIN/bench/state.txt
TMP=$(mktemp -d /tmp/mr-bench-state.XXXXXX)
ROUTER_PID=

say() { echo "bench-state: $*" >&2; }
die() { echo "bench-state: error: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh

stop_router() { bench_stop "$ROUTER_PID" router; ROUTER_PID=; }
cleanup() { local rc=$?; stop_router; rm -rf "$TMP"; exit $rc; }
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in mephisto-router mr-load; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (make all $OUT/mr-load)"
done
command -v sqlite3 >/dev/null || die "sqlite3 is missing (dist/deps.sh installs it)"
mkdir -p "$BIN/bench" "$TMP/static"
echo ok >"$TMP/static/index.html"
PORT=$(bench_free_port)

# start_router STATE_PATH: start, wait until /is_alive answers; sets
# ROUTER_PID and SERVING_S (seconds from start to the first answer).
start_router() {
  cat >"$TMP/router.conf" <<EOF
port = $PORT
listen_address = 127.0.0.1
workers = 2
static_dir = $TMP/static
upload_dir = $TMP/
state_path = $1
log_level = info
EOF
  : >"$TMP/router.log"
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN/mephisto-router" --config "$TMP/router.conf" >>"$TMP/router.log" 2>&1 &
  ROUTER_PID=$!
  for _ in $(seq 1000); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/is_alive" 2>/dev/null; then
      t1=$(date +%s.%N)
      SERVING_S=$("$PYTHON" -c "print(round($t1 - $t0, 3))")
      return 0
    fi
    kill -0 "$ROUTER_PID" 2>/dev/null || break
    sleep 0.01
  done
  tail -n 20 "$TMP/router.log" >&2
  die "the router did not start"
}

{
  echo "# date=$(date -u +%Y-%m-%dT%H:%M:%SZ) commit=$(git rev-parse --short HEAD 2>/dev/null || echo ?) runs=$RUNS"
} >"$RESULTS"

# ---- recovery ----
say "making a state database with 10,000 agents and 100,000 queued packets"
DB=$TMP/recovery.db
start_router "$DB" # applies the schema
stop_router
sqlite3 "$DB" "
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
INSERT INTO agents SELECT 'agent-' || i, 'in task', 1 + i % 2, i, 1, 1700000000.0, 0,
  1700000000.0, 1700000000.0 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO queued_packets SELECT i,
  CASE WHEN i % 2 = 0 THEN 'mephisto' ELSE 'agent-' || (i % 10000 + 1) END,
  '{\"packet_type\":\"client_bound_live_update\",\"subject_id\":\"agent-' || (i % 10000 + 1)
  || '\",\"data\":{\"n\":' || i || ',\"text\":\"a line of task data of a typical size\"}}',
  strftime('%s', 'now') FROM n;"
cp "$DB" "$TMP/recovery.orig.db"
for run in $(seq "$RUNS"); do
  cp "$TMP/recovery.orig.db" "$DB"
  rm -f "$DB-wal" "$DB-shm"
  start_router "$DB"
  line=$(grep -o 'recovered [0-9]* agents and [0-9]* queued packets .* in [0-9]* ms' "$TMP/router.log" || true)
  [ -n "$line" ] || die "no recovery line in the router's log"
  agents=$(echo "$line" | awk '{print $2}')
  packets=$(echo "$line" | awk '{print $5}')
  load_ms=$(echo "$line" | awk '{print $(NF-1)}')
  echo "RESULT label=recovery run=$run agents=$agents packets=$packets load_ms=$load_ms serving_s=$SERVING_S" >>"$RESULTS"
  say "recovery run $run: serving after $SERVING_S s (load $load_ms ms)"
  stop_router
done

# ---- up, database on disk and in memory ----
for where in disk memory; do
  for run in $(seq "$RUNS"); do
    if [ "$where" = disk ]; then state=$TMP/up.db; rm -f "$state"*; else state=:memory:; fi
    start_router "$state"
    out=$("$BIN/mr-load" up --agents 100 --window 50 --duration 5 \
      --url "ws://127.0.0.1:$PORT" --pid "$ROUTER_PID" 2>&1 | grep '^RESULT' || true)
    [ -n "$out" ] || die "mr-load up printed no RESULT line"
    echo "${out/RESULT /RESULT label=up-$where run=$run }" >>"$RESULTS"
    say "up, database $where, run $run: $(echo "$out" | grep -o 'rate=[0-9]*')"
    stop_router
  done
done
"$PYTHON" bench/report.py --write BENCHMARKS.md "$BIN/bench"
say "BENCHMARKS.md rewritten"
