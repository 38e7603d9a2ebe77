#!/usr/bin/env bash
# bench/progress.sh COMMIT... -- what each change did: the router of every
# commit given, against the same load generator (this tree's mr-load).
#
# Each commit is built in its own git worktree under $OUT/progress/ (the
# libwebsockets of build/deps is shared) and measured BENCH_RUNS times (3)
# on up 100 x 50, down 100 x 50, up 100 x 1 and register 50 clients, a
# fresh router (2 workers) for every run, run by run over all the commits
# (the machine's speed drifts). RESULT lines go to
# $OUT/bench/progress.txt, which bench/report.py turns into the table
# "What was slow and what changed it" of BENCHMARKS.md (make bench keeps
# the file; this script does not rewrite BENCHMARKS.md itself).
#
# Env: OUT (build), BENCH_RUNS (3), PROGRESS_RESULTS (the RESULT file,
# $OUT/bench/progress.txt; build/bench/refactor.txt for the before/after
# table of a refactor, see bench/report.py --refactor). About 2 minutes per
# commit.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: bench/progress.sh COMMIT..." >&2; exit 2; }
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-build}
RUNS=${BENCH_RUNS:-3}
PYTHON=${PYTHON:-/usr/bin/python3}
LOAD=$ROOT/$OUT/mr-load
RESULTS=${PROGRESS_RESULTS:-$OUT/bench/progress.txt}
case $RESULTS in /*) ;; *) RESULTS=$ROOT/$RESULTS ;; esac
WT=$ROOT/$OUT/progress

say() { echo "progress: $*" >&2; }
die() { echo "progress: error: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh

[ -x "$LOAD" ] || die "$LOAD is missing (make $OUT/mr-load)"
[ -f build/deps/.done ] || die "build/deps is missing (make deps)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAX_CONN=$(( $(ulimit -n) - 100 ))

TMP=$(mktemp -d /tmp/mr-progress.XXXXXX)
ROUTER_PID=
stop_router() { bench_stop "$ROUTER_PID" router; ROUTER_PID=; }
cleanup() { stop_router; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$TMP/static" "$(dirname "$RESULTS")" "$WT"
echo '<!doctype html><title>task</title>' >"$TMP/static/index.html"

# build COMMIT: its router, in a worktree of its own; prints the binary.
build() {
  local sha dir
  sha=$(git rev-parse --short=7 "$1^{commit}") || die "no such commit: $1"
  dir=$WT/$sha
  if [ ! -x "$dir/build/mephisto-router" ]; then
    rm -rf "$dir"
    git worktree prune
    git worktree add --detach "$dir" "$sha" >/dev/null 2>&1 || die "cannot check out $sha"
    mkdir -p "$dir/build"
    ln -sfn "$ROOT/build/deps" "$dir/build/deps"
    make -C "$dir" -j2 all >"$TMP/build-$sha.log" 2>&1 ||
      { tail -n 20 "$TMP/build-$sha.log" >&2; die "$sha does not build"; }
  fi
  echo "$dir/build/mephisto-router"
}

echo "# progress $(date -u +%Y-%m-%dT%H:%M:%SZ) runs=$RUNS load=$(git rev-parse --short=7 HEAD)" >"$RESULTS"
declare -A BIN_OF
SHAS=()
for c in "$@"; do
  sha=$(git rev-parse --short=7 "$c^{commit}") || die "no such commit: $c"
  BIN_OF[$sha]=$(build "$c")
  SHAS+=("$sha")
  echo "# commit $sha $(git log -1 --format=%s "$sha")" >>"$RESULTS"
done
# Run by run over all the commits, not commit by commit: the machine's
# speed drifts (other tenants of the host), and a drift must not pass for
# the effect of a change.
for run in $(seq "$RUNS"); do
  for sha in "${SHAS[@]}"; do
    say "run $run: $sha"
    for sc in "up-100x50 up --agents 100 --window 50" "down-100x50 down --agents 100 --window 50" \
              "up-100x1 up --agents 100 --window 1" "register-50 register --clients 50"; do
      read -r label args <<<"$sc"
      bench_start_router "${BIN_OF[$sha]}" "$TMP" 2 "$MAX_CONN"
      # shellcheck disable=SC2086 # args is a word list
      line=$("$LOAD" $args --duration 5 --url "ws://127.0.0.1:$ROUTER_PORT" --pid "$ROUTER_PID" |
             grep '^RESULT' || true)
      stop_router
      [ -n "$line" ] || die "$sha $label: mr-load printed no RESULT"
      echo "RESULT commit=$sha label=$label run=$run ${line#RESULT }" >>"$RESULTS"
    done
  done
done
say "results in $RESULTS"
