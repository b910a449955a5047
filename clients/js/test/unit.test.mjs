// Fast tests without a server: backoff, de-duplication, hostile frames, requests, close
// codes, heartbeat, resumption, acknowledgements. A fake WebSocket plays the server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald, HeraldError, backoffDelay, retryHintDelay } from "../herald.js";

/** A fake WebSocket: records what the client sends; the test plays the server. */
function fakeServer() {
  const env = { sockets: [], get ws() { return this.sockets.at(-1); } };
  env.WebSocket = class {
    constructor(url) { this.url = url; this.sent = []; this.closed = null; env.sockets.push(this); }
    send(text) { if (this.closed) throw new Error("closed"); this.sent.push(JSON.parse(text)); }
    close(code, reason) { this.closed = { code, reason }; }
    // Test side:
    frame(obj) { this.onmessage?.({ data: typeof obj === "string" ? obj : JSON.stringify(obj) }); }
    serverClose(code, reason = "") { this.onclose?.({ code, reason }); }
    welcome(extra = {}) { this.frame({ type: "welcome", user: "u", connection: "c-" + env.sockets.length, node: "n", heartbeat: 25, ...extra }); }
    last(type) { return this.sent.filter((f) => f.type === type).at(-1); }
  };
  return env;
}
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function connected(opts = {}) {
  const env = fakeServer();
  const client = new Herald("ws://x/ws", { user: "u", WebSocket: env.WebSocket, minReconnectDelay: 1, maxReconnectDelay: 5, ...opts });
  const errors = [];
  client.on("error", (e) => { errors.push(e); });
  const p = client.connect();
  await tick();
  env.ws.welcome();
  await p;
  return { env, client, errors };
}

test("backoff: full jitter within min(cap, base*2^attempt)", () => {
  for (let a = 0; a < 40; a++) {
    assert.equal(backoffDelay(a, 250, 8000, () => 0), 0);
    assert.equal(backoffDelay(a, 250, 8000, () => 0.999999), Math.floor(0.999999 * Math.min(8000, 250 * 2 ** a)));
  }
  assert.equal(retryHintDelay("retry in 3 s: cannot set the connection up", () => 0), 1500);
  assert.equal(retryHintDelay("retry in 3 s: x", () => 1), 4500);
  assert.equal(retryHintDelay("slow consumer"), null);
});

test("credentials and the user channel's position go in the URL", async () => {
  const { env, client } = await connected();
  assert.equal(env.ws.url, "ws://x/ws?user=u&since=latest&presence_events=true");
  env.ws.frame({ type: "message", scope: "user", offset: 7, epoch: "e 1", data: 1 });
  env.ws.serverClose(1012, "server shutting down");
  await tick(20);
  assert.equal(env.ws.url, "ws://x/ws?user=u&since_offset=7&since_epoch=e%201&presence_events=true");
  client.close();
});

test("rooms are re-joined with since after a reconnect; queued requests follow", async () => {
  const { env, client } = await connected();
  const room = client.room("lobby");
  const joined = room.join();
  env.ws.frame({ type: "joined", room: "lobby", id: env.ws.last("join").id });
  await joined;
  env.ws.frame({ type: "message", scope: "room", room: "lobby", offset: 5, epoch: "E", data: "x" });
  env.ws.serverClose(1006, "");
  const pub = room.publish("queued");
  await tick(20);
  assert.equal(env.ws.sent.length, 0, "nothing is sent before the welcome");
  env.ws.welcome();
  assert.deepEqual(env.ws.sent.map((f) => f.type), ["join", "publish"]);
  assert.deepEqual(env.ws.sent[0].since, { offset: 5, epoch: "E" });
  env.ws.frame({ type: "ok", id: env.ws.sent[1].id });
  assert.equal((await pub).type, "ok");
  client.close();
});

test("live messages that come before a resuming join's reply do not skip the replay", async () => {
  const { env, client } = await connected();
  const room = client.room("lobby");
  const seen = [];
  room.on("message", (m) => { seen.push(m.offset); });
  const joined = room.join();
  env.ws.frame({ type: "joined", room: "lobby", id: env.ws.last("join").id, offset: 0, epoch: "E" });
  await joined;
  env.ws.frame({ type: "message", scope: "room", room: "lobby", offset: 1, epoch: "E", data: 1 });
  env.ws.serverClose(1012, "restart");
  await tick(20);
  env.ws.welcome();
  assert.deepEqual(env.ws.last("join").since, { offset: 1, epoch: "E" });
  // The membership outlived the connection: a live message arrives before the reply.
  env.ws.frame({ type: "message", scope: "room", room: "lobby", offset: 4, epoch: "E", data: 4 });
  env.ws.frame({ type: "joined", room: "lobby", id: env.ws.last("join").id, recovered: true, offset: 4, epoch: "E" });
  for (const n of [2, 3, 4]) env.ws.frame({ type: "message", scope: "room", room: "lobby", offset: n, epoch: "E", data: n });
  assert.deepEqual(seen, [1, 2, 3, 4]);
  client.close();
});

