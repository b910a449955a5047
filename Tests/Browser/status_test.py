#!/usr/bin/env python3
"""The live status page (/status) in headless Chromium, on a two-node cluster sharing a real
redis-server, under traffic:

  - the page asks for the API key (a wrong one is refused) and keeps it in memory only: no
    cookie, no localStorage, no sessionStorage, and a reload asks again;
  - both nodes are listed (their figures come through Redis), with connections, users, rooms,
    broker state and readiness;
  - while clients on both nodes receive messages published at a steady rate, deliveries/s and
    publishes/s show moving numbers and the charts' pixels change between refreshes.

Usage: python3 Tests/Browser/status_test.py --herald .build/debug/herald [--screenshot FILE]
Every wait is bounded; every process it starts is stopped.
"""

import argparse
import json
import os
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Operations"))
from operations_test import Herald, Redis, http  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

KEY = "status-test-api-key-0123456789abcdef"
# websockets' synchronous connect warns unless used as a context manager; these sockets live
# as long as the traffic does and are closed by Traffic.close().
warnings.filterwarnings("ignore", category=DeprecationWarning)


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("  ok:", message)


def wait(condition, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out: " + what)


class Traffic:
    """Clients on both nodes in room `live`, and a publisher posting to it at `rate` per second."""

    def __init__(self, nodes, clients_per_node=3, rate=40):
        self.stop = threading.Event()
        self.received = 0
        self.lock = threading.Lock()
        self.threads = []
        self.sockets = []
        for index, node in enumerate(nodes):
            for n in range(clients_per_node):
                user = f"viewer{index}-{n}"
                assert http("PUT", node.url(f"/api/rooms/live/members/{user}"), key=KEY)[0] == 200
                socket = connect(node.ws("user=" + user), open_timeout=10)
                self.sockets.append(socket)
                self.threads.append(threading.Thread(target=self.read, args=(socket,), daemon=True))
        self.threads.append(threading.Thread(target=self.publish, args=(nodes[-1], rate), daemon=True))
        for thread in self.threads:
            thread.start()

    def read(self, socket):
        while not self.stop.is_set():
            try:
                frame = json.loads(socket.recv(timeout=0.5))
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - closed at the end
                return
            if frame.get("type") == "message":
                with self.lock:
                    self.received += 1

    def publish(self, node, rate):
        n = 0
        while not self.stop.is_set():
            http("POST", node.url("/api/rooms/live/publish"), {"data": {"n": n}}, key=KEY)
            n += 1
            time.sleep(1 / rate)

    def close(self):
        self.stop.set()
        for socket in self.sockets:
            socket.close()
        for thread in self.threads:
            thread.join(5)


def browser():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    return driver


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--herald", required=True)
    parser.add_argument("--screenshot", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "herald-status.png"))
    arguments = parser.parse_args()
    redis = Redis()
    nodes, driver, traffic = [], None, None
    try:
        for name in ["n1", "n2"]:
            nodes.append(Herald(arguments.herald, "--redis", f"redis://127.0.0.1:{redis.port}", "--api-key", KEY, "--node-id", name))
        driver = browser()
        js = driver.execute_script
        driver.get(nodes[0].url("/status"))
        wait(lambda: js("return !document.getElementById('login').hidden"), "the login form")
        check(js("return document.getElementById('dashboard').hidden"), "without the key the page shows only the login form")

        def log_in(key):
            js("document.getElementById('key').value = arguments[0]; document.getElementById('login').requestSubmit();", key)

        log_in("not-the-key")
        wait(lambda: js("return document.getElementById('login-error').textContent") == "wrong API key", "the wrong key refused")
        check(True, "a wrong key is refused on the page")
        log_in(KEY)
        wait(lambda: js("return !document.getElementById('dashboard').hidden"), "the dashboard")
        check(js("return document.cookie") == "", "no cookie")
        check(js("return localStorage.length + sessionStorage.length") == 0, "nothing in localStorage or sessionStorage")
        check(js("return document.getElementById('key').value") == "", "the key field is cleared")

        rows = wait(lambda: js("return [...document.querySelectorAll('#nodes tr')].map(r => r.dataset.node)") if js(
            "return document.querySelectorAll('#nodes tr').length") == 2 else None, "both nodes in the table")
        check(rows == ["n1", "n2"], f"both nodes of the cluster are listed ({rows})")
        broker = js("return [...document.querySelectorAll('#nodes tr')].map(r => r.children[2].textContent)")
        check(broker == ["connected", "connected"], "each node's broker is connected")

        traffic = Traffic(nodes)
        def moving():
            text = js("return document.getElementById('deliveries').textContent")
            try:
                return float(text.replace("k", "e3")) > 0 and text
            except ValueError:
                return None
        first = wait(moving, "deliveries/s above 0 under traffic", 30)
        check(True, f"deliveries/s under traffic: {first}")
        connections = int(js("return document.getElementById('connections').textContent"))
        check(connections == 6, f"6 connections across both nodes ({connections})")
        publishes = js("return document.getElementById('publishes').textContent")
        check(float(publishes) > 0, f"publishes/s: {publishes}")
        charts = ["chart-connections", "chart-deliveries", "chart-publishes"]
        before = js("return arguments[0].map(id => document.getElementById(id).toDataURL())", charts)
        updates = int(js("return document.body.dataset.updates"))
        wait(lambda: int(js("return document.body.dataset.updates")) >= updates + 2, "two more refreshes", 10)
        after = js("return arguments[0].map(id => document.getElementById(id).toDataURL())", charts)
        for name, a, b in zip(charts, before, after):
            check(a != b, f"{name} was redrawn with new points")
        blank = js("""
            const c = document.getElementById('chart-deliveries');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let inked = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) inked++;
            return inked;""")
        check(blank > 50, f"the deliveries chart has a line ({blank} pixels inked)")
        second = js("return document.getElementById('deliveries').textContent")
        rows_text = js("return [...document.querySelectorAll('#nodes tr')].map(r => [...r.children].map(c => c.textContent))")
        print("  nodes table:", rows_text)
        driver.save_screenshot(arguments.screenshot)
        print(f"  screenshot: {arguments.screenshot} (deliveries/s {first} then {second})")
        with traffic.lock:
            check(traffic.received > 0, f"the clients received {traffic.received} messages")

        driver.refresh()
        wait(lambda: js("return !document.getElementById('login').hidden"), "the login form after a reload")
        check(True, "a reload asks for the key again (it was in memory only)")
        print("status page: passed")
        return 0
    except Exception as error:  # noqa: BLE001
        print(f"status page: FAILED: {type(error).__name__}: {error}")
        for node in nodes:
            print("---- log of", node.port)
            print(node.text()[-3000:])
        return 1
    finally:
        if traffic:
            traffic.close()
        if driver:
            driver.quit()
        for node in nodes:
            node.stop()
        redis.kill()


if __name__ == "__main__":
    sys.exit(main())
