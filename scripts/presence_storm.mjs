#!/usr/bin/env node
// What presence events cost when many members of one room reconnect at once.
//
//   node --experimental-websocket scripts/presence_storm.mjs [--herald .build/release/herald]
//        [--members 10000] [--reconnects 1000] [--nodes 1|2] [--window 1000] [--presence on|off]
//
// Starts `herald serve` (one node, or two sharing a redis-server it starts) on loopback, opens
// one connection per member (asking for presence events) and joins them all to one room. Then
// `--reconnects` of them close and connect again, spread over one second, and the script waits
// until every member saw the last change settle. It prints the presence frames and bytes the
// members received, the nodes' CPU time (and Redis's) over the storm, and what one frame per
// change per member would have been. Every process it starts is stopped at the end.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const HERALD = args.herald || ".build/release/herald";
const MEMBERS = Number(args.members || 10000);
const RECONNECTS = Number(args.reconnects || 1000);
const NODES = Number(args.nodes || 1);
const WINDOW = Number(args.window || 1000);
const ROOM = "big";
// --presence off: the same storm without presence events, to see what they add.
const EVENTS = (args.presence || "on") !== "off";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const freePort = () => new Promise((res) => { const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); }); });
const children = [];
function start(cmd, argv, ready) {
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise((res, rej) => {
    let log = "";
    const on = (d) => { log += d; if (ready.test(log)) res(child); };
    child.stdout.on("data", on);
    child.stderr.on("data", on);
    child.on("exit", (code) => rej(new Error(`${cmd} exited (${code}): ${log.slice(-500)}`)));
  });
}
/** user+system CPU seconds of a process, from /proc. */
function cpu(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
process.on("exit", () => { for (const c of children) try { c.kill("SIGKILL"); } catch {} });

const common = ["--max-connections-per-ip", "0", "--presence-events", EVENTS ? ROOM : "none", "--presence-window", String(WINDOW), "--rate-limit", "1000"];
let redisPort;
if (NODES > 1) {
  redisPort = await freePort();
  await start("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], /Ready to accept connections/);
  common.push("--redis", `redis://127.0.0.1:${redisPort}`);
}
const nodes = [];
for (let i = 0; i < NODES; i++) {
  const port = await freePort();
  const child = await start(HERALD, ["serve", "--port", String(port), "--node-id", `n${i}`, ...common], /listening on/);
  nodes.push({ port, child });
}

let frames = 0, bytes = 0, states = 0;
let lastChangeAt = 0;
function open(i) {
  const node = nodes[i % nodes.length];
  return new Promise((res, rej) => {
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/ws?user=u${i}&presence_events=true`);
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "welcome") ws.send(JSON.stringify({ type: "join", room: ROOM, id: 1 }));
      else if (f.type === "joined") res(ws);
      else if (f.type === "presence_state") states++;
      else if (f.type === "presence_change") { frames++; bytes += e.data.length; lastChangeAt = Date.now(); }
    };
    ws.onerror = () => rej(new Error(`connection ${i} failed`));
  });
}
async function openAll(indices, batch = 250) {
  const sockets = [];
  for (let k = 0; k < indices.length; k += batch) sockets.push(...(await Promise.all(indices.slice(k, k + batch).map(open))));
  return sockets;
}

const sockets = await openAll([...Array(MEMBERS).keys()]);
// Let the joins' own changes settle, then count the storm only.
await sleep(3 * WINDOW + 500);
frames = 0; bytes = 0;
const cpuBefore = nodes.map((n) => cpu(n.child.pid));
const redisBefore = redisPort ? cpu(children[0].pid) : 0;
const started = Date.now();
// The storm: RECONNECTS members close and come back, spread over one second.
// Spread over the nodes: member i is on node i % NODES.
const victims = [...Array(RECONNECTS).keys()].map((k) => Math.min(MEMBERS - 1, Math.floor((k * MEMBERS) / RECONNECTS) + (k % NODES)));
await Promise.all(victims.map(async (i, k) => {
  await sleep((k * 1000) / RECONNECTS);
  sockets[i].close();
  await sleep(20);
  sockets[i] = await open(i);
}));
const stormMs = Date.now() - started;
// Settled: no presence frame for three windows (and at least the presence TTL's heartbeat on a cluster).
lastChangeAt = Date.now();
while (Date.now() - lastChangeAt < 3 * WINDOW + 500) await sleep(100);
const cpuSeconds = nodes.map((n, i) => cpu(n.child.pid) - cpuBefore[i]);
const redisSeconds = redisPort ? cpu(children[0].pid) - redisBefore : 0;
const naive = 2 * RECONNECTS * MEMBERS;
console.log(JSON.stringify({
  members: MEMBERS, reconnects: RECONNECTS, nodes: NODES, presenceEvents: EVENTS, windowMs: WINDOW, stormMs,
  presenceFrames: frames, presenceBytes: bytes, framesPerMember: +(frames / MEMBERS).toFixed(2),
  oneFramePerChange: naive, ratio: +(naive / Math.max(frames, 1)).toFixed(0),
  nodeCpuSeconds: cpuSeconds.map((s) => +s.toFixed(2)), redisCpuSeconds: +redisSeconds.toFixed(2),
}));
for (const ws of sockets) ws.close();
for (const c of children) c.kill("SIGKILL");
process.exit(0);
