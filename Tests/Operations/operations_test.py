#!/usr/bin/env python3
"""What the people who run Herald rely on, checked against real `herald serve` processes
(and a real redis-server on an ephemeral port):

  metrics    /metrics under traffic, parsed with prometheus_client's text parser: values move as
             traffic does (connections, deliveries by scope, publishes by source, the publish
             latency histogram, rate-limit cut-offs, disconnects by code, recoveries); the API
             key guards it; --metrics HOST:PORT moves it to a port of its own
  readiness  /readyz: ready, then failing with a JSON reason during the graceful-shutdown drain
             (--drain-delay) while connections are still served; with --redis, failing while
             Redis is down and ready again when it is back (and the Redis metrics move)
  logs       --log-format json writes one JSON object per line; no token passed as ?token=, no
             API key and no secret appears in any log line at any level, in either format

Usage: python3 Tests/Operations/operations_test.py --herald .build/debug/herald [--only NAME]
Every wait is bounded; every process it starts is stopped.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
import websockets

API_KEY = "ops-test-api-key-0123456789abcdef"
SECRET = "ops-test-jwt-secret-0123456789abcdef0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Herald:
    """A `herald serve` process; its log (stdout and stderr) goes to a file."""

    def __init__(self, binary, *arguments, env=None):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="herald-ops-", suffix=".log", delete=False)
        environment = dict(os.environ)
        environment.update(env or {})
        self.process = subprocess.Popen(
            [binary, "serve", "--host", "127.0.0.1", "--port", str(self.port), *arguments],
            stdout=self.log, stderr=subprocess.STDOUT, env=environment)
        deadline = time.time() + 20
        while time.time() < deadline:
            if "listening on" in self.text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"herald exited with {self.process.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise RuntimeError("herald did not start in 20 s:\n" + self.text())

    def text(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def metrics_port(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            match = re.search(r'metrics_port["=:]+"?(\d+)', self.text())
            if match:
                return int(match.group(1))
            time.sleep(0.05)
        raise RuntimeError("no metrics port in the log:\n" + self.text())

    def url(self, path, port=None):
        return f"http://127.0.0.1:{port or self.port}{path}"

    def ws(self, query):
        return f"ws://127.0.0.1:{self.port}/ws?{query}"

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class Redis:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="herald-ops-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def command(self, *arguments):
        return subprocess.run(["redis-cli", "-p", str(self.port), *arguments], capture_output=True, text=True, timeout=10).stdout

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def http(method, url, body=None, key=None, timeout=10):
    """(status, headers, body text); never raises for an HTTP status."""
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def scrape(url, key=None):
    """The metrics as {(name, frozenset(labels)): value}, parsed by prometheus_client."""
    status, headers, text = http("GET", url, key=key)
    assert status == 200, (status, text)
    assert headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), headers
    samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("  ok:", message)


async def receive_until(socket_, predicate, timeout=10):
    deadline = time.time() + timeout
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise AssertionError("timed out waiting for a frame")
        frame = json.loads(await asyncio.wait_for(socket_.recv(), remaining))
        if predicate(frame):
            return frame


async def eventually(probe, failure, timeout=10, interval=0.05):
    """Calls `probe` until it returns something true (which it returns); fails after `timeout`."""
    deadline = time.time() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.time() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(interval)


def readyz_status(herald, wanted):
    """(status, body) of /readyz when its status is `wanted`, else None."""
    status, _, body = http("GET", herald.url("/readyz"))
    return (status, body) if status == wanted else None


async def drain_until_closed(client, failure, timeout=10):
    """Reads (and drops) frames until the server closes: an unread queue would stop the client
    from reading the close frame."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            await asyncio.wait_for(client.recv(), max(0.01, deadline - time.time()))
    except websockets.ConnectionClosed:
        return
    except asyncio.TimeoutError:
        pass
    raise AssertionError(failure)


async def connect(url):
    client = await websockets.connect(url, open_timeout=10, close_timeout=5)
    welcome = json.loads(await asyncio.wait_for(client.recv(), 10))
    return client, welcome


