// herald.js — the official JavaScript client of Herald (protocol v1, docs/protocol.md).
//
// One dependency-free ES module for browsers and Node 20+ (`node --experimental-websocket`
// gives Node 20 a global WebSocket; any WHATWG-compatible class can be injected with
// `options.WebSocket`). No build step.
//
// What the client does for the application:
//   - connects (dev mode `?user=`, or `?token=` from `token` / `getToken()`), fails over
//     between several URLs, and reconnects with exponential backoff and full jitter;
//   - re-joins the application's rooms after every welcome, resuming each room (and the
//     user channel) from the last processed offset/epoch, and reports `recovered:false`;
//   - drops duplicate room/user messages, acknowledges `ack:true` messages;
//   - refreshes tokens before they expire, detects dead connections with JSON pings;
//   - bounds everything that grows: pending requests, the offline queue, positions.
//
// Policies (documented here because applications depend on them):
//   - Requests made while not connected wait in a queue of `maxQueuedRequests` (100); a
//     request that finds it full is rejected at once with `queue_full` (older ones keep
//     their place). Queued requests are sent after the next welcome, after the re-joins,
//     and their `requestTimeout` runs from the call, queued time included.
//   - At most `maxPendingRequests` (1000) requests await a reply; more: `too_many_requests`.
//   - A request sent on a connection that dies before its reply: join, leave, presence and
//     ack are sent again on the next connection; publish, send and broadcast may or may not
//     have been acted on, so they are rejected with `disconnected` (the application decides).
//   - Close codes 4001, 4003, 1002, 1007, 1008 stop the client (state `closed`). A 4001
//     `token expired` is retried once when `getToken` is given (each connection asks it for a
//     fresh token); a second 4001 before a welcome, or `token revoked`, stops.
//   - `ack:true` messages are acknowledged when every handler returned (promises awaited); a
//     handler that throws or rejects leaves the message unacknowledged (the server sends it
//     again on the next connection, where it is delivered once more if it was not processed).

/** The longest delay setTimeout honours (ms). */
const MAX_TIMEOUT = 2 ** 31 - 1;

/** Close codes after which reconnecting with the same credentials cannot help. */
const FATAL_CLOSE_CODES = new Set([1002, 1007, 1008, 4001, 4003]);

/** Request types that may be sent again on a new connection without changing the outcome. */
const IDEMPOTENT = new Set(["join", "leave", "presence", "ack"]);

const DEFAULTS = {
  minReconnectDelay: 250,
  maxReconnectDelay: 8000,
  requestTimeout: 10000,
  connectTimeout: 10000,
  pongTimeout: 5000,
  heartbeat: 0, // 0: use the welcome's `heartbeat`
  resetBackoffAfter: 5000,
  tokenRefreshMargin: 30000,
  maxPendingRequests: 1000,
  maxQueuedRequests: 100,
  maxPositions: 10000,
  maxListeners: 1000,
  autoAck: true,
  presenceEvents: true,
  acceptUnjoinedRooms: false,
  random: Math.random,
};

