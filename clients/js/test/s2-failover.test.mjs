// Scenario 2: two nodes sharing a real redis-server; node A is SIGKILLed during a stream of
// 2,000 room and 500 user messages published through node B; the client moves to node B and
// the application sees every message exactly once, in order, with no gap.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, startRedis, api, until } from "./support.mjs";

test("2. two nodes with redis: failover during a stream loses and repeats nothing", { timeout: 90000 }, async () => {
  const redis = await startRedis();
  const common = ["--redis", redis.url, "--history-size", "5000", "--presence-ttl", "3"];
  const nodeA = await startHerald([...common, "--node-id", "node-a"]);
  const nodeB = await startHerald([...common, "--node-id", "node-b"]);
  const client = new Herald([nodeA.ws, nodeB.ws], { user: "ivan", minReconnectDelay: 100, maxReconnectDelay: 1000 });
  after(async () => { client.close(); await nodeA.kill(); await nodeB.kill(); await redis.kill(); });
  const room = [];
  const user = [];
  const errors = [];
  client.on("error", (e) => { errors.push(e); });
  client.on("message", (m) => { (m.scope === "room" ? room : user).push(m.data.n); });
  const recoveries = [];
  client.on("recovery", (r) => { recoveries.push(r); });
  const welcome = await client.connect();
  assert.equal(welcome.node, "node-a");
  await client.room("stream").join();

  // One kept-alive publisher on node B: 4 room messages, then 1 user message, 500 times.
  let killed = false;
  for (let i = 0; i < 2000; i++) {
    const r = await api(nodeB.http, "POST", "/api/rooms/stream/publish", { data: { n: i }, id: `r-${i}` });
    assert.equal(r.status, 202);
    if (i % 4 === 3) {
      const u = await api(nodeB.http, "POST", "/api/users/ivan/send", { data: { n: (i - 3) / 4 }, id: `u-${i}` });
      assert.equal(u.status, 202);
    }
    // Kill node A once the client has processed a good part of the stream (it then has a
    // position in both channels to resume from).
    if (!killed && room.length >= 400 && user.length >= 50) {
      killed = true;
      await nodeA.kill("SIGKILL");
    }
  }
  assert.ok(killed, "node A was killed during the stream");
  await until(() => room.length >= 2000 && user.length >= 500, `all messages (room ${room.length}, user ${user.length})`, 60000);
  assert.equal(client.welcome.node, "node-b");
  assert.deepEqual(room, Array.from({ length: 2000 }, (_, i) => i), "room: every message once, in order");
  assert.deepEqual(user, Array.from({ length: 500 }, (_, i) => i), "user: every message once, in order");
  assert.deepEqual(recoveries, [], "nothing was lost");
  assert.deepEqual(errors.map((e) => e.message), []);
});
