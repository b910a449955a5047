#!/usr/bin/env python3
"""Browser test of Herald's demo chat page (served at GET /), across a server restart.

    python3 Tests/Browser/chat_test.py --herald PATH_TO_HERALD_BINARY [--cluster] [--tls] [--tokens] [--timeout 60]

Starts `herald serve` on a free port of 127.0.0.1, opens the page in two headless
Chromium sessions (alice and bob), and checks: connecting, joining a room, room
messages, a direct message (delivered to alice, not to bob), presence, and that after a
SIGTERM + restart of the server both pages reconnect and re-join by themselves.

With --cluster it starts a redis-server and two Herald nodes sharing it: alice's page is
on node 1, bob's on node 2, and every message crosses nodes; the restart is node 2's (bob
reconnects, alice stays connected).

With --tokens one node runs with a JWT secret: the page shows token_expiring, refreshes in
place with a pasted token, and stops (without retrying) when the backend revokes its token or
disconnects its user.

With --tls every node serves TLS (`--tls-cert`/`--tls-key`) with a certificate for 127.0.0.1
made by `openssl` from a throw-away CA; the pages are opened at https:// (so the chat runs
over wss://), Chromium trusting that one key through --ignore-certificate-errors-spki-list.

Needs: pip install selenium; apt-get install chromium chromium-driver
(/usr/bin/chromium, /usr/bin/chromedriver). Every wait is bounded by --timeout.
Exit code 0 when every check passed; on a failure it prints the server log and each
browser's log and console, then exits 1.
"""
import argparse
import base64
import os
import shutil
import ssl
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOM = "lobby"


class CheckFailed(Exception):
    pass


