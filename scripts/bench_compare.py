#!/usr/bin/env python3
"""Runs one `herald bench` scenario against Herald and the baselines, alternating servers
(herald, floor, seed, herald, floor, seed, ...), and prints the median of each figure.

    scripts/bench_compare.py --servers herald,floor --reps 3 -- --scenario rooms --connections 10000 --rooms 100 --rate 500

Everything after `--` goes to `herald bench` (host, port and --server-pid are filled in).
Each server is started fresh for every repetition and stopped after it:
  herald  .build/release/herald serve (build it first: swift build -c release --product herald)
  before  another herald binary (--herald-before PATH, e.g. a build of an earlier commit), to measure a change
          side by side: --servers before,herald,floor
  floor   ../shared/baselines/floor, built with make into a scratch copy
  seed    ../shared/baselines/seed/run.sh PORT 2 (FastAPI + Redis; needs redis-server, creates its venv)
A server may carry a label, KIND@LABEL (`--servers herald,herald@batch,floor`), to run the same
server with other bench arguments: `--bench-arg batch=--batch=100` adds `--batch=100` to the
runs labelled `batch` only.
Results (one JSON per run) go to --out (default /tmp/herald-bench/<timestamp>).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(os.path.dirname(ROOT), "shared", "baselines")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ws_ready(port: int, timeout: float = 60) -> None:
    """Waits until the port accepts TCP connections."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout} s")


def descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        children = []
    for child in children:
        out += descendants(int(child))
    return out


class Server:
    def __init__(self, kind: str, herald: str, herald_args: list[str], scratch: str, before: str | None = None):
        self.kind, self.herald, self.herald_args, self.scratch, self.before = kind, herald, herald_args, scratch, before
        self.proc = None
        self.port = free_port()
        self.log = open(os.path.join(scratch, f"{kind}-{self.port}.log"), "w")

    def start(self) -> None:
        if self.kind in ("herald", "before"):
            if self.kind == "before" and not self.before:
                raise ValueError("--servers before needs --herald-before PATH")
            binary = self.herald if self.kind == "herald" else self.before
            # The generator spreads its connections over 127.0.0.1-4: the per-address cap (1000,
            # against floods from one remote address) would refuse most of them.
            cmd = [binary, "serve", "--port", str(self.port), "--log-level", "warning", "--max-connections-per-ip", "0"] + self.herald_args
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        elif self.kind == "floor":
            floor = os.path.join(self.scratch, "floor")
            if not os.path.exists(os.path.join(floor, "floor")):
                shutil.copytree(os.path.join(BASELINES, "floor"), floor, dirs_exist_ok=True)
                subprocess.run(["make", "-s"], cwd=floor, check=True)
            self.proc = subprocess.Popen([os.path.join(floor, "floor"), str(self.port)], stdout=self.log, stderr=self.log)
        elif self.kind == "seed":
            self.proc = subprocess.Popen(
                [os.path.join(BASELINES, "seed", "run.sh"), str(self.port), "2"],
                stdout=self.log, stderr=self.log, start_new_session=True,
            )
        else:
            raise ValueError(self.kind)
        wait_ws_ready(self.port, 120 if self.kind == "seed" else 30)
        time.sleep(1.0 if self.kind == "seed" else 0.2)  # let uvicorn's workers finish booting

    def pids(self) -> list[int]:
        pids = descendants(self.proc.pid)
        if self.kind == "seed":  # run.sh itself is a shell; measure uvicorn and redis
            pids = [p for p in pids if p != self.proc.pid]
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.kind == "seed":
            os.killpg(self.proc.pid, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


FIGURES = [
    ("deliveries/s", lambda r: r.get("deliveriesPerSecond")),
    ("server CPU µs/delivery", lambda r: r.get("serverCPUMicrosecondsPerDelivery")),
    ("latency p50 ms", lambda r: (r.get("latency") or {}).get("p50")),
    ("latency p99 ms", lambda r: (r.get("latency") or {}).get("p99")),
    ("latency p99.9 ms", lambda r: (r.get("latency") or {}).get("p999")),
    ("latency max ms", lambda r: (r.get("latency") or {}).get("max")),
    ("lost", lambda r: r.get("lost")),
    ("duplicates", lambda r: (r.get("deliveries") or {}).get("duplicates")),
    ("reordered", lambda r: (r.get("deliveries") or {}).get("reordered")),
    ("connections/s", lambda r: r.get("connectionsPerSecond")),
    ("connections ok", lambda r: r.get("connectionsOK")),
    ("server KB/connection", lambda r: (r.get("serverBytesPerConnection") or 0) / 1024 or None),
    ("server RSS MB", lambda r: (r.get("serverRSSBytes") or 0) / 1048576 or None),
    ("server RSS growth MB", lambda r: (r.get("serverRSSGrowthBytes") or 0) / 1048576 or None),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", default="herald,floor")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--herald", default=os.path.join(ROOT, ".build", "release", "herald"))
    ap.add_argument("--herald-before", default=None, help="the herald binary of server kind `before` (an earlier build)")
    ap.add_argument("--herald-arg", action="append", default=[], help="extra argument for herald serve (repeatable)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--bench-arg", action="append", default=[], help="LABEL=ARG: a herald bench argument for the servers labelled LABEL (KIND@LABEL)")
    ap.add_argument("bench", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    bench_args = [a for a in args.bench if a != "--"]
    out = args.out or os.path.join(tempfile.gettempdir(), "herald-bench", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        for kind in args.servers.split(","):
            base, _, label = kind.partition("@")
            server = Server(base, args.herald, args.herald_arg, out, args.herald_before)
            server.start()
            try:
                extra = [a.partition("=")[2] for a in args.bench_arg if label and a.partition("=")[0] == label]
                cmd = [args.herald, "bench", "--port", str(server.port), "--json"] + bench_args + extra
                for pid in server.pids():
                    cmd += ["--server-pid", str(pid)]
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                if run.returncode != 0:
                    print(f"{kind} rep {rep}: bench failed: {run.stderr.strip()[-2000:]}", file=sys.stderr)
                    continue
                report = json.loads(run.stdout)
                results.setdefault(kind, []).append(report)
                with open(os.path.join(out, f"{kind.replace('@', '-')}-{rep}.json"), "w") as f:
                    f.write(run.stdout)
                lat = (report.get("latency") or {}).get("p99")
                print(f"{kind:6} rep {rep}: {report.get('deliveriesPerSecond', 0):9.0f} deliveries/s, "
                      f"cpu {report.get('serverCPUMicrosecondsPerDelivery') or 0:6.2f} µs/delivery, p99 {lat} ms, "
                      f"lost {report.get('lost')}, conn/s {report.get('connectionsPerSecond', 0):.0f}, "
                      f"KB/conn {(report.get('serverBytesPerConnection') or 0) / 1024:.2f}", file=sys.stderr, flush=True)
            finally:
                server.stop()
            time.sleep(1)
    kinds = [k for k in args.servers.split(",") if k in results]
    print(f"\nmedians of {args.reps} runs, alternating {', '.join(kinds)}; herald bench {' '.join(bench_args)}\n")
    print("| figure | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, get in FIGURES:
        cells = []
        for kind in kinds:
            values = [v for v in (get(r) for r in results[kind]) if v is not None]
            cells.append(f"{statistics.median(values):.2f}" if values else "—")
        if any(c != "—" for c in cells):
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