test("ack:true messages: a failed handler's message is handed over again; one resent after higher live offsets is not dropped", async () => {
  const { env, client } = await connected();
  const seen = [];
  let fail = true;
  client.on("message", (m) => {
    seen.push(m.offset);
    if (m.needsAck && fail) throw new Error("handler failed");
  });
  env.ws.frame({ type: "message", scope: "user", ack: true, offset: 1, epoch: "E", data: "invoice" });
  await tick(10);
  assert.equal(env.ws.last("ack"), undefined, "a failed handler leaves it unacknowledged");
  env.ws.serverClose(1012, "restart");
  await tick(20);
  env.ws.welcome();
  fail = false;
  // The server resends unacknowledged messages after the live ones of the connection's setup.
  env.ws.frame({ type: "message", scope: "user", offset: 5, epoch: "E", data: "live" });
  env.ws.frame({ type: "message", scope: "user", ack: true, offset: 1, epoch: "E", data: "invoice" });
  env.ws.frame({ type: "message", scope: "user", ack: true, offset: 3, epoch: "E", data: "bill" });
  await tick(10);
  assert.deepEqual(seen, [1, 5, 1, 3]);
  assert.deepEqual(env.ws.sent.filter((f) => f.type === "ack").map((f) => f.offset), [1, 3]);
  for (const ack of env.ws.sent.filter((f) => f.type === "ack")) env.ws.frame({ type: "ok", id: ack.id });
  await tick(10);
  // Acknowledged: a later resend is confirmed again, not handed over.
  env.ws.frame({ type: "message", scope: "user", ack: true, offset: 3, epoch: "E", data: "bill" });
  await tick(10);
  assert.deepEqual(seen, [1, 5, 1, 3]);
  client.close();
});

test("leaving a room forgets its position; joined rooms keep theirs when positions overflow", async () => {
  const { env, client } = await connected({ maxPositions: 3 });
  const lobby = client.room("lobby");
  lobby.join().catch(() => {});
  env.ws.frame({ type: "joined", room: "lobby", id: env.ws.last("join").id, offset: 4, epoch: "E" });
  for (const r of ["a", "b", "c", "d"]) {
    client.room(r).join().catch(() => {});
    env.ws.frame({ type: "joined", room: r, id: env.ws.last("join").id, offset: 1, epoch: "E" });
    client.room(r).leave().catch(() => {});
    client.room(r).join().catch(() => {});
    env.ws.frame({ type: "joined", room: r, id: env.ws.last("join").id, offset: 2, epoch: "E" });
    client.room(r).leave().catch(() => {});
  }
  assert.deepEqual(lobby.position, { offset: 4, epoch: "E" });
  assert.equal(client.room("a").position, undefined);
  client.close();
});

test("de-duplication per channel and epoch; broadcasts are never dropped", async () => {
  const { env, client } = await connected();
  client.room("r").join().catch(() => {});
  const seen = [];
  client.on("message", (m) => { seen.push(`${m.scope}:${m.epoch ?? ""}:${m.offset ?? ""}`); });
  const frames = [
    ["room", 1, "A"], ["room", 2, "A"], ["room", 2, "A"], ["room", 1, "A"], ["room", 3, "A"],
    ["room", 1, "B"], ["room", 1, "B"], ["user", 1, "A"], ["user", 1, "A"],
  ];
  for (const [scope, offset, epoch] of frames) env.ws.frame({ type: "message", scope, room: scope === "room" ? "r" : undefined, offset, epoch, data: 0 });
  env.ws.frame({ type: "message", scope: "all", data: 1 });
  env.ws.frame({ type: "message", scope: "all", data: 1 });
  assert.deepEqual(seen, ["room:A:1", "room:A:2", "room:A:3", "room:B:1", "user:A:1", "all::", "all::"]);
  assert.equal(client.stats.duplicates, 4);
  client.close();
});

