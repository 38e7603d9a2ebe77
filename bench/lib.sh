# shellcheck shell=bash
# bench/lib.sh -- what the benchmark scripts share (sourced by bench/run.sh,
# bench/state.sh and bench/progress.sh; they define PYTHON and die()).

# bench_free_port: a free TCP port on 127.0.0.1.
bench_free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_stop PID NAME: SIGTERM, then SIGKILL after 10 s; reaps it.
bench_stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "bench: $2 (pid $pid) did not stop in 10 s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# bench_start_router BINARY DIR WORKERS MAX_CONN: a fresh router on a free
# port of 127.0.0.1 (log_level warn), with its config, static files
# (DIR/static), uploads and state database in DIR and its log in
# DIR/router.log; sets ROUTER_PID and ROUTER_PORT once /is_alive answers.
bench_start_router() {
  local bin=$1 dir=$2 port
  port=$(bench_free_port)
  mkdir -p "$dir/static" "$dir/uploads"
  rm -f "$dir"/state.db*
  cat >"$dir/router.conf" <<EOF
port = $port
listen_address = 127.0.0.1
workers = $3
static_dir = $dir/static
upload_dir = $dir/uploads
state_path = $dir/state.db
log_level = warn
max_connections = $4
EOF
  (cd "$dir" && exec "$bin" --config "$dir/router.conf" >>"$dir/router.log" 2>&1) &
  ROUTER_PID=$!
  # shellcheck disable=SC2034 # for the caller
  ROUTER_PORT=$port
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/is_alive" 2>/dev/null; then return 0; fi
    kill -0 "$ROUTER_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$dir/router.log" >&2
  die "the router did not start"
}
