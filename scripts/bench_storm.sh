#!/usr/bin/env bash
# The reconnect storm (BENCHMARKS.md): `herald serve --workers W --redis` holding N connections
# (N users, one connection each) while messages to the users are published at RATE per second;
# KILL_AFTER seconds into publishing one worker is killed with SIGKILL. Its clients reconnect
# with backoff and jitter through the port the workers share (the supervisor restarts the
# worker after 1 s) and resume from their offsets. Prints how long until every client was back,
# the reconnect rate, and whether any confirmed message was lost.
#
#   scripts/bench_storm.sh [CONNECTIONS=95000] [WORKERS=5] [RATE=2000] [DURATION=60] [KILL_AFTER=15]
#
# Needs a release build (swift build -c release --product herald) and redis-server. Results go
# to $OUT (default /tmp/herald-bench-storm). Every process it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-95000}
workers=${2:-5}
rate=${3:-2000}
duration=${4:-60}
kill_after=${5:-15}
herald=.build/release/herald
out=${OUT:-/tmp/herald-bench-storm}
mkdir -p "$out"
. scripts/lib/cluster.sh
start_cluster "$workers" "$out" "$herald"
victim=$(echo "$pids" | head -1)
echo "workers: $(echo $pids | tr '\n' ' ')  killing: $victim  redis: $redis_pid  port: $port"

"$herald" bench --scenario storm --port "$port" --connections "$connections" --rate "$rate" --duration "$duration" \
  --kill-pid "$victim" --kill-after "$kill_after" --publish-connections 2 --drain-timeout 30 --source-addresses 8 \
  --no-progress --json >"$out/bench.json"
python3 - "$out/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("storm") or {}
print(f"connections ok {r['connectionsOK']} failed {r.get('connectionsFailed')} in {r['connectSeconds']:.1f} s ({r['connectionsPerSecond']:.0f}/s)")
print(f"killed pid {s.get('killedPID')} after {s.get('killedAfterSeconds')} s: {s.get('dropped')} clients dropped, {s.get('reconnected')} back, {s.get('abandoned')} gave up")
if s.get("secondsUntilAllBack") is not None:
    print(f"all back within {s['secondsUntilAllBack']:.2f} s of the kill ({s['reconnectsPerSecond']:.0f} reconnects/s)")
print(f"published {r['published']}, confirmed {r['expectedDeliveries']} (unconfirmed: {s.get('publishesUnconfirmed')}); "
      f"confirmed messages lost: {s.get('lost')}; duplicates {r['deliveries']['duplicates']} reordered {r['deliveries']['reordered']}")
print(f"closed by the server: {r.get('closeCodes') or 'none'}; connect retries after a retry hint: {r.get('connectRetries', 0)}")
PY
grep -c "restarting it" "$out/herald.log" | sed 's/^/worker restarts logged: /' || true
