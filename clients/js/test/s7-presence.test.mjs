// Scenario 7: presence events across two nodes sharing a real redis-server: a room's
// members, online users and token info, kept by the server's coalesced presence events, with
// no polling; a killed node's users go offline after the presence TTL.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, startRedis, mintToken, waitEvent, SECRET, API_KEY } from "./support.mjs";

test("7. presence events: state after a join, then changes, across nodes", { timeout: 60000 }, async () => {
  const redis = await startRedis();
  const common = ["--redis", redis.url, "--presence-ttl", "3", "--presence-events", "lobby", "--presence-window", "200", "--jwt-secret", SECRET, "--api-key", API_KEY];
  const nodeA = await startHerald([...common, "--node-id", "node-a"]);
  const nodeB = await startHerald([...common, "--node-id", "node-b"]);
  const alice = new Herald(nodeA.ws, { getToken: () => mintToken("alice", { rooms: "lobby,other", info: { name: "Alice A." } }) });
  const bob = new Herald(nodeB.ws, { getToken: () => mintToken("bob", { rooms: "lobby", info: { name: "Bob B." } }), maxReconnectDelay: 500 });
  after(async () => { alice.close(); bob.close(); await nodeA.kill(); await nodeB.kill(); await redis.kill(); });
  const errors = [];
  alice.on("error", (e) => errors.push(e));

  await alice.connect();
  const lobby = alice.room("lobby");
  assert.equal(lobby.presenceEvents, true, "the welcome names the watched rooms");
  assert.equal(alice.room("other").presenceEvents, false);
  const state = waitEvent(lobby, "presence");
  await lobby.join();
  const first = await state;
  assert.equal(first.change, undefined, "the first event is the room's state");
  assert.deepEqual(first.members, ["alice"]);
  assert.deepEqual(first.online, ["alice"]);
  assert.deepEqual(first.info, { alice: { name: "Alice A." } });

  const bobArrives = waitEvent(lobby, "presence", (e) => e.online.includes("bob"));
  await bob.connect();
  await bob.room("lobby").join();
  const arrived = await bobArrives;
  assert.deepEqual(arrived.members, ["alice", "bob"]);
  assert.deepEqual(arrived.info.bob, { name: "Bob B." });
  assert.ok(arrived.change.joined.includes("bob") && arrived.change.online.includes("bob"), JSON.stringify(arrived.change));
  assert.deepEqual([...lobby.online].sort(), ["alice", "bob"]);

  // Bob's node dies without a goodbye: he is offline once its presence expires, still a member.
  bob.close();
  const bobGone = waitEvent(lobby, "presence", (e) => !e.online.includes("bob"), 15000);
  await nodeB.kill("SIGKILL");
  const gone = await bobGone;
  assert.deepEqual(gone.members, ["alice", "bob"]);
  assert.deepEqual(gone.online, ["alice"]);
  assert.ok(gone.change.offline.includes("bob"));
  assert.deepEqual(errors, []);
});
