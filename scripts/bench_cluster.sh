#!/usr/bin/env bash
# Herald past one process's open-file limit: `herald serve --workers W --redis` holding N connections, and a burst of
# broadcasts to all of them. Prints the bench's report (deliveries, latency = publish → delivery, the workers' CPU and
# RSS) and Redis's CPU seconds and PUBLISH count over the whole run (connects included).
#
#   scripts/bench_cluster.sh [CONNECTIONS=95000] [WORKERS=5] [MESSAGES=10]
#
# Needs a release build (swift build -c release --product herald) and redis-server. Results go to $OUT
# (default /tmp/herald-bench-cluster). Every process it starts is stopped at the end. One publishing connection: a
# stream published through two workers has no order between them (nor in any pub/sub system).
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-95000}
workers=${2:-5}
messages=${3:-10}
herald=.build/release/herald
# SERVER: another herald binary to serve with (a build of an earlier commit, for a before/after), same bench.
server=${SERVER:-$herald}
out=${OUT:-/tmp/herald-bench-cluster}
mkdir -p "$out"
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
. scripts/lib/cluster.sh
start_cluster "$workers" "$out" "$server"
pid_args=()
for pid in $pids; do pid_args+=(--server-pid "$pid"); done
echo "workers: $(echo $pids | tr '\n' ' ')  redis: $redis_pid  port: $port"

redis_cpu_before=$(cpu_seconds "$redis_pid")
"$herald" bench --scenario all --port "$port" --connections "$connections" --messages "$messages" \
  --publish-connections 1 --drain-timeout 30 --source-addresses 8 --no-progress "${pid_args[@]}" --json >"$out/bench.json"
redis_cpu_after=$(cpu_seconds "$redis_pid")
python3 - "$out/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency") or {}
print(f"connections ok {r['connectionsOK']} failed {r.get('connectionsFailed')}; expected {r['expectedDeliveries']} lost {r['lost']} "
      f"dup {r['deliveries']['duplicates']} reordered {r['deliveries']['reordered']}")
print(f"publish -> delivery ms: p50 {lat.get('p50')} p99 {lat.get('p99')} max {lat.get('max')}")
print(f"closed by the server: {r.get('closeCodes') or 'none'}; connect failures: {r.get('connectFailures') or 'none'}; retried after a retry hint: {r.get('connectRetries', 0)}")
for key in ("connectSeconds", "connectionsPerSecond", "serverCPUMicrosecondsPerConnect", "deliveriesPerSecond", "serverCPUSeconds", "serverCPUMicrosecondsPerDelivery", "serverRSSBytes", "serverBytesPerConnection"):
    if key in r: print(key, r[key])
PY
echo "redis CPU seconds over the run (connects included): $(python3 -c "print(round($redis_cpu_after - $redis_cpu_before, 2))")"
redis-cli -p "$redis_port" info commandstats | grep -E 'cmdstat_(publish|evalsha|eval|subscribe|smembers):' || true
echo "redis commands slower than 10 ms: $(redis-cli -p "$redis_port" slowlog len); latency events over 10 ms: $(redis-cli -p "$redis_port" latency latest | paste -sd' ' -)"
echo "from the workers' log (connections closed by the server are in the bench's report above):"
grep -cE "did not answer within" "$out/herald.log" | sed 's/^/  Redis command timeouts: /' || true
grep -cE "every channel resubscribed" "$out/herald.log" | sed 's/^/  pub\/sub reconnects: /' || true
