# Sourced by the cluster benchmarks: starts a redis-server and `herald serve --workers W --redis` on free
# loopback ports, waits until every worker listens, and stops both when the script exits.
#
#   start_cluster WORKERS OUT SERVER [extra serve options...]
#
# Sets: redis_port, port, redis_pid, supervisor, pids (the workers, one per line). Redis records commands slower
# than 10 ms (SLOWLOG) and latency events over 10 ms (LATENCY). --max-connections-per-ip 0: the generator spreads its
# connections over several loopback addresses. A worker that crashes leaves its backtrace in $OUT/herald.log.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_cluster() {
  local workers=$1 out=$2 server=$3
  shift 3
  redis_port=$(free_port)
  port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" \
    --latency-monitor-threshold 10 --slowlog-log-slower-than 10000 >"$out/redis.log" 2>&1 &
  redis_pid=$!
  SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=yes,interactive=no} "$server" serve --port "$port" --workers "$workers" \
    --redis "redis://127.0.0.1:$redis_port" --log-level warning --max-connections 100000 --max-connections-per-ip 0 \
    "$@" >"$out/herald.log" 2>&1 &
  supervisor=$!
  trap stop_cluster EXIT
  for _ in $(seq 1 200); do
    [ "$(pgrep -P "$supervisor" | wc -l)" -ge "$workers" ] &&
      python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1  # every worker binds its own socket: give the last ones a moment after the first answers
  pids=$(pgrep -P "$supervisor")
}

stop_cluster() {
  kill -TERM "$supervisor" 2>/dev/null || true
  wait "$supervisor" 2>/dev/null || true
  kill "$redis_pid" 2>/dev/null || true
}
