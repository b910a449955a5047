// Scenario 1: join, publish, send, presence, and request errors as rejected promises.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../herald.js";
import { startHerald, mintToken, waitEvent, SECRET, API_KEY } from "./support.mjs";

test("1. join, publish, send, presence, and request errors", { timeout: 30000 }, async () => {
  const server = await startHerald(["--jwt-secret", SECRET, "--api-key", API_KEY]);
  const client = new Herald(server.ws, { getToken: () => mintToken("alice", { rooms: "lobby,team-*" }) });
  after(async () => { client.close(); await server.kill(); });
  const welcome = await client.connect();
  assert.equal(welcome.user, "alice");
  assert.equal(client.state, "connected");

  const lobby = client.room("lobby");
  assert.equal(client.room("lobby"), lobby, "one Room object per name");
  const joined = await lobby.join();
  assert.equal(joined.type, "joined");

  const got = waitEvent(lobby, "message");
  assert.equal((await lobby.publish({ text: "hi" })).type, "ok");
  const msg = await got;
  assert.deepEqual(msg.data, { text: "hi" });
  assert.equal(msg.scope, "room");
  assert.equal(msg.room, "lobby");
  assert.equal(msg.from, "alice");
  assert.equal(typeof msg.offset, "number");
  assert.equal(typeof msg.epoch, "string");

  const direct = waitEvent(client, "message", (m) => m.scope === "user");
  await client.send("alice", { text: "note to self" });
  assert.deepEqual((await direct).data, { text: "note to self" });

  assert.deepEqual(await lobby.presence(), { members: ["alice"], online: ["alice"] });

  const codeOf = (p) => p.then(() => "resolved", (e) => e.code);
  assert.equal(await codeOf(client.room("secret").join()), "forbidden");
  assert.equal(client.room("secret").joined, false, "a refused join is not retried");
  assert.equal(await codeOf(client.room("team-x").presence()), "not_a_member");
  assert.equal(await codeOf(client.room(" bad").join()), "bad_request");
  assert.equal(await codeOf(client.broadcast("x")), "forbidden");
  assert.equal(client.sizes.pending, 0);

  client.close();
  assert.equal(client.state, "closed");
  assert.equal(await codeOf(lobby.publish(1)), "closed");
});
