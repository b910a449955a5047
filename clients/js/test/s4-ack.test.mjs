// Scenario 4: an acknowledged message reaches the client after it reconnects, and is not
// delivered again once acknowledged.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, api, waitEvent, until, gatedWebSocket } from "./support.mjs";

test("4. an acknowledged message is delivered after a reconnect, once", { timeout: 30000 }, async () => {
  const server = await startHerald([]);
  const gate = gatedWebSocket();
  const client = new Herald(server.ws, { user: "erin", WebSocket: gate.WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 });
  const clients = [client];
  after(async () => { for (const c of clients) c.close(); await server.kill(); });
  const seen = [];
  let handled = 0;
  client.on("message", async (m) => {
    seen.push(m);
    await new Promise((r) => setTimeout(r, 20)); // the ack waits for async handlers
    handled++;
  });
  await client.connect();

  gate.offline = true;
  const down = waitEvent(client, "state", (s) => s.state === "disconnected");
  gate.drop();
  await down;
  const sent = await api(server.http, "POST", "/api/users/erin/send", { data: { invoice: 77 }, ack: true });
  assert.equal(sent.status, 202);
  const got = waitEvent(client, "message", (m) => m.data?.invoice === 77);
  gate.offline = false;
  const msg = await got;
  assert.equal(msg.needsAck, true);
  assert.equal(typeof msg.ack, "function");
  // The automatic ack is the same promise as msg.ack(): wait for the server's ok.
  await until(() => handled === 1, "the handler to finish");
  assert.equal((await msg.ack()).type, "ok");

  // Reconnect once more: nothing is delivered again.
  const welcomes = client.stats.welcomes;
  gate.drop();
  await until(() => client.stats.welcomes === welcomes + 1 && client.state === "connected", "the reconnect");
  const marker = waitEvent(client, "message", (m) => m.data === "marker");
  await api(server.http, "POST", "/api/users/erin/send", { data: "marker" });
  await marker;
  assert.deepEqual(seen.map((m) => m.data), [{ invoice: 77 }, "marker"]);

  // A client with no position (a new device) is not sent the acknowledged message either.
  const fresh = new Herald(server.ws, { user: "erin" });
  clients.push(fresh);
  const freshSeen = [];
  fresh.on("message", (m) => { freshSeen.push(m.data); });
  await fresh.connect();
  const marker2 = waitEvent(fresh, "message", (m) => m.data === "marker2");
  await api(server.http, "POST", "/api/users/erin/send", { data: "marker2" });
  await marker2;
  assert.deepEqual(freshSeen, ["marker2"]);
});