test("hostile frames and throwing handlers are reported, never thrown", async () => {
  const { env, client, errors } = await connected();
  client.on("message", () => { throw new Error("app bug"); });
  client.on("message", async () => { throw new Error("async app bug"); });
  client.on("state", () => { throw new Error("app bug 2"); });
  env.ws.frame("not json");
  env.ws.onmessage({ data: new ArrayBuffer(4) });
  env.ws.frame("[1,2]");
  env.ws.frame({ type: "something_new" });
  env.ws.frame({ type: "ok", id: "nobody" });
  env.ws.frame({ type: "message", scope: "room", room: "not-joined", offset: 1, epoch: "e", data: 1 });
  env.ws.frame({ type: "message", scope: "weird", data: 1 });
  env.ws.frame({ type: "welcome" });
  env.ws.frame({ type: "message", scope: "all", data: 1 });
  env.ws.frame({ type: "error", code: "rate_limited", message: "slow down" });
  await tick();
  assert.deepEqual(errors.map((e) => e.code),
    ["bad_frame", "bad_frame", "bad_frame", "unknown_reply", "unexpected_message", "bad_frame", "bad_frame", "listener_error", "rate_limited", "listener_error"]);
  assert.ok(errors.every((e) => e instanceof HeraldError));
  assert.equal(client.state, "connected");
  client.close();
});

test("requests: error codes, timeout, bounded pending and queue, close", async () => {
  const { env, client } = await connected({ requestTimeout: 50, maxPendingRequests: 3, maxQueuedRequests: 2 });
  const a = client.send("v", 1);
  env.ws.frame({ type: "error", code: "forbidden", message: "no", id: env.ws.last("send").id });
  await assert.rejects(a, { code: "forbidden", message: "no" });
  const b = client.send("v", 2);
  await assert.rejects(b, { code: "timeout" });
  const pending = [client.send("v", 1), client.send("v", 2), client.send("v", 3)];
  await assert.rejects(client.send("v", 4), { code: "too_many_requests" });
  client.close();
  for (const p of pending) await assert.rejects(p, { code: "closed" });

  const { env: env2, client: c2 } = await connected({ maxQueuedRequests: 2 });
  env2.ws.serverClose(1006, "");
  const q = [c2.send("v", 1), c2.send("v", 2)];
  await assert.rejects(c2.send("v", 3), { code: "queue_full" });
  assert.equal(c2.sizes.queued, 2);
  c2.close();
  for (const p of q) await assert.rejects(p, { code: "closed" });
});

test("close codes: 4001/4003/1008 stop; 4001 token expired with getToken retries once", async () => {
  for (const code of [4001, 4003, 1002, 1007, 1008]) {
    const { env, client } = await connected();
    env.ws.serverClose(code, "bye");
    assert.equal(client.state, "closed", `code ${code}`);
    await tick(20);
    assert.equal(env.sockets.length, 1);
  }
  for (const code of [1001, 1006, 1011, 1012, 1013, 4029]) {
    const { env, client } = await connected();
    env.ws.serverClose(code, "");
    assert.equal(client.state, "disconnected", `code ${code}`);
    client.close();
  }
  const env = fakeServer();
  let tokens = 0;
  const client = new Herald("ws://x/ws", { getToken: async () => `t${++tokens}`, WebSocket: env.WebSocket, minReconnectDelay: 1, maxReconnectDelay: 2 });
  const p = client.connect();
  await tick();
  assert.equal(env.ws.url, "ws://x/ws?token=t1&since=latest&presence_events=true");
  env.ws.welcome();
  await p;
  env.ws.serverClose(4001, "token expired");
  assert.equal(client.state, "disconnected");
  await tick(20);
  assert.equal(env.ws.url, "ws://x/ws?token=t2&since=latest&presence_events=true");
  env.ws.serverClose(4001, "token expired");
  assert.equal(client.state, "closed", "a second 4001 before a welcome stops");
});

test("a 1013 retry hint is honoured", async () => {
  const { env, client } = await connected({ random: () => 0.5 });
  const states = [];
  client.on("state", (s) => { states.push(s); });
  env.ws.serverClose(1013, "retry in 2 s: cannot set the connection up");
  assert.equal(states[0].delay, 2000);
  client.close();
});

test("heartbeat: a silent connection is pinged, then given up on", async () => {
  const { env, client } = await connected({ heartbeat: 30, pongTimeout: 30 });
  const first = env.ws;
  await tick(45);
  const ping = first.last("ping");
  assert.ok(ping, "ping sent after silence");
  first.frame({ type: "error", code: "bad_request", id: ping.id }); // an older server's answer counts
  assert.equal(client.state, "connected");
  await tick(120);
  assert.notEqual(env.ws, first, "reconnected after an unanswered ping");
  assert.ok(first.closed);
  client.close();
});

