#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, Herald side by side with the baselines, alternating servers,
# medians of 3 runs. Takes about 35 minutes on 2 cores; run nothing else meanwhile.
#   swift build -c release --product herald && scripts/bench_all.sh > bench-results.md
set -euo pipefail
cd "$(dirname "$0")/.."
compare() { python3 scripts/bench_compare.py "$@"; echo; }
SECRET=$(python3 -c 'print("b" * 48)')

echo "## rooms: 10,000 connections, 100 rooms, 500 messages/s (50,000 deliveries/s), 64-byte data"
compare --servers herald,floor,seed --reps 3 -- --scenario rooms --connections 10000 --rooms 100 --rate 500 --duration 10 --no-progress
echo "## all: 10,000 connections, 100 broadcasts back to back"
compare --servers herald,floor,seed --reps 3 -- --scenario all --connections 10000 --messages 100 --drain-timeout 60 --no-progress
echo "## idle: 19,000 connections held 10 s (Herald heartbeats on, every 25 s by default)"
compare --servers herald,floor,seed --reps 3 -- --scenario idle --connections 19000 --duration 10 --no-progress
echo "## connect: 10,000 connections as fast as accepted (Herald with the JWT check on; the floor has no auth)"
compare --servers herald,floor,seed --reps 3 --herald-arg=--jwt-secret --herald-arg="$SECRET" --herald-arg=--api-key --herald-arg="$SECRET" -- --scenario connect --connections 10000 --jwt-secret "$SECRET" --no-progress
echo "## slow: rooms as above, with the first connection stalled (it stops reading)"
compare --servers herald,floor,seed --reps 3 -- --scenario slow --connections 10000 --rooms 100 --rate 500 --duration 10 --no-progress
echo "## users: 5,000 users with 2 devices each, 2,000 messages/s to users"
compare --servers herald,floor,seed --reps 1 -- --scenario users --connections 10000 --devices 2 --rate 2000 --duration 10 --no-progress
echo "## step ladder: rooms at rising rates (10,000 connections, 100 rooms), one run per step"
for rate in 750 1000 1250 1500; do
  echo "### $rate messages/s offered ($((rate * 100)) deliveries/s)"
  compare --servers herald,floor --reps 1 -- --scenario rooms --connections 10000 --rooms 100 --rate "$rate" --duration 10 --no-progress
done
