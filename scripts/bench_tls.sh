#!/usr/bin/env bash
# TLS against plain (BENCHMARKS.md): alternates `rooms` runs against a release `herald serve`,
# plain then TLS, REPS each (default 3), and prints each run and the medians. Makes a CA and a
# certificate for 127.0.0.1 with openssl in a temporary directory. Run it on a quiet machine.
#   swift build -c release && scripts/bench_tls.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$dir/san.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
herald=.build/release/herald
bench=(--scenario rooms --connections 10000 --rooms 100 --rate 500 --duration 10 --json --no-progress)
for i in $(seq 1 "$reps"); do
  for mode in plain tls; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # --max-connections-per-ip 0: the generator's 127.0.0.2-4 would be capped at 1000 each.
    serve=("$herald" serve --port "$port" --log-level warning --max-connections-per-ip 0); extra=(); scheme=http; curlca=()
    if [ "$mode" = tls ]; then
      serve+=(--tls-cert "$dir/server.pem" --tls-key "$dir/server.key"); extra=(--tls --tls-ca "$dir/ca.pem"); scheme=https; curlca=(--cacert "$dir/ca.pem")
    fi
    "${serve[@]}" > "$dir/serve-$mode-$i.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -s "${curlca[@]}" -o /dev/null "$scheme://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    "$herald" bench --port "$port" --server-pid "$pid" "${bench[@]}" "${extra[@]}" > "$dir/bench-$mode-$i.json" 2> "$dir/bench-$mode-$i.err"
    kill -TERM "$pid"; wait "$pid" || true
    python3 - "$dir/bench-$mode-$i.json" "$mode" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:5} run {sys.argv[3]}: {r.get('serverCPUMicrosecondsPerDelivery'):.2f} us/delivery, p99 {r['latency']['p99']:.1f} ms, "
      f"{(r.get('serverBytesPerConnection') or 0)/1024:.2f} KB/conn, {r.get('connectionsPerSecond'):.0f} conn/s, lost {r.get('lost')}, "
      f"dup {r['deliveries']['duplicates']}, reordered {r['deliveries']['reordered']}", flush=True)
PY
  done
done
python3 - "$dir" "$reps" <<'PY'
import json, statistics, sys
d, reps = sys.argv[1], int(sys.argv[2])
for mode in ("plain", "tls"):
    rs = [json.load(open(f"{d}/bench-{mode}-{i}.json")) for i in range(1, reps + 1)]
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"median {mode:5}: {med(lambda r: r['serverCPUMicrosecondsPerDelivery']):.2f} us/delivery, "
          f"p50 {med(lambda r: r['latency']['p50']):.2f} ms, p99 {med(lambda r: r['latency']['p99']):.1f} ms, "
          f"{med(lambda r: (r.get('serverBytesPerConnection') or 0)/1024):.2f} KB/conn, {med(lambda r: r['connectionsPerSecond']):.0f} conn/s")
PY