test("acknowledgements wait for async handlers; autoAck: false leaves it to the app", async () => {
  const { env, client } = await connected();
  let release;
  client.on("message", () => new Promise((r) => { release = r; }));
  env.ws.frame({ type: "message", scope: "user", ack: true, offset: 3, epoch: "E", data: 1 });
  await tick();
  assert.equal(env.ws.last("ack"), undefined);
  release();
  await tick();
  const ack = env.ws.last("ack");
  assert.deepEqual({ offset: ack.offset, epoch: ack.epoch }, { offset: 3, epoch: "E" });
  env.ws.frame({ type: "ok", id: ack.id });
  client.close();

  const { env: env2, client: c2 } = await connected({ autoAck: false });
  let msg;
  c2.on("message", (m) => { msg = m; });
  env2.ws.frame({ type: "message", scope: "user", ack: true, offset: 1, epoch: "E", data: 1 });
  await tick();
  assert.equal(env2.ws.last("ack"), undefined);
  const done = msg.ack();
  assert.equal(msg.ack(), done, "ack() is idempotent");
  env2.ws.frame({ type: "ok", id: env2.ws.last("ack").id });
  await done;
  c2.close();
});

test("recovered:false is reported and the client continues from the server's position", async () => {
  const { env, client } = await connected();
  const room = client.room("r");
  const events = [];
  client.on("recovery", (e) => { events.push(e); });
  room.join().catch(() => {});
  env.ws.frame({ type: "message", scope: "room", room: "r", offset: 2, epoch: "E", data: 0 });
  env.ws.serverClose(1006, "");
  await tick(20);
  env.ws.welcome({ recovered: false, reason: "history_expired", offset: 9, epoch: "U" });
  const join = env.ws.last("join");
  env.ws.frame({ type: "joined", room: "r", id: join.id, recovered: false, reason: "epoch_changed", offset: 4, epoch: "F" });
  assert.deepEqual(events, [
    { scope: "user", reason: "history_expired", offset: 9, epoch: "U" },
    { scope: "room", room: "r", reason: "epoch_changed", offset: 4, epoch: "F" },
  ]);
  assert.deepEqual(room.position, { offset: 4, epoch: "F" });
  assert.deepEqual(client.userPosition, { offset: 9, epoch: "U" });
  client.close();
});

test("remembered positions are bounded (least recently used forgotten)", async () => {
  const { env, client } = await connected({ maxPositions: 10, acceptUnjoinedRooms: true });
  for (let i = 0; i < 50; i++) {
    client.room("r" + i);
    env.ws.frame({ type: "message", scope: "room", room: "r" + i, offset: 1, epoch: "E", data: i });
  }
  assert.equal(client.sizes.positions, 10);
  assert.equal(client.room("r0").position, undefined);
  assert.deepEqual(client.room("r49").position, { offset: 1, epoch: "E" });
  client.close();
});

test("presence events keep the room's members and online users; hostile ones change nothing bad", async () => {
  const { env, client, errors } = await connected({ random: () => 0 });
  const room = client.room("lobby");
  const events = [];
  room.on("presence", (e) => { events.push(e); });
  const joined = room.join();
  await tick();
  env.ws.frame({ type: "joined", room: "lobby", id: env.ws.last("join").id });
  await joined;
  env.ws.frame({ type: "presence_state", room: "lobby", members: ["a", "b"], online: ["a"], info: { a: { name: "A" } } });
  env.ws.frame({ type: "presence_change", room: "lobby", joined: ["c"], left: ["a"], online: ["c", "b"], offline: ["a"], info: { c: { name: "C" } } });
  assert.deepEqual(events.map((e) => [e.members, e.online]), [[["a", "b"], ["a"]], [["b", "c"], ["b", "c"]]]);
  assert.equal(events[0].change, undefined);
  assert.deepEqual(events[1].change, { joined: ["c"], left: ["a"], online: ["c", "b"], offline: ["a"], omitted: 0 });
  assert.deepEqual(events[1].info, { c: { name: "C" } }, "a user who left is forgotten");
  // Hostile: wrong types, a room not joined, no room: ignored without a throw.
  env.ws.frame({ type: "presence_change", room: "lobby", joined: "x", left: [1, null], online: {}, info: [] });
  env.ws.frame({ type: "presence_change", room: "elsewhere", joined: ["z"] });
  env.ws.frame({ type: "presence_state" });
  assert.deepEqual([...room.members].sort(), ["b", "c"]);
  assert.equal(events.length, 3, "the malformed change for lobby changed nothing but is reported as an event");
  assert.deepEqual(errors, []);
  // A change the server cut short: the client asks for the whole state (random() is 0 here: at once).
  env.ws.frame({ type: "presence_change", room: "lobby", joined: ["d"], left: [], online: [], offline: [], omitted: 1500 });
  await tick(5);
  const ask = env.ws.last("presence");
  assert.equal(ask.room, "lobby");
  env.ws.frame({ type: "presence", room: "lobby", members: ["b", "c", "d", "e"], online: ["e"], id: ask.id });
  await tick();
  assert.deepEqual(events.at(-1).members, ["b", "c", "d", "e"]);
  assert.deepEqual(events.at(-1).online, ["e"]);
  assert.equal(events.at(-1).change, undefined, "the whole state, as a state");
  client.close();
});
