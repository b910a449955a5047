#!/usr/bin/env python3
"""The audit's memory flood (issue 11, H3), measured: a running `herald serve` (without Redis),
its resident memory (VmRSS) before and after
  1. 400 HTTP sends of 1 MB to users who never connected, and
  2. 400 HTTP sends of 1 MB spread over 32 users who are connected (and read everything), so their
     channels keep history up to the node's budget (--history-max-bytes, 64 MiB by default; each
     channel alone would keep 4 MiB, 128 MiB in all).
Prints one JSON object. Bounded: 800 requests, then it stops the server.

  scripts/history_flood.py --herald .build/release/herald [--history-max-bytes N]
"""
import argparse, json, socket, subprocess, sys, threading, time, urllib.request, warnings

from websockets.sync.client import connect

warnings.filterwarnings("ignore", category=DeprecationWarning)
USERS = 32


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--herald", required=True)
    parser.add_argument("--history-max-bytes", type=int)
    args = parser.parse_args()
    port = free_port()
    command = [args.herald, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    if args.history_max_bytes is not None:
        command += ["--history-max-bytes", str(args.history_max_bytes)]
    server = subprocess.Popen(command)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"data": "x" * 1_000_000}).encode()
        figures = {"idle_mib": rss_mib(server.pid)}
        for index in range(400):
            assert post(port, f"/api/users/ghost-{index}/send", body) == 202
        figures["after_400_MB_to_users_never_connected_mib"] = rss_mib(server.pid)

        readers, received = [], [0]
        stop = threading.Event()

        def read(ws):
            while not stop.is_set():
                try:
                    ws.recv(timeout=1)
                except TimeoutError:
                    continue
                except Exception:
                    return
                received[0] += 1
        sockets = []
        for index in range(USERS):
            ws = connect(f"ws://127.0.0.1:{port}/ws?user=reader-{index}", max_size=None)
            sockets.append(ws)
            thread = threading.Thread(target=read, args=(ws,), daemon=True)
            thread.start()
            readers.append(thread)
        for index in range(400):
            assert post(port, f"/api/users/reader-{index % USERS}/send", body) == 202
        deadline = time.time() + 60
        while received[0] < 400 + USERS and time.time() < deadline:  # 8 welcomes
            time.sleep(0.1)
        figures["after_400_MB_to_32_connected_users_mib"] = rss_mib(server.pid)
        figures["history_budget_bytes"] = args.history_max_bytes or 64 << 20
        figures["delivered"] = received[0] - USERS
        stop.set()
        for ws in sockets:
            ws.close()
        print(json.dumps(figures))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
