// Scenario 5: an expiring token is refreshed on the same connection; a revoked token stops
// the client for good.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, mintToken, api, waitEvent, until, gatedWebSocket, SECRET, API_KEY } from "./support.mjs";

const serverArgs = ["--jwt-secret", SECRET, "--api-key", API_KEY, "--token-expiry-warning", "2", "--jwt-leeway", "1"];

test("5a. an expiring token is refreshed without losing the connection", { timeout: 30000 }, async () => {
  const server = await startHerald(serverArgs);
  let minted = 0;
  const client = new Herald(server.ws, { getToken: () => { minted++; return mintToken("fay", { rooms: "lobby", ttl: 4 }); } });
  after(async () => { client.close(); await server.kill(); });
  const refreshed = [];
  client.on("refreshed", (f) => { refreshed.push(f); });
  const welcome = await client.connect();
  await client.room("lobby").join();
  // Each 4 s token is refreshed 2 s before it expires: after 7 s the connection has outlived
  // its first token (4 s + 1 s leeway) and at least two refreshes happened.
  await until(() => refreshed.length >= 3, "three refreshes", 15000);
  assert.equal(client.stats.welcomes, 1, "no reconnect");
  assert.equal(client.welcome.connection, welcome.connection, "same connection");
  assert.ok(minted >= 4);
  const got = waitEvent(client.room("lobby"), "message");
  await api(server.http, "POST", "/api/rooms/lobby/publish", { data: "still here" }, API_KEY);
  assert.equal((await got).data, "still here");
});

test("5b. a revoked token stops reconnecting", { timeout: 30000 }, async () => {
  const server = await startHerald(serverArgs);
  const gate = gatedWebSocket();
  const client = new Herald(server.ws, {
    getToken: () => mintToken("gus", { rooms: "lobby", jti: "rev-1" }),
    WebSocket: gate.WebSocket, minReconnectDelay: 10, maxReconnectDelay: 50,
  });
  after(async () => { client.close(); await server.kill(); });
  await client.connect();
  const closed = waitEvent(client, "state", (s) => s.state === "closed");
  const res = await api(server.http, "POST", "/api/tokens/rev-1/revoke", {}, API_KEY);
  assert.equal(res.status, 200);
  const s = await closed;
  assert.equal(s.code, 4001);
  assert.match(s.reason, /token revoked/);
  const attempts = gate.attempts;
  // Backoff is at most 50 ms here: a client that kept trying would have tried again by now.
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(gate.attempts, attempts);
  assert.equal(client.state, "closed");
  await assert.rejects(client.room("lobby").join(), { code: "closed" });
});

test("5c. a static token without getToken reports that it cannot refresh", { timeout: 30000 }, async () => {
  const server = await startHerald(serverArgs);
  // A 2 s token is shorter-lived than the 2 s warning: token_expiring comes right after the welcome.
  const client = new Herald(server.ws, { token: await mintToken("hal", { ttl: 2 }) });
  after(async () => { client.close(); await server.kill(); });
  const err = waitEvent(client, "error", (e) => e.code === "cannot_refresh");
  const warned = waitEvent(client, "token_expiring");
  await client.connect();
  await warned;
  await err;
});