class Checks:
    """Counts checks; the first failure ends the run (the later steps depend on it)."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what: str):
        self.passed += 1
        print(f"PASS {what}", flush=True)

    def fail(self, what: str, why: str):
        self.failed += 1
        print(f"FAIL {what}: {why}", flush=True)
        raise CheckFailed(what)

    def that(self, condition: bool, what: str, why: str = "condition is false"):
        if condition:
            self.ok(what)
        else:
            self.fail(what, why)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestCertificate:
    """A CA and a server certificate for 127.0.0.1 and localhost it signs, made with openssl."""

    def __init__(self, directory: str):
        def openssl(*args, **kwargs):
            return subprocess.run(["openssl", *args], check=True, capture_output=True, **kwargs).stdout

        d = lambda name: os.path.join(directory, name)
        self.ca, self.chain, self.key = d("ca.pem"), d("server-chain.pem"), d("server.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", d("ca.key"), "-out", self.ca, "-days", "2",
                "-subj", "/CN=Herald browser test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", *ec, "-keyout", self.key, "-out", d("server.csr"), "-subj", "/CN=localhost")
        with open(d("server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", d("server.csr"), "-CA", self.ca, "-CAkey", d("ca.key"), "-CAcreateserial",
                "-out", d("server.pem"), "-days", "2", "-extfile", d("server.ext"))
        with open(self.chain, "wb") as out:
            for name in ("server.pem", "ca.pem"):
                with open(d(name), "rb") as f:
                    out.write(f.read())
        # base64(SHA-256(SubjectPublicKeyInfo)) of the server key: what Chromium's
        # --ignore-certificate-errors-spki-list takes.
        public_key = openssl("pkey", "-in", self.key, "-pubout", "-outform", "DER")
        digest = openssl("dgst", "-sha256", "-binary", input=public_key)
        self.spki = base64.b64encode(digest).decode()

    def server_arguments(self) -> list:
        return ["--tls-cert", self.chain, "--tls-key", self.key]


class Server:
    """One `herald serve` process at a time, every run appending to the same log file."""

    def __init__(self, binary: str, port: int, log_path: str, extra=(), tls: "TestCertificate | None" = None):
        self.binary, self.port, self.log_path = binary, port, log_path
        self.tls = tls
        self.extra = list(extra) + (tls.server_arguments() if tls else [])
        self.scheme = "https" if tls else "http"
        self.proc = None
        self.runs = 0

    def start(self):
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== herald run {self.runs} =====\n".encode())
            log.flush()
            # The child keeps its own copy of the file descriptor.
            self.proc = subprocess.Popen(
                [self.binary, "serve", "--host", "127.0.0.1", "--port", str(self.port)] + self.extra,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, timeout: float):
        """Polls GET /healthz until it answers 200; raises if the process exits first."""
        url = f"{self.scheme}://127.0.0.1:{self.port}/healthz"
        context = ssl.create_default_context(cafile=self.tls.ca) if self.tls else None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"herald exited with code {code} before /healthz answered")
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:  # refused while it starts up, timeouts
                last = str(e)
            time.sleep(0.1)  # polling a socket: there is no event to wait on
        raise TimeoutError(f"/healthz did not answer 200 within {timeout:.0f} s (last: {last})")

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code; raises subprocess.TimeoutExpired if it does not exit."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(cannot read server log: {e})"


class Page:
    """One headless Chromium session on the demo page, as one user."""

    def __init__(self, label: str, timeout: float, tls: "TestCertificate | None" = None):
        self.label, self.timeout = label, timeout
        self.profile = tempfile.mkdtemp(prefix=f"herald-chrome-{label}-")
        opts = Options()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    f"--user-data-dir={self.profile}",
                    # containers often have a tiny /dev/shm, which crashes Chromium tabs
                    "--disable-dev-shm-usage", "--window-size=1200,900"):
            opts.add_argument(arg)
        if tls:
            # Trusts the test server's key only (the flag needs --user-data-dir, set above).
            opts.add_argument(f"--ignore-certificate-errors-spki-list={tls.spki}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(timeout)

    def open(self, url: str):
        self.driver.get(url)

    # -- reading the page (textContent, so scrolled-away lines count too) --

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def state(self) -> str:
        return self.js("return document.getElementById('state').textContent.trim();")

    def texts(self, selector: str) -> list:
        return self.js(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);",
            selector)

    def messages(self) -> list:
        return self.texts("#log .msg")

    def online(self) -> set:
        return {t.strip() for t in self.texts("#online .user")}

    def room_joined(self, room: str) -> bool:
        return self.js(
            "return Array.from(document.querySelectorAll('#rooms li.joined'))"
            ".some(li => li.dataset.room === arguments[0]);", room)

    # -- acting --

    def fill(self, element_id: str, text: str):
        el = self.driver.find_element(By.ID, element_id)
        el.clear()
        el.send_keys(text)

    def click(self, element_id: str):
        self.driver.find_element(By.ID, element_id).click()

    def wait(self, condition, what: str):
        """Waits for condition(page) to be truthy; returns it, or raises TimeoutError(what)."""
        try:
            return WebDriverWait(self.driver, self.timeout, poll_frequency=0.1).until(
                lambda _driver: condition(self))
        except TimeoutException:
            raise TimeoutError(f"{self.label}: timed out after {self.timeout:.0f} s waiting for {what}") from None

    # -- diagnostics and cleanup --

    def dump(self):
        print(f"----- {self.label}: #state / #error / #log -----")
        try:
            print("state:", self.state())
            print("error:", self.js("return document.getElementById('error').textContent;"))
            for line in self.js("return Array.from(document.querySelectorAll('#log > *'))"
                                ".map(e => (e.dataset.time || '') + ' [' + e.className + '] ' + e.textContent);"):
                print(" ", line)
        except Exception as e:  # the browser may be the thing that broke
            print(f"(cannot read the page: {e})")
        print(f"----- {self.label}: browser console -----")
        try:
            for entry in self.driver.get_log("browser"):
                print(f"  {entry.get('level')} {entry.get('message')}")
        except Exception as e:
            print(f"(no console log: {e})")

    def quit(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def contains(lines: list, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in lines)


def start_redis(log_dir: str, processes: list) -> str:
    """A redis-server on a free port, without persistence; returns its URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", log_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    processes.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)  # polling a socket: there is no event to wait on
    raise TimeoutError("redis-server did not start")


