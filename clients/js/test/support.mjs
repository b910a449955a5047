// Test support: start herald and redis-server on ephemeral ports, mint tokens, call the
// HTTP API, wait for events with a deadline. Every process started here is killed when the
// test process exits, even after a failure.
import { spawn, execFile } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
/** The server binary: $HERALD_BIN, or the repository's debug build. */
export const HERALD_BIN = process.env.HERALD_BIN || resolve(here, "../../../.build/debug/herald");
export const SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef";
export const API_KEY = "test-api-key";

const children = new Set();
function killAll() {
  for (const child of children) try { child.kill("SIGKILL"); } catch { /* gone */ }
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { killAll(); process.exit(1); });

/** A free TCP port on 127.0.0.1 (for servers that must be restarted on the same port). */
export async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** Spawns a process and resolves once a line of its output matches `ready` (or rejects). */
function spawnUntil(cmd, args, ready, timeoutMs = 15000) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const exited = new Promise((r) => child.once("exit", (code, signal) => { children.delete(child); r({ code, signal }); }));
  let log = "";
  const match = new Promise((resolveMatch, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} not ready in ${timeoutMs} ms:\n${log}`)), timeoutMs);
    const onData = (chunk) => {
      log += chunk;
      if (log.length > 100000) log = log.slice(-50000);
      const m = ready.exec(log);
      if (m) { clearTimeout(timer); resolveMatch(m); }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`${cmd} exited (${code ?? signal}) before ready:\n${log}`)); });
  });
  match.catch(() => {});
  return { child, exited, match, log: () => log };
}

/**
 * Starts `herald serve` on 127.0.0.1 (port 0 unless given) and resolves with
 * {port, ws, http, kill(signal), exited}.
 */
export async function startHerald(args = [], { port = 0 } = {}) {
  const p = spawnUntil(HERALD_BIN, ["serve", "--host", "127.0.0.1", "--port", String(port), ...args], /listening on http:\/\/127\.0\.0\.1:(\d+)/);
  const m = await p.match;
  const bound = Number(m[1]);
  return {
    port: bound,
    ws: `ws://127.0.0.1:${bound}/ws`,
    http: `http://127.0.0.1:${bound}`,
    child: p.child,
    exited: p.exited,
    log: p.log,
    async kill(signal = "SIGKILL") {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
      await p.exited;
    },
  };
}

/** Starts a throw-away redis-server; resolves with {port, url, kill()}. */
export async function startRedis() {
  const port = await freePort();
  const p = spawnUntil("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], /Ready to accept connections/);
  await p.match;
  return { port, url: `redis://127.0.0.1:${port}`, async kill() { p.child.kill("SIGKILL"); await p.exited; } };
}

const execFileP = promisify(execFile);
/** Mints a token with `herald token`. */
export async function mintToken(user, { rooms = "", ttl = 3600, jti, secret = SECRET, info = {} } = {}) {
  const args = ["token", user, "--jwt-secret", secret, "--ttl", String(ttl)];
  if (rooms) args.push("--rooms", rooms);
  if (jti) args.push("--jti", jti);
  for (const [k, v] of Object.entries(info)) args.push("--info", `${k}=${v}`);
  const { stdout } = await execFileP(HERALD_BIN, args);
  return stdout.trim();
}

/** Calls the HTTP API; resolves with {status, body}. */
export async function api(base, method, path, body, key) {
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: res.status, body: json };
}

/** Resolves with the first `event` of `emitter` that satisfies `pred`, or rejects after `ms`. */
export function waitEvent(emitter, event, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${event} event within ${ms} ms`)); }, ms);
    const off = emitter.on(event, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

/** Polls `cond` every 20 ms until true, or rejects after `ms` with `what`. */
export async function until(cond, what = "condition", ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A WebSocket class for the client's `WebSocket` option that counts connection attempts,
 * can simulate a network outage (`offline = true`: connections go to a closed port) and can
 * drop the current connection (`drop()`).
 */
export function gatedWebSocket() {
  const gate = { attempts: 0, offline: false, current: null, urls: [] };
  gate.WebSocket = class extends globalThis.WebSocket {
    constructor(url, protocols) {
      gate.attempts++;
      gate.urls.push(url);
      super(gate.offline ? url.replace(/\/\/[^/]+\//, "//127.0.0.1:9/") : url, protocols);
      gate.current = this;
    }
  };
  gate.drop = () => { try { gate.current?.close(); } catch { /* closed */ } };
  return gate;
}