/** Error carried by rejected promises and `error` events. `code` is the stable part. */
export class HeraldError extends Error {
  /**
   * @param {string} code e.g. `forbidden`, `timeout`, `closed`, `queue_full`
   * @param {string} [message]
   * @param {object} [details] extra fields (the server's frame, the room, ...)
   */
  constructor(code, message, details) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

/**
 * Backoff delay in ms for a retry: full jitter, random(0, min(cap, base * 2^attempt)).
 * Exported for tests and for applications that want the same policy elsewhere.
 */
export function backoffDelay(attempt, base = DEFAULTS.minReconnectDelay, cap = DEFAULTS.maxReconnectDelay, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The server's hint in a 1013 close reason (`retry in N s: ...`), in ms, jittered by a
 * random factor of 0.5 to 1.5 (docs/protocol.md, "Overload: come back later"); null if none.
 */
export function retryHintDelay(reason, random = Math.random) {
  const m = /^retry in (\d+(?:\.\d+)?) ?s\b/.exec(reason || "");
  if (!m) return null;
  return Math.floor(Number(m[1]) * 1000 * (0.5 + random()));
}

/** Minimal event emitter; listener exceptions are routed to `onListenerError`. */
class Emitter {
  constructor(maxListeners, onListenerError) {
    this._listeners = new Map();
    this._maxListeners = maxListeners;
    this._onListenerError = onListenerError;
  }

  /** Adds `fn` for `event`; returns a function that removes it. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("listener must be a function");
    const list = this._listeners.get(event) || [];
    // A bound, so that a listener added per message by mistake shows up as an error, not a leak.
    if (list.length >= this._maxListeners) throw new HeraldError("too_many_listeners", `more than ${this._maxListeners} listeners for "${event}"`);
    this._listeners.set(event, [...list, fn]);
    return () => this.off(event, fn);
  }

  /** Removes `fn` (or every listener of `event` when `fn` is omitted). */
  off(event, fn) {
    if (!fn) return void this._listeners.delete(event);
    const list = (this._listeners.get(event) || []).filter((f) => f !== fn);
    if (list.length) this._listeners.set(event, list);
    else this._listeners.delete(event);
  }

  /** Like `on`, for one call. */
  once(event, fn) {
    const off = this.on(event, (...args) => { off(); return fn(...args); });
    return off;
  }

  /** Calls the listeners; returns the promises they returned (for acknowledgements). */
  _emit(event, ...args) {
    const results = [];
    for (const fn of this._listeners.get(event) || []) {
      try {
        const r = fn(...args);
        if (r && typeof r.then === "function") {
          // A rejected promise from a listener is reported, never left unhandled.
          r.then(undefined, (err) => this._onListenerError(err, event));
          results.push(r);
        }
      } catch (err) {
        this._onListenerError(err, event);
        const failed = Promise.reject(err);
        failed.catch(() => {});
        results.push(failed);
      }
    }
    return results;
  }

  _has(event) {
    return (this._listeners.get(event) || []).length > 0;
  }
}

/**
 * Last processed position per channel (`room:NAME` or `user`), least recently used first,
 * so that the oldest entry can be forgotten when there are too many.
 */
class Positions {
  /** @param {(key: string) => boolean} kept channels evicted only when nothing else is left */
  constructor(max, kept) {
    this._map = new Map();
    this._max = max;
    this._kept = kept;
  }
  get size() { return this._map.size; }
  get(key) { return this._map.get(key); }
  /** Stores `pos` ({epoch, offset, floor}) and marks it most recently used. */
  set(key, pos) {
    this._map.delete(key);
    this._map.set(key, pos);
    if (this._map.size <= this._max) return;
    // The least recently used channel the application is not in goes first: forgetting a
    // joined room's (or the user channel's) position would skip what its next resume recovers.
    let victim = null;
    for (const k of this._map.keys()) if (!this._kept(k)) { victim = k; break; }
    this._map.delete(victim ?? this._map.keys().next().value);
  }
  delete(key) { this._map.delete(key); }
}

/**
 * Offsets of `ack:true` messages this client acknowledged, per epoch of the user channel
 * (bounded; the server keeps at most 1,000 unacknowledged messages per user). They, not the
 * highest offset seen, decide whether a resent `ack:true` message is a duplicate: the server
 * resends unacknowledged messages after the live ones of a connection's setup, and a message
 * whose handler failed must be handed over again.
 */
class AckedOffsets {
  constructor(max) {
    this._set = new Set();
    this._max = max;
  }
  _key(epoch, offset) { return epoch + "\u0000" + offset; }
  has(epoch, offset) { return this._set.has(this._key(epoch, offset)); }
  add(epoch, offset) {
    this._set.add(this._key(epoch, offset));
    if (this._set.size > this._max) this._set.delete(this._set.values().next().value);
  }
  get size() { return this._set.size; }
}

/**
 * One room of a client (`client.room(name)` always returns the same object).
 * Events: `message` (a message of the room), `recovery` ({room, reason}: missed messages
 * could not all be replayed), `membership` ({room, type: "joined"|"left", reason}: sent by
 * the server unasked, e.g. `revoked`/`restored`), `presence` ({room, members, online, info,
 * change?}: the room's presence as the server's presence events keep it, after a join and
 * after every change; `change` holds {joined, left, online, offline, omitted} when it is one).
 */
export class Room extends Emitter {
  /** @param {Herald} client @param {string} name */
  constructor(client, name) {
    super(client._opts.maxListeners, (err, ev) => client._listenerError(err, ev));
    this.client = client;
    this.name = name;
    /** True while the application wants to be in the room (between join() and leave()). */
    this.joined = false;
    /**
     * The room's members, online members and their token `info`, kept by the server's presence
     * events (see `presenceEvents`); empty until the first `presence` event.
     */
    this.members = new Set();
    this.online = new Set();
    this.info = new Map();
  }

  /** Whether the server sends this room's presence events (from the last welcome). */
  get presenceEvents() {
    const patterns = this.client.welcome && this.client.welcome.presence_events;
    return Array.isArray(patterns) && patterns.some((p) => typeof p === "string" && (p.endsWith("*") ? this.name.startsWith(p.slice(0, -1)) : p === this.name));
  }

  /** Applies a `presence_state` or `presence_change` frame and tells the application. */
  _presence(f) {
    const names = (v) => (Array.isArray(v) ? v.filter((n) => typeof n === "string") : []);
    const info = f.info && typeof f.info === "object" && !Array.isArray(f.info) ? f.info : {};
    let change;
    if (f.type === "presence_state") {
      this.members = new Set(names(f.members));
      this.online = new Set(names(f.online));
      this.info = new Map();
    } else {
      change = { joined: names(f.joined), left: names(f.left), online: names(f.online), offline: names(f.offline), omitted: Number(f.omitted) || 0 };
      for (const u of change.joined) this.members.add(u);
      for (const u of change.left) { this.members.delete(u); this.online.delete(u); this.info.delete(u); }
      for (const u of change.online) this.online.add(u);
      for (const u of change.offline) this.online.delete(u);
    }
    for (const [user, value] of Object.entries(info)) if (value && typeof value === "object") this.info.set(user, value);
    const event = { room: this.name, members: [...this.members].sort(), online: [...this.online].sort(), info: Object.fromEntries(this.info) };
    if (change) event.change = change;
    this._emit("presence", event);
    // A mass change the server cut short: ask for the whole state, at a random moment within
    // 5 s so that the room's members do not all ask at once.
    if (change && change.omitted > 0 && !this._presenceResync) {
      this._presenceResync = setTimeout(() => {
        this._presenceResync = null;
        if (!this.joined) return;
        this.presence().then((p) => {
          if (!this.joined) return;
          this.members = new Set(p.members);
          this.online = new Set(p.online);
          for (const user of [...this.info.keys()]) if (!this.members.has(user)) this.info.delete(user);
          this._emit("presence", { room: this.name, members: [...this.members].sort(), online: [...this.online].sort(), info: Object.fromEntries(this.info) });
        }, () => {});
      }, Math.floor(this.client._opts.random() * 5000));
    }
  }

  /** Joins the room (resuming from the last processed position); resolves with the `joined` reply. */
  join() {
    this.joined = true;
    return this.client._request("join", () => this.client._joinFrame(this.name), { room: this })
      .catch((err) => {
        // A refused join (forbidden, bad_request, limit_exceeded) is not retried on reconnect.
        if (err.code !== "timeout" && err.code !== "closed" && err.code !== "disconnected") this.joined = false;
        throw err;
      });
  }

  /** Leaves the room; resolves with the `left` reply. */
  leave() {
    this.joined = false;
    // A later join starts from the room's position then: what was published meanwhile was
    // not this user's to receive.
    this.client._positions.delete("room:" + this.name);
    return this.client._request("leave", () => ({ type: "leave", room: this.name }));
  }

  /** Publishes `data` (any JSON value) to the room; resolves on `ok`. */
  publish(data) {
    return this.client._request("publish", () => ({ type: "publish", room: this.name, data }));
  }

  /** Resolves with `{members, online}` (sorted user names). */
  presence() {
    return this.client._request("presence", () => ({ type: "presence", room: this.name }))
      .then((f) => ({ members: f.members || [], online: f.online || [] }));
  }

  /** The last processed `{offset, epoch}` of the room, or undefined. */
  get position() {
    const p = this.client._positions.get("room:" + this.name);
    return p ? { offset: Math.max(p.offset, p.floor), epoch: p.epoch } : undefined;
  }
}

/**
 * A Herald connection that reconnects by itself.
 *
 * Events (`client.on(event, fn)`):
 *   - `state`    {state, previous, code?, reason?, delay?, attempt?}
 *   - `welcome`  the welcome frame
 *   - `message`  every delivered message (room, user, all): {scope, room, from, data, offset, epoch, ts, ack()}
 *   - `recovery` {scope: "room"|"user", room?, reason, offset, epoch}: messages were missed
 *   - `token_expiring`, `refreshed` the server's frames
 *   - `membership` {room, type, reason}: unasked `joined`/`left` frames
 *   - `error`    HeraldError: odd server input, failed background work, listener exceptions
 */
export class Herald extends Emitter {
  /**
   * @param {string|string[]} url `ws://host:port/ws`, or several (one per node) to fail over
   * @param {object} options see herald.d.ts (HeraldOptions)
   */
  constructor(url, options = {}) {
    const opts = { ...DEFAULTS, ...options };
    super(opts.maxListeners, (err, ev) => this._listenerError(err, ev));
    this._urls = Array.isArray(url) ? [...url] : [url];
    if (!this._urls.length) throw new TypeError("at least one URL is needed");
    if (!opts.user && !opts.token && !opts.getToken) throw new TypeError("one of user, token or getToken is needed");
    this._opts = opts;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError("no WebSocket implementation: pass options.WebSocket (Node 20: --experimental-websocket)");

    this.state = "idle";
    /** The last welcome frame. */
    this.welcome = null;
    /** Counters, for monitoring and tests. */
    this.stats = { connectAttempts: 0, welcomes: 0, messages: 0, duplicates: 0 };

    this._rooms = new Map();
    this._positions = new Positions(opts.maxPositions, (key) => key === "user" || this._rooms.get(key.slice(5))?.joined === true);
    this._acked = new AckedOffsets(2000);
    this._lateJoins = new Map(); // id -> room of joins that timed out: their late reply ends the resumption
    this._ackInFlight = new Set(); // offsets handed to the application, not yet acknowledged
    this._pending = new Map(); // id -> request
    this._queue = []; // requests waiting for a connection
    this._nextId = 0;
    this._ws = null;
    this._attempt = 0;
    this._urlIndex = -1;
    this._timers = {};
    this._authRetried = false;
    this._refreshing = null;
    this._lastRx = 0;
    this._pingId = null;
    this._ready = null;
    // Browsers say when the network comes back: do not wait for the rest of the backoff.
    this._onOnline = () => {
      if (this.state === "disconnected" && this._timers.reconnect) {
        this._clearTimer("reconnect");
        this._open();
      }
    };
    globalThis.addEventListener?.("online", this._onOnline);
  }

  /** Sizes of the internal structures (all bounded). */
  get sizes() {
    return { pending: this._pending.size, queued: this._queue.length, positions: this._positions.size, rooms: this._rooms.size };
  }

  /** Connects; resolves with the first welcome, rejects if the client stops before one. */
  connect() {
    if (this.state === "closed") return Promise.reject(new HeraldError("closed", "the client was closed"));
    if (!this._ready) {
      this._ready = {};
      this._ready.promise = new Promise((resolve, reject) => Object.assign(this._ready, { resolve, reject }));
      this._ready.promise.catch(() => {}); // the caller may not await it; never unhandled
    }
    if (this.welcome) return Promise.resolve(this.welcome);
    if (this.state === "idle") this._open();
    return this._ready.promise;
  }

  /** Stops for good: closes the socket, rejects every pending and queued request with `closed`. */
  close() {
    if (this.state === "closed") return;
    this._clearTimers();
    for (const room of this._rooms.values()) { clearTimeout(room._presenceResync); room._presenceResync = null; }
    const ws = this._ws;
    this._detach();
    if (ws) try { ws.close(1000, "client closed"); } catch { /* already closing */ }
    this._setState("closed", { code: 1000, reason: "client closed" });
    globalThis.removeEventListener?.("online", this._onOnline);
    this._failAll(new HeraldError("closed", "the client was closed"));
    if (this._ready && !this.welcome) this._ready.reject(new HeraldError("closed", "the client was closed"));
  }

  /** The Room object of `name` (created once). */
  room(name) {
    let room = this._rooms.get(name);
    if (!room) {
      room = new Room(this, name);
      this._rooms.set(name, room);
    }
    return room;
  }

  /** Sends `data` to every connection of `user`; resolves on `ok`. */
  send(user, data) {
    return this._request("send", () => ({ type: "send", user, data }));
  }

  /** Sends `data` to every connection (needs --allow-client-broadcast); resolves on `ok`. */
  broadcast(data) {
    return this._request("broadcast", () => ({ type: "broadcast", data }));
  }

  /** The last processed `{offset, epoch}` of the user channel, or undefined. */
  get userPosition() {
    const p = this._positions.get("user");
    return p ? { offset: Math.max(p.offset, p.floor), epoch: p.epoch } : undefined;
  }

  // ---- connecting --------------------------------------------------------------------

  async _open() {
    this._setState("connecting", { attempt: this._attempt });
    this._urlIndex = (this._urlIndex + 1) % this._urls.length;
    let url;
    try {
      url = this._urls[this._urlIndex] + await this._query();
    } catch (err) {
      if (this.state === "closed") return;
      this._emitError(new HeraldError("token_failed", "getToken() failed: " + (err && err.message), { cause: err }));
      return this._scheduleReconnect({ code: 0, reason: "getToken failed" });
    }
    if (this.state !== "connecting") return; // closed meanwhile
    this.stats.connectAttempts++;
    let ws;
    try {
      ws = new this._WS(url);
    } catch (err) {
      // Not the exception's message: browsers put the URL in it, and with it `?token=`.
      this._emitError(new HeraldError("connect_failed", "the WebSocket could not be created (a malformed URL?)"));
      return this._scheduleReconnect({ code: 0, reason: "WebSocket constructor failed" });
    }
    this._ws = ws;
    try { ws.binaryType = "arraybuffer"; } catch { /* optional */ }
    ws.onmessage = (ev) => this._onData(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    // Browsers follow an error with a close event (which carries the code); Node 20's
    // WebSocket does not when the connection fails, so an error stands for a 1006 close
    // unless a close event comes soon after.
    ws.onerror = () => setTimeout(() => this._lost(ws, 1006, "network error"), 100);
    // A socket that opens but never says welcome (or never opens) is given up on.
    this._timer("connect", this._opts.connectTimeout, () => this._lost(ws, 4000, "no welcome within connectTimeout"));
  }

  /** The query string: credentials and, when known, the user channel's position. */
  async _query() {
    const params = [];
    const o = this._opts;
    if (o.getToken) {
      const token = await o.getToken({ reason: "connect" });
      if (typeof token !== "string" || !token) throw new HeraldError("token_failed", "getToken() gave no token to connect with");
      params.push(["token", token]);
    }
    else if (o.token) params.push(["token", o.token]);
    else params.push(["user", o.user.normalize("NFC")]);
    const pos = this.userPosition;
    // Without a position yet, ask where the user channel stands: direct messages sent while
    // this client is away before its first one are then recovered too.
    if (pos) params.push(["since_offset", String(pos.offset)], ["since_epoch", pos.epoch]);
    else params.push(["since", "latest"]);
    if (o.presenceEvents) params.push(["presence_events", "true"]);
    const base = this._urls[this._urlIndex];
    return (base.includes("?") ? "&" : "?") + params.map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._lost(ws, code, reason || "");
  }

  /** The connection is gone (closed by the server, the network, or given up on by us). */
  _lost(ws, code, reason) {
    if (ws !== this._ws || this.state === "closed") return;
    this._detach();
    try { ws.close(); } catch { /* already closed */ }
    const wasWelcomed = this.state === "connected";
    for (const room of this._rooms.values()) room._resuming = false; // the next welcome resumes again
    this._lateJoins.clear();
    this._requeueInFlight();
    if (this._stopsReconnecting(code, reason, wasWelcomed)) {
      this._clearTimers();
      globalThis.removeEventListener?.("online", this._onOnline);
      this._setState("closed", { code, reason });
      const err = new HeraldError(code === 4001 ? "unauthorized" : "closed", `connection closed for good: ${code} ${reason}`, { closeCode: code, closeReason: reason });
      this._failAll(err);
      if (this._ready && !this.welcome) this._ready.reject(err);
      return;
    }
    this._scheduleReconnect({ code, reason });
  }

  /**
   * Whether a close ends the client. A 4001 `token expired` is retried once when the
   * application gave `getToken` (the next connection asks it for a fresh token); a second
   * 4001 before a welcome, `token revoked` or any other 4001 stops.
   */
  _stopsReconnecting(code, reason) {
    if (!FATAL_CLOSE_CODES.has(code)) return false;
    if (code === 4001 && this._opts.getToken && !this._authRetried && /^token expired/.test(reason)) {
      this._authRetried = true;
      return false;
    }
    return true;
  }

  _scheduleReconnect({ code, reason }) {
    this._clearTimers();
    const hint = code === 1013 ? retryHintDelay(reason, this._opts.random) : null;
    const delay = hint ?? backoffDelay(this._attempt, this._opts.minReconnectDelay, this._opts.maxReconnectDelay, this._opts.random);
    this._attempt++;
    this._setState("disconnected", { code, reason, delay, attempt: this._attempt });
    this._timer("reconnect", delay, () => this._open());
  }

  /** Forgets the socket: its late events are ignored. */
  _detach() {
    const ws = this._ws;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    this._pingId = null;
  }

  // ---- frames from the server --------------------------------------------------------

  _onData(ws, data) {
    if (ws !== this._ws) return;
    this._lastRx = Date.now();
    if (typeof data !== "string") return this._emitError(new HeraldError("bad_frame", "binary frame from the server ignored"));
    let frame;
    try { frame = JSON.parse(data); } catch { return this._emitError(new HeraldError("bad_frame", "non-JSON frame from the server ignored", { frame: data.slice(0, 200) })); }
    if (!frame || typeof frame !== "object" || Array.isArray(frame) || typeof frame.type !== "string") {
      return this._emitError(new HeraldError("bad_frame", "frame without a type ignored", { frame: data.slice(0, 200) }));
    }
    try {
      this._dispatch(frame);
    } catch (err) {
      // A bug or a frame shaped in a way we did not foresee: report it, keep the connection.
      this._emitError(new HeraldError("bad_frame", "frame could not be handled: " + (err && err.message), { frame: data.slice(0, 200), cause: err }));
    }
  }

  _dispatch(f) {
    if (f.id !== undefined && f.id === this._pingId) { this._pingId = null; return; } // pong, or an old server's error
    switch (f.type) {
      case "welcome": return this._onWelcome(f);
      case "message": return this._onMessage(f);
      case "token_expiring": this._emit("token_expiring", f); return void this._refreshToken();
      case "pong": return;
      case "presence_state":
      case "presence_change": {
        const room = typeof f.room === "string" ? this._rooms.get(f.room) : undefined;
        if (room && room.joined) room._presence(f);
        return;
      }
    }
    if (f.id !== undefined) return this._onReply(f);
    if (f.type === "joined" || f.type === "left") return this._onMembership(f);
    if (f.type === "error") return this._emitError(new HeraldError(f.code || "error", f.message, { frame: f }));
    // Unknown frame types are allowed by the protocol's versioning rule: ignore them.
  }

  _onWelcome(f) {
    if (this.state !== "connecting") return this._emitError(new HeraldError("bad_frame", "unexpected welcome ignored"));
    this._clearTimer("connect");
    this.welcome = f;
    this.stats.welcomes++;
    this._authRetried = false;
    this._setState("connected", {});
    // Backoff restarts only after a connection proved healthy, so a node that welcomes
    // and crashes at once does not get a storm of immediate retries.
    this._timer("healthy", this._opts.resetBackoffAfter, () => { this._attempt = 0; });
    this._startHeartbeat();
    this._scheduleRefresh(f.expires);
    if (f.recovered === false) this._recoveryNeeded("user", null, f);
    else if (f.recovered === undefined && typeof f.offset === "number" && !this._positions.get("user")) {
      // `since=latest`: the user channel's position, the floor of what this client receives.
      this._positions.set("user", { epoch: String(f.epoch ?? ""), offset: 0, floor: f.offset });
    }
    this._emit("welcome", f);
    this._rejoin();
    this._flushQueue();
    if (this._ready) this._ready.resolve(f);
  }

  /** Sends a join (with `since`) for every room the application is in and whose join is not queued. */
  _rejoin() {
    const queuedJoins = new Set(this._queue.filter((r) => r.type === "join").map((r) => r.room));
    for (const room of this._rooms.values()) {
      if (!room.joined || queuedJoins.has(room)) continue;
      this._request("join", () => this._joinFrame(room.name), { room, internal: true })
        .catch((err) => this._emitError(new HeraldError(err.code, `re-joining ${room.name} failed: ${err.message}`, { room: room.name })));
    }
  }

  _joinFrame(name) {
    const frame = { type: "join", room: name };
    const pos = this._positions.get("room:" + name);
    if (pos) {
      frame.since = { offset: Math.max(pos.offset, pos.floor), epoch: pos.epoch };
      // Until the reply, the room's messages are ignored: memberships outlive connections, so
      // live messages may come before the reply, and taking them would move the position past
      // the gap the replay is about to fill. The server sends every message after `since`
      // after its reply (history, then live), so nothing ignored here is lost.
      this.room(name)._resuming = true;
    } else {
      frame.since = "latest"; // no position yet: the reply says where the room stands
    }
    return frame;
  }

  _onReply(f) {
    // Any reply to a join ends its resumption, even one that comes after the request timed
    // out: the replay follows it (see _joinFrame).
    if ((f.type === "joined" || f.type === "error") && typeof f.room === "string") {
      const room = this._rooms.get(f.room);
      if (room) room._resuming = false;
    }
    const req = this._pending.get(f.id);
    if (req && req.type === "join" && req.room && f.type === "error") req.room._resuming = false;
    const late = this._lateJoins.get(f.id);
    if (late) {
      this._lateJoins.delete(f.id);
      late._resuming = false;
    }
    if (!req) {
      // Replies to requests that timed out are expected; anything else is odd.
      if (!(typeof f.id === "number" && f.id <= this._nextId)) this._emitError(new HeraldError("unknown_reply", "reply with an unknown id ignored", { frame: f }));
      return;
    }
    this._settle(req);
    if (f.type === "error") return req.reject(new HeraldError(f.code || "error", f.message, { frame: f }));
    if (f.type === "joined" && req.room) this._onJoined(req.room, f);
    if (f.type === "refreshed") this._scheduleRefresh(f.expires);
    req.resolve(f);
  }

  /** A `joined` reply: a `recovered:false` reply moves the room to the server's position. */
  _onJoined(room, f) {
    room._emit("joined", f);
    if (f.recovered === false) this._recoveryNeeded("room", room, f);
    else if (typeof f.offset === "number" && !this._positions.get("room:" + room.name) && f.recovered === undefined) {
      // A plain join that tells the room's position gives us one to resume from later.
      this._positions.set("room:" + room.name, { epoch: String(f.epoch ?? ""), offset: 0, floor: f.offset });
    }
  }

  /**
   * Missed messages cannot all be replayed: tell the application (which reloads them from its
   * own database) and carry on from the server's position. `floor` (not `offset`) records it,
   * so that acknowledged messages we never processed are still delivered.
   */
  _recoveryNeeded(scope, room, f) {
    const key = scope === "user" ? "user" : "room:" + room.name;
    if (typeof f.offset === "number") {
      const old = this._positions.get(key);
      const epoch = String(f.epoch ?? "");
      const offset = old && old.epoch === epoch ? old.offset : 0;
      this._positions.set(key, { epoch, offset, floor: f.offset });
    }
    const event = { scope, reason: f.reason || "unknown", offset: f.offset, epoch: f.epoch };
    if (room) event.room = room.name;
    if (room) room._emit("recovery", event);
    this._emit("recovery", event);
  }

  _onMembership(f) {
    const event = { room: f.room, type: f.type, reason: f.reason };
    const room = this._rooms.get(f.room);
    if (room) room._emit("membership", event);
    this._emit("membership", event);
  }

  _onMessage(f) {
    const scope = f.scope;
    let room = null;
    if (scope === "room") {
      room = this._rooms.get(f.room);
      if (!room || (!room.joined && !this._opts.acceptUnjoinedRooms)) {
        return this._emitError(new HeraldError("unexpected_message", `message for room ${JSON.stringify(f.room)} not joined ignored`, { frame: f }));
      }
      if (room._resuming) return; // sent again after the join's reply (see _joinFrame)
    } else if (scope !== "user" && scope !== "all") {
      return this._emitError(new HeraldError("bad_frame", "message with an unknown scope ignored", { frame: f }));
    }
    if (f.ack === true && scope === "user" && typeof f.offset === "number") {
      // Acknowledged messages are compared with what was acknowledged (see AckedOffsets).
      const epoch = String(f.epoch ?? "");
      if (this._acked.has(epoch, f.offset)) {
        this.stats.duplicates++;
        this._sendAck(f).catch(() => {}); // acknowledged before: confirm again, quietly
        return;
      }
      if (this._ackInFlight.has(epoch + "\u0000" + f.offset)) { this.stats.duplicates++; return; } // being handled now
      this._isNew("user", { ...f, ack: false }); // moves the position forward if it is the newest
    } else if (scope !== "all" && !this._isNew(scope === "user" ? "user" : "room:" + room.name, f)) {
      this.stats.duplicates++;
      return;
    }
    this.stats.messages++;
    this._deliver(f, room);
  }

  /**
   * De-duplication: a message is new when its epoch differs from the remembered one (the
   * channel's history restarted) or its offset is past the last processed one. An `ack`
   * message is compared to what was really processed, not to a `recovered:false` floor.
   */
  _isNew(key, f) {
    if (typeof f.offset !== "number") return true; // no position to compare (older server)
    const epoch = String(f.epoch ?? "");
    const pos = this._positions.get(key);
    if (pos && pos.epoch === epoch) {
      const last = Math.max(pos.offset, pos.floor);
      if (f.offset <= last) return false;
      this._positions.set(key, { epoch, offset: f.offset, floor: pos.floor });
    } else {
      this._positions.set(key, { epoch, offset: f.offset, floor: 0 });
    }
    return true;
  }

  _deliver(f, room) {
    const msg = { scope: f.scope, data: f.data };
    if (f.room !== undefined) msg.room = f.room;
    if (f.from !== undefined) msg.from = f.from;
    if (f.offset !== undefined) msg.offset = f.offset;
    if (f.epoch !== undefined) msg.epoch = f.epoch;
    if (f.ts !== undefined) msg.ts = f.ts;
    if (f.ack === true) {
      let acked = null;
      const epoch = String(f.epoch ?? "");
      const inFlight = epoch + "\u0000" + f.offset;
      this._ackInFlight.add(inFlight);
      if (this._ackInFlight.size > 2000) this._ackInFlight.delete(this._ackInFlight.values().next().value);
      msg.needsAck = true;
      msg.ack = () => (acked ??= this._sendAck(f).then((reply) => {
        this._acked.add(epoch, f.offset);
        this._ackInFlight.delete(inFlight);
        return reply;
      }));
    }
    const results = [...(room ? room._emit("message", msg) : []), ...this._emit("message", msg)];
    if (msg.ack && this._opts.autoAck) {
      // Acknowledge once every handler is done; a failed handler leaves the message
      // unacknowledged, so that the server sends it again on the next connection.
      const inFlight = String(f.epoch ?? "") + "\u0000" + f.offset;
      Promise.all(results).then(() => msg.ack(), () => { this._ackInFlight.delete(inFlight); }).catch((err) => this._emitError(err));
    }
  }

  _sendAck(f) {
    const frame = { type: "ack", offset: f.offset };
    if (f.epoch !== undefined) frame.epoch = f.epoch;
    return this._request("ack", () => frame, { internal: true });
  }

  // ---- requests ------------------------------------------------------------------------

  /**
   * Sends a request (`build()` makes the frame at send time, so a queued join carries the
   * position known when it leaves). While not connected it waits in the bounded queue.
   */
  _request(type, build, { room = null, internal = false } = {}) {
    if (this.state === "closed") return Promise.reject(new HeraldError("closed", "the client was closed"));
    if (!internal && this._pending.size >= this._opts.maxPendingRequests) {
      return Promise.reject(new HeraldError("too_many_requests", `more than ${this._opts.maxPendingRequests} requests pending`));
    }
    const connected = this.state === "connected";
    if (!connected && this._queue.length >= this._opts.maxQueuedRequests) {
      return Promise.reject(new HeraldError("queue_full", `more than ${this._opts.maxQueuedRequests} requests waiting for a connection`));
    }
    if (this.state === "idle") this.connect();
    return new Promise((resolve, reject) => {
      const req = { id: ++this._nextId, type, build, room, resolve, reject, sent: false };
      this._pending.set(req.id, req);
      req.timer = setTimeout(() => {
        if (type === "join" && room && req.sent) {
          this._lateJoins.set(req.id, room);
          if (this._lateJoins.size > 100) this._lateJoins.delete(this._lateJoins.keys().next().value);
        }
        this._settle(req);
        reject(new HeraldError("timeout", `no reply to ${type} within ${this._opts.requestTimeout} ms`));
      }, this._opts.requestTimeout);
      if (connected) this._write(req);
      else this._queue.push(req);
    });
  }

  _write(req) {
    let text;
    try {
      text = JSON.stringify({ ...req.build(), id: req.id });
    } catch (err) {
      this._settle(req);
      return req.reject(new HeraldError("bad_request", "data is not serialisable as JSON: " + err.message));
    }
    try {
      this._ws.send(text);
      req.sent = true;
    } catch {
      this._queue.push(req); // the socket is going away: its close event brings a new connection
    }
  }

  _flushQueue() {
    const queue = this._queue;
    this._queue = [];
    for (const req of queue) if (this._pending.has(req.id)) this._write(req);
  }

  /** Removes a request from the pending map and the queue. */
  _settle(req) {
    clearTimeout(req.timer);
    this._pending.delete(req.id);
    const i = this._queue.indexOf(req);
    if (i >= 0) this._queue.splice(i, 1);
  }

  /**
   * Requests sent on a connection that went away: idempotent ones wait for the next one
   * (front of the queue, in order); publish/send/broadcast/refresh may or may not have been
   * acted on, so they are rejected with `disconnected` and the application decides.
   */
  _requeueInFlight() {
    const retry = [];
    for (const req of this._pending.values()) {
      if (!req.sent) continue;
      if (IDEMPOTENT.has(req.type)) { req.sent = false; retry.push(req); } else {
        this._settle(req);
        req.reject(new HeraldError("disconnected", `the connection closed before the reply to ${req.type}`));
      }
    }
    this._queue = [...retry, ...this._queue];
  }

  _failAll(err) {
    for (const req of [...this._pending.values()]) {
      this._settle(req);
      req.reject(err);
    }
    this._queue = [];
  }

  // ---- tokens ----------------------------------------------------------------------------

  /** Refreshes a little before `expires` (seconds since the epoch) in case no warning comes. */
  _scheduleRefresh(expires) {
    this._clearTimer("refresh");
    if (typeof expires !== "number" || !this._opts.getToken) return;
    // At most half the remaining lifetime early, so short-lived tokens do not refresh in a loop.
    const remaining = expires * 1000 - Date.now();
    const delay = remaining - Math.min(this._opts.tokenRefreshMargin, remaining / 2);
    // setTimeout fires at once past 2^31 - 1 ms (24.8 days): wait that long, then look again.
    if (delay > MAX_TIMEOUT) return this._timer("refresh", MAX_TIMEOUT, () => this._scheduleRefresh(expires));
    this._timer("refresh", Math.max(1000, delay), () => this._refreshToken());
  }

  /**
   * Asks `getToken({reason: "refresh"})` for a fresh token and sends it on the open connection.
   * Resolves with the `refreshed` reply, or with null when getToken had none to give (it
   * returned null, undefined or ""; the application then shows `token_expiring` to its user).
   * Rejects with the server's `unauthorized` when the token is refused (the connection keeps
   * its current token), or `not_connected`.
   */
  refreshToken() {
    if (!this._opts.getToken) {
      return Promise.reject(new HeraldError("cannot_refresh", "no getToken() was given: a static token cannot be refreshed"));
    }
    if (this.state !== "connected") return Promise.reject(new HeraldError("not_connected", "refresh needs an open connection"));
    // One refresh at a time: a second call while one is under way shares its outcome.
    this._refreshing ??= (async () => {
      try {
        const token = await this._opts.getToken({ reason: "refresh" });
        if (typeof token !== "string" || !token) return null;
        const reply = await this._request("refresh", () => ({ type: "refresh", token }), { internal: true });
        this._emit("refreshed", reply);
        return reply;
      } finally {
        this._refreshing = null;
      }
    })();
    return this._refreshing;
  }

  /** A refresh nobody awaits (token_expiring, the timer): failures become `error` events. */
  _refreshToken() {
    if (!this._opts.getToken) {
      return this._emitError(new HeraldError("cannot_refresh", "the token expires soon and no getToken() was given to refresh it"));
    }
    if (this.state !== "connected") return;
    this.refreshToken().catch((err) => {
      // The server closes with 4001 `token expired` if no refresh succeeds; we then
      // reconnect once with a fresh token.
      this._emitError(new HeraldError(err.code || "token_failed", "token refresh failed: " + err.message, { cause: err }));
    });
  }

  // ---- heartbeat ------------------------------------------------------------------------

  /**
   * JavaScript cannot see WebSocket pings, so liveness is "any frame received": after
   * `heartbeat` seconds of silence send a JSON ping; if nothing arrives within
   * `pongTimeout`, the connection is considered dead.
   */
  _startHeartbeat() {
    const interval = (this._opts.heartbeat || (this.welcome.heartbeat || 25) * 1000);
    this._lastRx = Date.now();
    const check = () => {
      const ws = this._ws;
      const idle = Date.now() - this._lastRx;
      if (idle < interval) return this._timer("heartbeat", interval - idle, check);
      const sentAt = Date.now();
      this._pingId = ++this._nextId;
      try { ws.send(JSON.stringify({ type: "ping", id: this._pingId })); } catch { /* close event follows */ }
      this._timer("heartbeat", this._opts.pongTimeout, () => {
        if (this._lastRx >= sentAt) return check();
        this._lost(ws, 4000, "heartbeat timeout: nothing received");
      });
    };
    this._timer("heartbeat", interval, check);
  }

  // ---- helpers --------------------------------------------------------------------------

  _setState(state, info) {
    const previous = this.state;
    this.state = state;
    if (state !== "connected") this.welcome = state === "closed" ? this.welcome : null;
    this._emit("state", { state, previous, ...info });
  }

  _timer(name, ms, fn) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(() => { delete this._timers[name]; fn(); }, ms);
  }

  _clearTimer(name) {
    clearTimeout(this._timers[name]);
    delete this._timers[name];
  }

  _clearTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }

  _emitError(err) {
    if (this._has("error")) this._emit("error", err);
  }

  _listenerError(err, event) {
    if (event === "error") return; // never loop; an error listener's own failure is dropped
    this._emitError(new HeraldError("listener_error", `a "${event}" listener threw: ${err && err.message}`, { cause: err }));
  }
}

export default Herald;
