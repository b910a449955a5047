#!/usr/bin/env bash
# One Redis against a 3-master Redis Cluster, with Herald's keys in one slot (`?sharding=none`) and sharded (the
# default: each room's channel and keys in their own slot, SPUBLISH), side by side: `herald serve --workers 2` on
# each, the same `rooms` load, alternating runs. Prints per run: deliveries/s, the workers' CPU per delivery, Redis
# CPU (every redis-server process of the topology) per publish, the busiest Redis process's share of it (what caps
# a topology: each process runs on one core), and latency.
#
#   scripts/bench_redis_topologies.sh [REPS=3] [RATE=2000] [DURATION=15] [CONNECTIONS=4000]
#
# Redis CPU per publish is measured over the whole run (connects and joins included), with an `idle` run of the same
# connections and duration subtracted (the connects, subscriptions and heartbeats), so what is left is the publishes'.
# Needs a release build (swift build -c release --product herald), redis-server and redis-cli. Every process it
# starts is stopped at the end; results go to $OUT (default /tmp/herald-bench-topologies).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
rate=${2:-2000}
duration=${3:-15}
connections=${4:-4000}
herald=.build/release/herald
out=${OUT:-/tmp/herald-bench-topologies}
mkdir -p "$out"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_seconds() { local total=0; for pid in "$@"; do total=$(awk -v t="$total" -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", t + ($14 + $15) / hz }' "/proc/$pid/stat"); done; echo "$total"; }
redis_pids=()
supervisor=
stop_all() {
  [ -n "$supervisor" ] && { kill -TERM "$supervisor" 2>/dev/null || true; wait "$supervisor" 2>/dev/null || true; }
  for pid in "${redis_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  supervisor=
  redis_pids=()
}
trap stop_all EXIT

# start_topology single|cluster|sharded: sets url and redis_pids.
start_topology() {
  local kind=$1 dir="$out/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  if [ "$kind" = single ]; then
    local p; p=$(free_port)
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
    redis_pids+=($!)
    url="redis://127.0.0.1:$p"
    for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  else
    local nodes=() seeds=()
    for i in 1 2 3; do
      local p bus; p=$(free_port); bus=$(free_port)
      mkdir -p "$dir/$i"
      redis-server --port "$p" --cluster-port "$bus" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$i" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 >"$dir/$i/redis.log" 2>&1 &
      redis_pids+=($!)
      nodes+=("127.0.0.1:$p")
      seeds+=("127.0.0.1:$p")
      for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1
    for node in "${nodes[@]}"; do
      for _ in $(seq 1 200); do redis-cli -p "${node##*:}" cluster info | grep -q cluster_state:ok && break; sleep 0.05; done
    done
    url="redis+cluster://$(IFS=,; echo "${seeds[*]}")"
    [ "$kind" = cluster ] && url="$url?sharding=none"
  fi
}

start_herald() {
  port=$(free_port)
  "$herald" serve --port "$port" --workers 2 --redis "$url" --log-level warning --max-connections 100000 \
    --max-connections-per-ip 0 >"$out/herald.log" 2>&1 &
  supervisor=$!
  for _ in $(seq 1 200); do
    [ "$(pgrep -P "$supervisor" | wc -l)" -ge 2 ] &&
      python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
  pid_args=()
  for pid in $(pgrep -P "$supervisor"); do pid_args+=(--server-pid "$pid"); done
}

# run KIND SCENARIO: one bench on a fresh topology; prints "deliveries/s cpu_per_delivery redis_cpu published p50 p99".
run() {
  local kind=$1 scenario=$2
  start_topology "$kind"
  start_herald
  local before after pid
  before=$(cpu_seconds "${redis_pids[@]}")
  local each_before=()
  for pid in "${redis_pids[@]}"; do each_before+=("$(cpu_seconds "$pid")"); done
  local extra=()
  [ "$scenario" = rooms ] && extra=(--rooms 100 --rate "$rate")
  "$herald" bench --scenario "$scenario" --port "$port" --connections "$connections" --duration "$duration" "${extra[@]}" \
    --source-addresses 4 --no-progress "${pid_args[@]}" --json >"$out/$kind-$scenario.json"
  after=$(cpu_seconds "${redis_pids[@]}")
  local busiest=0 index=0
  for pid in "${redis_pids[@]}"; do
    busiest=$(python3 -c "import sys; print(max(float(sys.argv[1]), float(sys.argv[2]) - float(sys.argv[3])))" "$busiest" "$(cpu_seconds "$pid")" "${each_before[$index]}")
    index=$((index + 1))
  done
  stop_all
  python3 - "$out/$kind-$scenario.json" "$before" "$after" "$busiest" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency") or {}
print(f"{r.get('deliveriesPerSecond', 0):.0f} {r.get('serverCPUMicrosecondsPerDelivery') or 0:.2f} {float(sys.argv[3]) - float(sys.argv[2]):.3f} "
      f"{r.get('published', 0)} {lat.get('p50', 0)} {lat.get('p99', 0)} {r.get('lost', 0)} {r['deliveries'].get('duplicates', 0)} {float(sys.argv[4]):.3f}")
PY
}

printf '%-8s %-4s %12s %14s %22s %12s %14s %10s %10s %s\n' topology rep deliveries/s "node µs/deliv" "redis s" "µs/publish" "busiest µs/pub" "p50 ms" "p99 ms" "lost/dup"
for rep in $(seq 1 "$reps"); do
  for kind in ${TOPOLOGIES:-single cluster sharded}; do
    read -r _ _ idle_cpu _ _ _ _ _ idle_busiest <<<"$(run "$kind" idle)"
    read -r dps cpu redis_cpu published p50 p99 lost dup busiest <<<"$(run "$kind" rooms)"
    per_publish=$(python3 -c "import sys; p=int(sys.argv[3]); print(f'{(float(sys.argv[1]) - float(sys.argv[2])) / p * 1e6:.1f}' if p else 'n/a')" "$redis_cpu" "$idle_cpu" "$published")
    # The busiest process over the rooms run, less its share of the idle run (the idle's busiest, an upper bound).
    busiest_per_publish=$(python3 -c "import sys; p=int(sys.argv[3]); print(f'{max(0.0, float(sys.argv[1]) - float(sys.argv[2])) / p * 1e6:.1f}' if p else 'n/a')" "$busiest" "$idle_busiest" "$published")
    printf '%-8s %-4s %12s %14s %22s %12s %14s %10s %10s %s\n' "$kind" "$rep" "$dps" "$cpu" "$redis_cpu (idle $idle_cpu)" "$per_publish" "$busiest_per_publish" "$p50" "$p99" "$lost/$dup" | tee -a "$out/results.txt"
  done
done