async def metrics_under_traffic(binary):
    herald = Herald(binary, "--api-key", API_KEY, "--rate-limit", "10", "--rate-burst", "10")
    try:
        metrics_url = herald.url("/metrics")
        status, _, body = http("GET", metrics_url)
        check(status == 401 and json.loads(body)["error"] == "unauthorized", "/metrics without the API key: 401 with a JSON error")
        before, families = scrape(metrics_url, API_KEY)
        documented = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "operations.md"), encoding="utf-8").read()
        for name in families:
            check(name in documented, f"{name} is listed in docs/operations.md")
        check(value(before, "herald_connections") == 0, "no connections at first")

        clients = []
        for user in ["ada", "bob", "cy"]:
            client, welcome = await connect(herald.ws("user=" + user))
            await client.send(json.dumps({"type": "join", "room": "ops", "id": 1}))
            await receive_until(client, lambda f: f.get("type") == "joined")
            clients.append(client)
        for n in range(10):
            status, _, _ = http("POST", herald.url("/api/rooms/ops/publish"), {"data": {"n": n}}, key=API_KEY)
            assert status == 202
        for n in range(5):
            assert http("POST", herald.url("/api/users/ada/send"), {"data": {"n": n}}, key=API_KEY)[0] == 202
        for n in range(2):
            assert http("POST", herald.url("/api/broadcast"), {"data": {"n": n}}, key=API_KEY)[0] == 202
        await clients[1].send(json.dumps({"type": "publish", "room": "ops", "data": "from bob", "id": 2}))
        expected = {"ada": 10 + 5 + 2 + 1, "bob": 10 + 2 + 1, "cy": 10 + 2 + 1}
        for client, user in zip(clients, ["ada", "bob", "cy"]):
            for _ in range(expected[user]):
                await receive_until(client, lambda f: f.get("type") == "message")

        during, _ = scrape(metrics_url, API_KEY)
        check(value(during, "herald_connections") == 3, "herald_connections is 3 with three clients")
        check(value(during, "herald_users_online") == 3, "herald_users_online is 3")
        check(value(during, "herald_rooms_local") == 1, "herald_rooms_local is 1")
        check(value(during, "herald_connections_opened_total") - value(before, "herald_connections_opened_total") == 3, "3 connections opened")
        check(value(during, "herald_deliveries_total", scope="room") - value(before, "herald_deliveries_total", scope="room") == 33,
              "33 room deliveries (11 messages x 3 members)")
        check(value(during, "herald_deliveries_total", scope="user") - value(before, "herald_deliveries_total", scope="user") == 5, "5 user deliveries")
        check(value(during, "herald_deliveries_total", scope="all") - value(before, "herald_deliveries_total", scope="all") == 6, "6 broadcast deliveries")
        check(value(during, "herald_publishes_total", source="http") - value(before, "herald_publishes_total", source="http") == 17, "17 publishes from HTTP")
        check(value(during, "herald_publishes_total", source="websocket") - value(before, "herald_publishes_total", source="websocket") == 1,
              "1 publish from WebSocket")
        check(value(during, "herald_messages_total") - value(before, "herald_messages_total") == 18, "18 messages handed to the node")
        count = value(during, "herald_publish_latency_seconds_count") - value(before, "herald_publish_latency_seconds_count")
        check(count == 18, f"the publish latency histogram counted 18 messages ({count})")
        inf = value(during, "herald_publish_latency_seconds_bucket", le="+Inf")
        check(inf == value(during, "herald_publish_latency_seconds_count"), "its +Inf bucket equals its count")
        check(value(during, "herald_frames_received_total") - value(before, "herald_frames_received_total") >= 4, "frames received moved (3 joins, 1 publish)")
        check(value(during, "herald_outbound_queued_bytes") >= 0, "herald_outbound_queued_bytes is exported")
        check(value(during, "process_resident_memory_bytes") > 1_000_000, "process_resident_memory_bytes is the process's memory")
        check(value(during, "herald_ready") == 1, "herald_ready is 1")

        # A client that floods past the rate limit: refused frames, then a 1008 cut-off.
        flooder, _ = await connect(herald.ws("user=flood"))
        for n in range(40):
            try:
                await flooder.send(json.dumps({"type": "ping", "id": n}))
            except websockets.ConnectionClosed:
                break
        await drain_until_closed(flooder, "the flooding client was not closed")
        check(flooder.close_code == 1008, "the flooding client was closed with 1008")
        # A client that closes normally, and two that ask to recover from positions.
        await clients[2].close()
        epoch_client, welcome = await connect(herald.ws("user=cy&since_offset=0&since_epoch=gone"))
        invalid_client, invalid_welcome = await connect(herald.ws("user=cy&since_offset=x&since_epoch=e"))
        def disconnects_counted():
            samples, _ = scrape(metrics_url, API_KEY)
            return samples if value(samples, "herald_disconnects_total", code="1008") >= 1 and value(samples, "herald_connections") == 4 else None
        after = await eventually(disconnects_counted, "the disconnects were not counted")
        check(value(after, "herald_rate_limited_frames_total") >= 11, "rate-limited frames counted")
        check(value(after, "herald_rate_limit_disconnects_total") == 1, "one rate-limit cut-off counted")
        check(value(after, "herald_disconnects_total", code="1008") == 1, "herald_disconnects_total{code=1008} is 1")
        closed = sum(v for (name, labels), v in after.items() if name == "herald_disconnects_total")
        check(closed == 2, f"two disconnects in all ({closed})")
        check(value(after, "herald_recoveries_total", result="invalid_position") == 1, "a recovery from a malformed position: invalid_position")
        recovered = value(after, "herald_recoveries_total", result="recovered") + value(after, "herald_recoveries_total", result="epoch_changed")
        check(recovered == 1, "a recovery from another epoch was counted")
        for client in [clients[0], clients[1], epoch_client, invalid_client]:
            await client.close()
    finally:
        herald.stop()


