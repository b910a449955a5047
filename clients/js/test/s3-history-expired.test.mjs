// Scenario 3: offline longer than the history window -> recovered:false with the reason.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, api, waitEvent, gatedWebSocket } from "./support.mjs";

test("3. offline longer than the history window: recovered:false with the reason", { timeout: 30000 }, async () => {
  const server = await startHerald(["--history-size", "3"]);
  const gate = gatedWebSocket();
  const client = new Herald(server.ws, { user: "dora", WebSocket: gate.WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 });
  after(async () => { client.close(); await server.kill(); });
  const seen = [];
  client.on("message", (m) => { seen.push(m); });
  await client.connect();
  const room = client.room("news");
  await room.join();

  // One message of each channel gives the client a position to resume from.
  const first = waitEvent(client, "message", (m) => m.scope === "user");
  await api(server.http, "POST", "/api/rooms/news/publish", { data: 0 });
  await api(server.http, "POST", "/api/users/dora/send", { data: 0 });
  await first;
  assert.ok(room.position && client.userPosition);

  // Offline while 10 messages go by each channel: more than the 3 kept.
  gate.offline = true;
  const down = waitEvent(client, "state", (s) => s.state === "disconnected");
  gate.drop();
  await down;
  for (let i = 1; i <= 10; i++) {
    await api(server.http, "POST", "/api/rooms/news/publish", { data: i });
    await api(server.http, "POST", "/api/users/dora/send", { data: i });
  }
  const roomRecovery = waitEvent(room, "recovery");
  const userRecovery = waitEvent(client, "recovery", (r) => r.scope === "user");
  gate.offline = false;
  const r = await roomRecovery;
  assert.equal(r.room, "news");
  assert.equal(r.scope, "room");
  assert.ok(["history_expired", "epoch_changed"].includes(r.reason), r.reason);
  const u = await userRecovery;
  assert.ok(["history_expired", "epoch_changed"].includes(u.reason), u.reason);

  // Live messages carry on after the server's position, without replaying the lost ones.
  const live = waitEvent(room, "message", (m) => m.data === 11);
  await api(server.http, "POST", "/api/rooms/news/publish", { data: 11 });
  await live;
  assert.deepEqual(seen.filter((m) => m.scope === "room").map((m) => m.data), [0, 11]);
  assert.deepEqual(room.position.offset, 12);
});