def run(args, checks: Checks, pages: list, server_holder: list, processes: list):
    timeout = args.timeout
    log_dir = tempfile.mkdtemp(prefix="herald-browser-")
    tls = TestCertificate(log_dir) if args.tls else None
    if args.cluster:
        redis = start_redis(log_dir, processes)
        servers = [
            Server(args.herald, free_port(), os.path.join(log_dir, f"herald-n{i}.log"), ["--redis", redis, "--node-id", f"n{i}", "--presence-events", "*", "--presence-window", "300"], tls)
            for i in (1, 2)
        ]
    else:
        servers = [Server(args.herald, free_port(), os.path.join(log_dir, "herald.log"), tls=tls)]
    server_holder.extend(servers)
    # alice's page on the first node, bob's on the last (the same one without --cluster).
    alice_server, bob_server = servers[0], servers[-1]

    # 1. The servers.
    for server in servers:
        server.start()
        try:
            server.wait_healthy(timeout)
        except (RuntimeError, TimeoutError) as e:
            checks.fail("server starts and /healthz answers 200", str(e))
        checks.ok(f"server starts on 127.0.0.1:{server.port} and /healthz answers 200")

    # 2. Two browsers.
    # Each page is in `pages` before it loads anything, so `finally` always quits it.
    alice = Page("alice", timeout, tls)
    pages.append(alice)
    bob = Page("bob", timeout, tls)
    pages.append(bob)
    alice.open(f"{alice_server.scheme}://127.0.0.1:{alice_server.port}/")
    bob.open(f"{bob_server.scheme}://127.0.0.1:{bob_server.port}/")
    checks.ok("two headless Chromium sessions load the demo page" + (" from two nodes" if args.cluster else "")
              + (" over https" if tls else ""))
    # The page is built on the official client: it imports /herald.js and speaks no protocol itself.
    source = alice.js("return document.documentElement.outerHTML;")
    checks.that("from '/herald.js'" in source and "new WebSocket" not in source and "onmessage" not in source,
                "the demo page is built on herald.js (no WebSocket or frame code of its own)")
    loaded = alice.js("return performance.getEntriesByType('resource').some(e => e.name.endsWith('/herald.js'));")
    checks.that(loaded, "the page loaded /herald.js from the server")
    if tls:
        for page in (alice, bob):
            protocol = page.js("return location.protocol;")
            checks.that(protocol == "https:", f"{page.label}'s page is served over https (its WebSocket is wss://)",
                        f"location.protocol is {protocol!r}")

    # 3. Connect.
    for page in (alice, bob):
        page.fill("name", page.label)
        page.click("connect")
    for page in (alice, bob):
        page.wait(lambda p: p.state() == "connected", "#state == connected")
        user = page.js("return document.getElementById('me-user').textContent;")
        checks.that(user == page.label, f"{page.label} is connected as {page.label}",
                    f"welcome shows user {user!r}")

    # 4. Room messages, a direct message, presence.
    for page in (alice, bob):
        page.fill("room", ROOM)
        page.click("join")
        page.wait(lambda p: p.room_joined(ROOM), f"room {ROOM} joined in #rooms")
        checks.ok(f"{page.label} joined {ROOM}")

    alice.fill("message", "hello from alice")
    alice.click("send")
    for page in (bob, alice):
        page.wait(lambda p: contains(p.messages(), f"[{ROOM}]", "alice", "hello from alice"),
                  "the message from alice in #log")
        checks.ok(f"{page.label} received '[{ROOM}] alice: hello from alice'")

    bob.fill("to-user", "alice")
    bob.fill("dm", "psst alice")
    bob.click("send-dm")
    alice.wait(lambda p: contains(p.messages(), "[direct]", "bob", "psst alice"),
               "the direct message from bob in #log")
    checks.ok("alice received '[direct] bob: psst alice'")
    # A delivery to bob's own connection would be queued before anything the server sends
    # him for a later frame, so once bob sees his own next room message, it would be there.
    bob.fill("message", "bob sync")
    bob.click("send")
    bob.wait(lambda p: contains(p.messages(), "bob", "bob sync"), "bob's own room message")
    checks.that(not contains(bob.messages(), "psst alice"),
                "bob did not receive his own direct message to alice",
                f"bob's log: {bob.messages()}")

    for page in (alice, bob):
        page.wait(lambda p: {"alice", "bob"} <= p.online(), "alice and bob in #online")
        checks.ok(f"{page.label} sees alice and bob online in {ROOM}")
        summary = page.js("return document.getElementById('online-summary').textContent;")
        checks.that(summary.endswith("live"), f"{page.label}'s presence is kept by presence events, not polled",
                    f"#online-summary is {summary!r}")

    if args.cluster:
        # A direct message bob sees gives his page a position in his own channel to resume from.
        alice.fill("to-user", "bob")
        alice.fill("dm", "hello bob")
        alice.click("send-dm")
        bob.wait(lambda p: contains(p.messages(), "[direct]", "alice", "hello bob"), "alice's direct message to bob")
        checks.ok("bob received '[direct] alice: hello bob'")

    # 5. Restart bob's server: its pages notice, reconnect by themselves and re-join.
    server = bob_server
    restarted = [page for page in (alice, bob) if (alice_server if page is alice else bob_server) is server]
    try:
        code = server.terminate(timeout)
    except subprocess.TimeoutExpired:
        checks.fail("server exits on SIGTERM", f"still running after {timeout:.0f} s")
    checks.that(code == 0, "server exits with code 0 on SIGTERM", f"exit code {code}")
    for page in restarted:
        page.wait(lambda p: p.state() in ("disconnected", "connecting"), "#state to leave 'connected'")
        checks.ok(f"{page.label} shows the connection as lost")

    if args.cluster:
        # alice's node is still up: what she says while bob's node is down waits in Redis's
        # history, and bob's page recovers it when it re-joins.
        alice.fill("message", "while you were away")
        alice.click("send")
        alice.wait(lambda p: contains(p.messages(), "alice", "while you were away"), "alice's own message")
        alice.fill("to-user", "bob")
        alice.fill("dm", "a direct word while you were away")
        alice.click("send-dm")
    server.start()
    try:
        server.wait_healthy(timeout)
    except (RuntimeError, TimeoutError) as e:
        checks.fail("server restarts on the same port", str(e))
    checks.ok(f"server restarts on port {server.port}")

    for page in (alice, bob):
        page.wait(lambda p: p.state() == "connected", "#state == connected after the restart")
        checks.ok(f"{page.label} is connected after the restart")
    for page in restarted:
        # The restarted server knows no memberships: the page re-joins on welcome.
        page.wait(lambda p: p.room_joined(ROOM), f"room {ROOM} re-joined after the restart")
        checks.ok(f"{page.label} re-joined {ROOM}")

    if args.cluster:
        bob.wait(lambda p: contains(p.messages(), f"[{ROOM}]", "alice", "while you were away"),
                 "the message alice sent while bob's node was down, recovered on re-join")
        checks.ok("bob recovered the message sent while his node was down")
        bob.wait(lambda p: contains(p.messages(), "[direct]", "alice", "a direct word while you were away"),
                 "the direct message alice sent while bob's node was down, resumed on reconnect")
        checks.ok("bob recovered the direct message sent while his node was down")
    bob.fill("message", "back again")
    bob.click("send")
    alice.wait(lambda p: contains(p.messages(), f"[{ROOM}]", "bob", "back again"),
               "the message from bob after the restart")
    checks.ok(f"alice received '[{ROOM}] bob: back again' after the restart")


