// Scenario 6: a server restarted 10 times in 30 s. The client's connection attempts follow
// the backoff (no storm) and its internal structures stay bounded.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, freePort, gatedWebSocket, until } from "./support.mjs";

test("6. a server restarted 10 times in 30 s: backoff, no storm, bounded state", { timeout: 60000 }, async () => {
  const port = await freePort();
  let server = await startHerald([], { port });
  const gate = gatedWebSocket();
  const client = new Herald(server.ws, { user: "jude", WebSocket: gate.WebSocket, maxQueuedRequests: 20, requestTimeout: 2000 });
  after(async () => { client.close(); await server.kill(); });
  const delays = [];
  client.on("state", (s) => { if (s.state === "disconnected") delays.push(s.delay); });
  await client.connect();
  await client.room("r").join();

  const outages = [];
  const rejected = {};
  const maxSizes = { pending: 0, queued: 0, positions: 0, rooms: 0 };
  // The application keeps publishing throughout; while offline its requests fill the queue.
  const publisher = setInterval(() => {
    client.room("r").publish(1).catch((e) => { rejected[e.code] = (rejected[e.code] || 0) + 1; });
    for (const [k, v] of Object.entries(client.sizes)) maxSizes[k] = Math.max(maxSizes[k], v);
  }, 10);
  try {
    // Down 1.5 s, up 1.5 s, ten times: 30 s. The client may miss an up window (its backoff
    // grew, and only resets after 5 s of health): that is the point, no storm.
    for (let i = 0; i < 10; i++) {
      const before = gate.attempts;
      await server.kill("SIGKILL");
      await new Promise((r) => setTimeout(r, 1500));
      server = await startHerald([], { port });
      await new Promise((r) => setTimeout(r, 1500));
      outages.push(gate.attempts - before);
    }
    await until(() => client.state === "connected", "the client to come back", 20000);
  } finally {
    clearInterval(publisher);
  }
  // A 1.5 s outage with backoff from 250 ms (full jitter, doubling, at most 8 s) takes a
  // handful of attempts; a client without backoff would make hundreds.
  for (const n of outages) assert.ok(n <= 12, `attempts per outage: ${outages}`);
  assert.ok(gate.attempts <= 1 + 10 * 12, `total attempts ${gate.attempts}`);
  for (const d of delays) assert.ok(d >= 0 && d <= 8000, `delay ${d}`);
  assert.ok(maxSizes.queued <= 20, `queue ${maxSizes.queued}`);
  assert.ok(maxSizes.pending <= 1000, `pending ${maxSizes.pending}`);
  assert.ok(rejected.queue_full > 0, "a full queue rejects new requests");
  assert.equal(maxSizes.rooms, 1);
  assert.ok(maxSizes.positions <= 2);
  await until(() => client.sizes.pending === 0 && client.sizes.queued === 0, "the queue to drain", 5000);
  console.log(`# attempts per outage: ${outages.join(",")}; rejections: ${JSON.stringify(rejected)}`);
});