async def metrics_on_own_port(binary):
    herald = Herald(binary, "--api-key", API_KEY, "--metrics", "127.0.0.1:0")
    try:
        port = herald.metrics_port()
        status, _, _ = http("GET", herald.url("/metrics"), key=API_KEY)
        check(status == 404, "--metrics HOST:PORT: /metrics is gone from the public port")
        samples, _ = scrape(herald.url("/metrics", port))
        build = [(dict(labels), v) for (name, labels), v in samples.items() if name == "herald_build_info"]
        check(len(build) == 1 and build[0][1] == 1 and build[0][0].get("version"), "herald_build_info on the metrics port, without a key")
        status, _, body = http("GET", herald.url("/readyz", port))
        check(status == 200 and json.loads(body)["status"] == "ready", "/readyz on the metrics port too")
    finally:
        herald.stop()


async def readiness_drain(binary):
    herald = Herald(binary, "--drain-delay", "3")
    try:
        status, _, body = http("GET", herald.url("/readyz"))
        reply = json.loads(body)
        check(status == 200 and reply["status"] == "ready" and reply["reasons"] == [], "/readyz: 200 ready")
        check(http("GET", herald.url("/healthz"))[0] == 200, "/healthz: 200")
        client, _ = await connect(herald.ws("user=ada"))
        started = time.time()
        herald.process.send_signal(signal.SIGTERM)
        _, body = await eventually(lambda: readyz_status(herald, 503), "/readyz did not fail after SIGTERM", 5, 0.02)
        reply = json.loads(body)
        check(reply["status"] == "not_ready" and any("draining" in r for r in reply["reasons"]), "/readyz: 503 with reason draining after SIGTERM")
        check(http("GET", herald.url("/healthz"))[0] == 200, "/healthz still 200 while draining")
        await client.send(json.dumps({"type": "ping", "id": 7}))
        pong = await receive_until(client, lambda f: f.get("id") == 7, 5)
        check(time.time() - started < 3, "connections are still served during the drain")
        await drain_until_closed(client, "the connection was not closed after the drain")
        waited = time.time() - started
        check(client.close_code == 1012 and waited >= 2.5, f"then closed with 1012 after the drain delay ({waited:.1f} s)")
        check(herald.process.wait(15) == 0, "the node exits 0")
    finally:
        herald.stop()


