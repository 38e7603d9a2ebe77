#!/usr/bin/env bash
# tests/fuzz/run.sh fuzz SECONDS HARNESS... -- run each harness for SECONDS
#   on a copy of its corpus (build/fuzz/run/HARNESS/corpus), one at a time
# tests/fuzz/run.sh regress 0 HARNESS...   -- each harness once over every
#   file of its corpus, one process per file (logs of failures kept in
#   build/fuzz/run/HARNESS/)
# Exits 1 if any harness crashed, after running all of them. The harnesses
# are build/fuzz/HARNESS (make fuzz-build); FUZZ_OUT overrides build/fuzz.
set -u
cd "$(dirname "$0")/../.."
mode=$1 seconds=$2
shift 2
out=${FUZZ_OUT:-build/fuzz}

# readable stacks; a sanitizer report is a crash libFuzzer keeps the input of
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for s in llvm-symbolizer /usr/lib/llvm-14/bin/llvm-symbolizer; do
  if command -v "$s" >/dev/null; then
    export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v "$s")}
    break
  fi
done

# per harness: the longest input and the dictionary
options() {
  case $1 in
    fuzz_wire) echo "-max_len=4096 -dict=tests/fuzz/dict/json.dict" ;;
    fuzz_ipc) echo "-max_len=8192" ;;
    fuzz_config) echo "-max_len=4096 -dict=tests/fuzz/dict/config.dict" ;;
    fuzz_http_head) echo "-max_len=16384 -dict=tests/fuzz/dict/http.dict" ;;
    fuzz_multipart) echo "-max_len=16384 -dict=tests/fuzz/dict/multipart.dict" ;;
    *) echo "" ;;
  esac
}

failed=""
for h in "$@"; do
  bin=$out/$h corpus=tests/fuzz/corpus/$h run=$out/run/$h
  [ -x "$bin" ] || { echo "fuzz: $bin is missing (make fuzz-build)" >&2; exit 2; }
  [ -d "$corpus" ] || { echo "fuzz: no corpus $corpus" >&2; exit 2; }
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/artifacts" "$run/tmp"
  export TMPDIR=$PWD/$run/tmp # the HTTP harnesses' static_dir and upload_dir
  if [ "$mode" = regress ]; then
    # one process per input: every failing input is named, not the first
    echo "== $h: $(ls "$corpus" | wc -l) inputs of $corpus"
    bad=0
    for f in "$corpus"/*; do
      # shellcheck disable=SC2046
      if ! "$bin" $(options "$h") "$f" >"$run/log" 2>&1; then
        echo "fuzz: $h fails on $f:"
        grep -m 3 -E 'ERROR|runtime error|SUMMARY' "$run/log" | sed 's/^/    /'
        cp "$run/log" "$run/$(basename "$f").log"
        bad=1
      fi
    done
    [ $bad = 0 ] || failed="$failed $h"
    continue
  fi
  cp -r "$corpus"/. "$run/corpus/"
  echo "== $h: ${seconds} s on a copy of $corpus (log: $run/log)"
  # shellcheck disable=SC2046
  if "$bin" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$run/artifacts/" $(options "$h") "$run/corpus" >"$run/log" 2>&1; then
    grep -E '^#[0-9]+.*(DONE|pulse)' "$run/log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
      "$run/log" | tr '\n' ' '
    echo
  else
    tail -n 80 "$run/log"
    echo "fuzz: $h crashed; the input is in $run/artifacts/"
    failed="$failed $h"
  fi
done
if [ -n "$failed" ]; then
  echo "fuzz: failed:$failed"
  exit 1
fi
echo "fuzz: ok ($*)"