SECRET = "browser-test-secret-long-enough-for-hs256"
API_KEY = "browser-test-api-key"


def mint(binary: str, user: str, *extra: str) -> str:
    """A client token from `herald token` (the command line users mint test tokens with)."""
    out = subprocess.run([binary, "token", user, "--jwt-secret", SECRET, *extra],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip().splitlines()[-1].strip()


def api(server: "Server", method: str, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def run_tokens(args, checks: Checks, pages: list, server_holder: list):
    """The page with tokens: token_expiring, a refresh in place, a revoked token, a backend disconnect."""
    log_dir = tempfile.mkdtemp(prefix="herald-browser-")
    # Every token shorter-lived than an hour is warned of right after its welcome.
    server = Server(args.herald, free_port(), os.path.join(log_dir, "herald.log"),
                    ["--jwt-secret", SECRET, "--api-key", API_KEY, "--token-expiry-warning", "3600"])
    server_holder.append(server)
    server.start()
    server.wait_healthy(args.timeout)
    checks.ok(f"server with tokens starts on 127.0.0.1:{server.port}")
    page = Page("carol", args.timeout)
    pages.append(page)
    page.open(f"http://127.0.0.1:{server.port}/")
    error = lambda p: p.js("return document.getElementById('error').textContent;") or ""
    logs = lambda p: p.js("return Array.from(document.querySelectorAll('#log > *')).map(e => e.textContent);")

    page.fill("token", mint(args.herald, "carol", "--rooms", ROOM, "--ttl", "600", "--jti", "first"))
    page.click("connect")
    page.wait(lambda p: p.state() == "connected", "#state == connected with a token")
    page.wait(lambda p: "Your token expires at" in error(p), "the token_expiring warning in #error")
    checks.ok("the page shows token_expiring: it asks for a fresh token")

    page.fill("token", mint(args.herald, "carol", "--rooms", ROOM, "--ttl", "900", "--jti", "second"))
    page.js("document.getElementById('token').dispatchEvent(new Event('change'));")
    page.wait(lambda p: contains(logs(p), "token refreshed"), "'token refreshed' in #log")
    checks.that(page.state() == "connected", "a pasted token refreshes the connection in place", f"state {page.state()}")

    checks.that(api(server, "POST", "/api/tokens/second/revoke") == 200, "the backend revokes the token in use")
    page.wait(lambda p: "token revoked" in error(p), "'token revoked' in #error")
    page.wait(lambda p: p.state() == "disconnected", "#state == disconnected")
    checks.ok("a revoked token closes the page's connection with 4001 token revoked, and it does not retry")

    page.fill("token", mint(args.herald, "carol", "--rooms", ROOM, "--ttl", "900", "--jti", "third"))
    page.click("connect")
    page.wait(lambda p: p.state() == "connected", "#state == connected with a new token")
    checks.that(api(server, "DELETE", "/api/users/carol/connections") == 200, "the backend disconnects carol")
    page.wait(lambda p: "Disconnected by the server" in error(p), "the backend's disconnect in #error")
    page.wait(lambda p: p.state() == "disconnected", "#state == disconnected after 4003")
    checks.ok("a backend disconnect (4003) shows on the page, which does not reconnect")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--herald", required=True, help="path to the herald executable")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on every wait, in seconds")
    parser.add_argument("--cluster", action="store_true", help="two nodes sharing a redis-server the test starts")
    parser.add_argument("--tls", action="store_true", help="serve https:// and wss:// with a test certificate made by openssl")
    parser.add_argument("--tokens", action="store_true", help="one node with tokens: expiry warning, refresh, revocation")
    args = parser.parse_args()

    checks = Checks()
    pages: list = []
    server_holder: list = []
    processes: list = []
    failed = False
    try:
        if args.tokens:
            run_tokens(args, checks, pages, server_holder)
        else:
            run(args, checks, pages, server_holder, processes)
    except CheckFailed:
        failed = True
    except Exception as e:  # a timeout or a crash is a failed check too
        failed = True
        checks.failed += 1
        print(f"FAIL {type(e).__name__}: {e}", flush=True)
    finally:
        if failed:
            for server in server_holder:
                print(f"----- herald log ({server.log_path}) -----")
                print(server.log_text())
            for page in pages:
                page.dump()
        for page in pages:
            try:
                page.quit()
            except Exception as e:
                print(f"(quitting {page.label}'s browser: {e})")
        for server in server_holder:
            server.kill()
        for proc in processes:
            proc.kill()
            proc.wait()
            if not failed:
                shutil.rmtree(os.path.dirname(server.log_path), ignore_errors=True)
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