async def readiness_with_redis(binary):
    redis = Redis()
    herald = None
    try:
        herald = Herald(binary, "--redis", f"redis://127.0.0.1:{redis.port}", "--api-key", API_KEY)
        status, _, body = http("GET", herald.url("/readyz"))
        check(status == 200, "/readyz with Redis up: 200")
        # The ingest queue: one good entry, one that cannot be published.
        redis.command("XADD", "herald:ingest", "*", "target", "all", "data", '{"x":1}')
        redis.command("XADD", "herald:ingest", "*", "target", "nowhere", "data", "1")
        def ingest_counted():
            samples, _ = scrape(herald.url("/metrics"), API_KEY)
            counted = value(samples, "herald_publishes_total", source="ingest") >= 1 and value(samples, "herald_ingest_dead_letters_total") >= 1
            return samples if counted else None
        samples = await eventually(ingest_counted, "the ingest entries were not counted", 10, 0.1)
        check(True, "ingest: one publish and one dead letter counted")
        check(value(samples, "herald_redis_command_duration_seconds_count") > 0, "Redis command durations are measured")
        check(value(samples, "herald_broker_connected") == 1, "herald_broker_connected is 1")
        redis.kill()
        _, body = await eventually(lambda: readyz_status(herald, 503), "/readyz stayed 200 with Redis down")
        reply = json.loads(body)
        check(any("Redis" in r for r in reply["reasons"]), f"/readyz: 503 while Redis is down ({reply['reasons'][0]})")
        samples, _ = scrape(herald.url("/metrics"), API_KEY)
        check(value(samples, "herald_ready") == 0 and value(samples, "herald_broker_connected") == 0, "herald_ready and herald_broker_connected are 0")
        # A publish while Redis is down: refused (503), and counted as a broker failure and a Redis error.
        status, _, _ = http("POST", herald.url("/api/rooms/r/publish"), {"data": 1}, key=API_KEY)
        check(status == 503, "a publish while Redis is down is answered 503")
        down, _ = scrape(herald.url("/metrics"), API_KEY)
        check(value(down, "herald_broker_publish_failures_total") - value(samples, "herald_broker_publish_failures_total") >= 1,
              "herald_broker_publish_failures_total counted it")
        check(value(down, "herald_redis_command_errors_total") - value(samples, "herald_redis_command_errors_total") >= 1,
              "herald_redis_command_errors_total counted it")
        redis = Redis(redis.port)
        await eventually(lambda: readyz_status(herald, 200), "/readyz did not come back with Redis", 20, 0.1)
        check(True, "/readyz: 200 again once Redis is back and resubscribed")
        samples, _ = scrape(herald.url("/metrics"), API_KEY)
        check(value(samples, "herald_broker_reconnects_total") >= 1, "herald_broker_reconnects_total counted the reconnect")
    finally:
        if herald:
            herald.stop()
        redis.kill()


def mint(binary, user):
    return subprocess.run([binary, "token", user, "--jwt-secret", SECRET, "--rooms", "*"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()


async def logs_never_hold_credentials(binary):
    token = mint(binary, "ada")
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    secrets = {"token": token, "forged token": forged, "token signature": token.split(".")[-1], "API key": API_KEY, "JWT secret": SECRET}
    for log_format in ["json", "text"]:
        herald = Herald(binary, "--jwt-secret", SECRET, "--api-key", API_KEY, "--log-level", "trace", "--log-format", log_format)
        try:
            client, welcome = await connect(herald.ws("token=" + token))
            assert welcome["type"] == "welcome", welcome
            await client.send(json.dumps({"type": "join", "room": "r", "id": 1}))
            await receive_until(client, lambda f: f.get("id") == 1)
            await client.close()
            try:
                refused = await websockets.connect(herald.ws("token=" + forged), open_timeout=10)
                await asyncio.wait_for(refused.wait_closed(), 10)
            except websockets.InvalidStatus:
                pass
            http("GET", herald.url("/ws?token=" + token))
            http("GET", herald.url("/nowhere?token=" + token))
            http("POST", herald.url("/api/rooms/r/publish"), {"data": 1}, key=API_KEY)
            http("POST", herald.url("/api/rooms/r/publish"), {"data": 1}, key="wrong-" + API_KEY)
            http("GET", herald.url("/api/stats"), key=API_KEY)
        finally:
            herald.stop()
        text = herald.text()
        lines = [line for line in text.splitlines() if line.strip()]
        check(len(lines) >= 4 and "connection open" in text and "connection refused" in text, f"{log_format}: {len(lines)} log lines, the connections logged")
        if log_format == "json":
            for line in lines:
                entry = json.loads(line)
                for field in ["time", "level", "message", "node"]:
                    assert field in entry, (field, line)
            opened = [json.loads(line) for line in lines if '"connection open"' in line]
            check(opened and opened[0].get("user") == "ada" and opened[0].get("connection"), "json: every line is one JSON object; connection and user are fields")
            closed = [json.loads(line) for line in lines if '"connection closed"' in line]
            check(closed and "code" in closed[0], "json: a closed connection carries its code")
        for what, secret in secrets.items():
            check(secret not in text, f"{log_format}: the {what} appears in no log line")


TESTS = {
    "metrics": metrics_under_traffic,
    "metrics-port": metrics_on_own_port,
    "drain": readiness_drain,
    "redis": readiness_with_redis,
    "logs": logs_never_hold_credentials,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--herald", required=True)
    parser.add_argument("--only", choices=sorted(TESTS))
    arguments = parser.parse_args()
    failed = 0
    for name, test in TESTS.items():
        if arguments.only and name != arguments.only:
            continue
        print(f"{name}:")
        try:
            asyncio.run(asyncio.wait_for(test(arguments.herald), 120))
        except Exception as error:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"  FAILED: {type(error).__name__}: {error}")
    total = len(TESTS) if not arguments.only else 1
    print(f"operations: {total - failed}/{total} passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
