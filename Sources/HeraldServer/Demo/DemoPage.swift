/// The demo chat page served at `GET /`: one self-contained HTML document (no build step, no CDN).
enum DemoPage {
    static let html: String = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Herald demo chat</title>
<link rel="icon" href="data:,"><!-- no /favicon.ico request -->
<style>
  :root {
    --bg: #f4f5f7; --panel: #ffffff; --text: #1d2330; --muted: #6b7385; --line: #dfe2e8;
    --accent: #3b6fe0; --accent-text: #ffffff; --ok: #1f9d55; --warn: #c98a06; --bad: #d0353f;
    --mine: #eef3ff; --radius: 8px;
    color-scheme: light dark;
  }
  @media (prefers-color-scheme: dark) {
    :root {
      --bg: #15181e; --panel: #1d2129; --text: #e4e7ee; --muted: #8d95a8; --line: #30353f;
      --accent: #5b8cff; --mine: #222b3d;
    }
  }
  * { box-sizing: border-box; }
  body {
    margin: 0; background: var(--bg); color: var(--text);
    font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  }
  header {
    display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem;
    padding: .75rem 1.25rem; background: var(--panel); border-bottom: 1px solid var(--line);
  }
  h1 { font-size: 1.15rem; margin: 0; letter-spacing: .02em; }
  h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 1rem 0 .4rem; }
  code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
  #whoami { color: var(--muted); font-size: .85rem; }
  #retry { color: var(--muted); font-size: .85rem; }
  .badge {
    display: inline-block; padding: .1rem .6rem; border-radius: 999px; font-size: .8rem; font-weight: 600;
    color: #fff; background: var(--muted);
  }
  .badge.connected { background: var(--ok); }
  .badge.connecting { background: var(--warn); }
  .badge.disconnected { background: var(--bad); }
  form { display: flex; gap: .5rem; margin: 0; }
  input {
    flex: 1; min-width: 0; padding: .45rem .6rem; font: inherit; color: inherit;
    background: var(--bg); border: 1px solid var(--line); border-radius: var(--radius);
  }
  input:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
  button {
    padding: .45rem .9rem; font: inherit; font-weight: 600; cursor: pointer;
    color: var(--accent-text); background: var(--accent); border: 0; border-radius: var(--radius);
  }
  button.secondary { color: var(--text); background: transparent; border: 1px solid var(--line); }
  #connect-form { flex: 1 1 32rem; justify-content: flex-end; }
  #connect-form #name { flex: 0 1 10rem; }
  #error {
    margin: .75rem 1.25rem 0; padding: .5rem .8rem; border-radius: var(--radius); cursor: pointer;
    color: var(--bad); background: color-mix(in srgb, var(--bad) 12%, transparent);
    border: 1px solid color-mix(in srgb, var(--bad) 40%, transparent);
  }
  main {
    display: grid; grid-template-columns: 15rem 1fr; gap: 1rem;
    padding: 1rem 1.25rem; height: calc(100vh - 4.5rem); min-height: 24rem;
  }
  @media (max-width: 700px) { main { grid-template-columns: 1fr; height: auto; } #log { height: 50vh; } }
  aside, .chat {
    background: var(--panel); border: 1px solid var(--line); border-radius: var(--radius); padding: .25rem .9rem .9rem;
  }
  aside { overflow: auto; }
  .chat { display: flex; flex-direction: column; gap: .6rem; padding-top: .9rem; min-height: 0; }
  ul { list-style: none; margin: 0; padding: 0; }
  #rooms { margin-top: .5rem; }
  #rooms li { display: flex; align-items: center; gap: .25rem; margin: .15rem 0; }
  #rooms .select {
    flex: 1; text-align: left; font-weight: 500; color: var(--text); background: transparent; padding: .3rem .5rem;
  }
  #rooms li.current .select { background: var(--mine); color: var(--accent); }
  /* A room not (yet) confirmed by the server on this connection is shown dimmed. */
  #rooms li:not(.joined) .select { opacity: .55; font-style: italic; }
  #rooms .leave { color: var(--muted); background: transparent; padding: .2rem .5rem; font-weight: 400; }
  #rooms .leave:hover { color: var(--bad); }
  .hint { color: var(--muted); font-size: .85rem; margin: .3rem 0; }
  #online li { padding: .15rem .5rem; }
  #online li::before { content: "\25CF"; color: var(--ok); margin-right: .45rem; font-size: .7rem; vertical-align: middle; }
  #online li.me { font-weight: 600; }
  #log {
    flex: 1; min-height: 8rem; overflow-y: auto; padding: .25rem;
    border: 1px solid var(--line); border-radius: var(--radius); background: var(--bg);
  }
  #log > div { padding: .2rem .5rem; border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere; }
  /* The time is drawn from a data attribute so it is not part of the element's text. */
  #log > div::before { content: attr(data-time); color: var(--muted); font-size: .75rem; margin-right: .6rem; }
  #log .msg.mine { background: var(--mine); }
  #log .msg .scope { color: var(--accent); }
  #log .msg .from { font-weight: 600; }
  #log .sys { color: var(--muted); font-size: .85rem; }
  #log .err { color: var(--bad); font-size: .9rem; }
  #log .sent { color: var(--muted); }
  #log .sent.ok::after { content: " \2713"; color: var(--ok); }
  #log .sent.failed { color: var(--bad); text-decoration: line-through; }
  #current-room { align-self: center; color: var(--muted); white-space: nowrap; }
  #dm-form #to-user { flex: 0 1 9rem; }
</style>
</head>
<body>
<header>
  <h1>Herald</h1>
  <span id="state" class="badge disconnected">disconnected</span>
  <span id="retry"></span>
  <span id="whoami">user <b id="me-user">&ndash;</b> &middot; connection <code id="me-connection">&ndash;</code>
    &middot; node <code id="me-node">&ndash;</code></span>
  <form id="connect-form" autocomplete="off">
    <input id="name" placeholder="your name" maxlength="200" spellcheck="false" aria-label="name">
    <input id="token" type="text" placeholder="JWT (optional)" spellcheck="false" aria-label="token">
    <button id="connect" type="submit">Connect</button>
    <button id="disconnect" type="button" class="secondary">Disconnect</button>
  </form>
</header>
<div id="error" role="alert" title="click to dismiss" hidden></div>
<main>
  <aside>
    <h2>Rooms</h2>
    <form id="join-form" autocomplete="off">
      <input id="room" placeholder="room" maxlength="200" spellcheck="false" aria-label="room">
      <button id="join" type="submit">Join</button>
    </form>
    <p id="rooms-empty" class="hint">No rooms yet: join one.</p>
    <ul id="rooms"></ul>
    <h2>Online in <span id="online-room">&ndash;</span></h2>
    <p id="online-summary" class="hint"></p>
    <ul id="online"></ul>
  </aside>
  <section class="chat">
    <div id="log" aria-live="polite"></div>
    <form id="message-form" autocomplete="off">
      <span id="current-room">no room</span>
      <input id="message" placeholder="message to the room (Enter sends)" aria-label="message">
      <button id="send" type="submit">Send</button>
    </form>
    <form id="dm-form" autocomplete="off">
      <input id="to-user" placeholder="to user" spellcheck="false" aria-label="to user">
      <input id="dm" placeholder="direct message (Enter sends)" aria-label="direct message">
      <button id="send-dm" type="submit">Send direct</button>
    </form>
  </section>
</main>
<script>
(() => {
  'use strict';

  // Everything that comes from the network or from storage is untrusted: it only ever
  // reaches the page through textContent / createTextNode, never innerHTML.

  const $ = (id) => document.getElementById(id);
  const ui = {
    name: $('name'), token: $('token'), connectForm: $('connect-form'), disconnect: $('disconnect'),
    state: $('state'), retry: $('retry'), error: $('error'),
    meUser: $('me-user'), meConnection: $('me-connection'), meNode: $('me-node'),
    joinForm: $('join-form'), room: $('room'), rooms: $('rooms'), roomsEmpty: $('rooms-empty'),
    onlineRoom: $('online-room'), onlineSummary: $('online-summary'), online: $('online'),
    log: $('log'), messageForm: $('message-form'), message: $('message'), currentRoom: $('current-room'),
    dmForm: $('dm-form'), toUser: $('to-user'), dm: $('dm'),
  };

  const BACKOFF_START_MS = 250;
  const BACKOFF_CAP_MS = 5000;
  const RESTART_DELAY_MS = 250;   // after close code 1012 (server restarting)
  const PRESENCE_EVERY_MS = 3000;
  const LOG_LIMIT = 500;          // oldest log lines are dropped beyond this

  // ---- storage -------------------------------------------------------------------------
  // localStorage can throw (disabled storage, private modes): the page then simply forgets.
  const store = {
    get(key, fallback) {
      try { const v = localStorage.getItem(key); return v === null ? fallback : JSON.parse(v); }
      catch (_) { return fallback; }
    },
    set(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* ignore */ } },
  };
  // The token is a credential: it is kept only in sessionStorage (this tab, until it is
  // closed) so that a reload reconnects, but it is never written to localStorage.
  const tokenStore = {
    get() { try { return sessionStorage.getItem('herald.token') || ''; } catch (_) { return ''; } },
    set(t) {
      try { if (t) sessionStorage.setItem('herald.token', t); else sessionStorage.removeItem('herald.token'); }
      catch (_) { /* ignore */ }
    },
  };

  // ---- state ---------------------------------------------------------------------------
  let ws = null;              // the current socket, if any
  let generation = 0;         // bumped for every socket: events of older sockets are ignored
  let wantConnected = false;  // false after Disconnect or an authentication failure
  let attempt = 0;            // failed attempts since the last welcome (drives the backoff)
  let retryTimer = null;
  let retryTick = null;
  let presenceTimer = null;
  let presenceOn = true;      // switched off after a presence error until the next join/welcome
  let me = null;              // the welcome frame of the current connection
  let nextId = 1;
  const pending = new Map();  // request id -> what it was, to interpret the reply

  // The server is the judge of names (it answers bad_request); this only weeds out junk
  // from storage and empty input.
  const isName = (v) => typeof v === 'string' && v.length > 0 && v.length <= 200;
  let rooms = store.get('herald.rooms', []);  // rooms the user wants to be in, in order
  if (!Array.isArray(rooms)) rooms = [];
  rooms = rooms.filter(isName).filter((r, i, all) => all.indexOf(r) === i);
  let current = store.get('herald.current', null);
  if (!rooms.includes(current)) current = rooms.length ? rooms[0] : null;
  const joined = new Set();   // rooms the server confirmed on the current connection

  const saveRooms = () => { store.set('herald.rooms', rooms); store.set('herald.current', current); };

  // ---- rendering -----------------------------------------------------------------------
  function setState(s) {
    ui.state.textContent = s;
    ui.state.className = 'badge ' + s;
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = false;
  }
  function clearError() {
    ui.error.textContent = '';
    ui.error.hidden = true;
  }

  function timeNow() {
    const d = new Date();
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  }

  // Appends one log line; `parts` are strings or [className, text] pairs.
  function logLine(cls, ...parts) {
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    const el = document.createElement('div');
    el.className = cls;
    el.dataset.time = timeNow();
    for (const p of parts) {
      if (Array.isArray(p)) {
        const span = document.createElement('span');
        span.className = p[0];
        span.textContent = p[1];
        el.appendChild(span);
      } else {
        el.appendChild(document.createTextNode(p));
      }
    }
    ui.log.appendChild(el);
    while (ui.log.childElementCount > LOG_LIMIT) ui.log.firstElementChild.remove();
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
    return el;
  }
  const logSys = (text) => logLine('sys', text);

  function renderMe() {
    ui.meUser.textContent = me ? String(me.user) : '\u2013';
    ui.meConnection.textContent = me ? String(me.connection) : '\u2013';
    ui.meNode.textContent = me ? String(me.node) : '\u2013';
  }

  function renderRooms() {
    ui.rooms.replaceChildren();
    for (const room of rooms) {
      const li = document.createElement('li');
      li.dataset.room = room;
      li.classList.toggle('joined', joined.has(room));
      li.classList.toggle('current', room === current);
      const select = document.createElement('button');
      select.type = 'button';
      select.className = 'select';
      select.textContent = '#' + room;
      select.title = joined.has(room) ? 'post to ' + room : 'not joined on this connection yet';
      select.addEventListener('click', () => selectRoom(room));
      const leave = document.createElement('button');
      leave.type = 'button';
      leave.className = 'leave';
      leave.textContent = '\u00d7';
      leave.title = 'leave ' + room;
      leave.addEventListener('click', () => leaveRoom(room));
      li.append(select, leave);
      ui.rooms.appendChild(li);
    }
    ui.roomsEmpty.hidden = rooms.length > 0;
    ui.currentRoom.textContent = current ? '#' + current : 'no room';
    ui.onlineRoom.textContent = current || '\u2013';
  }

  function clearPresence(note) {
    ui.online.replaceChildren();
    ui.onlineSummary.textContent = note || '';
  }

  function renderPresence(f) {
    if (f.room !== current) return;  // a late reply for a room no longer shown
    const online = Array.isArray(f.online) ? f.online.map(String) : [];
    const members = Array.isArray(f.members) ? f.members : [];
    ui.online.replaceChildren();
    for (const user of [...new Set(online)].sort()) {
      const li = document.createElement('li');
      li.className = 'user';
      li.textContent = user;
      if (me && user === me.user) li.classList.add('me');
      ui.online.appendChild(li);
    }
    ui.onlineSummary.textContent = online.length + ' online \u00b7 ' + members.length +
      (members.length === 1 ? ' member' : ' members');
  }

  // `data` may be any JSON value; a chat message is an object with a string `text`.
  function dataText(data) {
    if (data && typeof data === 'object' && !Array.isArray(data) && typeof data.text === 'string') return data.text;
    const json = JSON.stringify(data);
    return json === undefined ? String(data) : json;
  }

  function renderDelivery(f) {
    if ((f.scope === 'room' || f.scope === 'user') && typeof f.offset === 'number' && typeof f.epoch === 'string') {
      const key = f.scope === 'room' ? f.room : USER_CHANNEL;
      const seen = positions.get(key);
      // A message already shown (replayed and live at once) is not shown twice.
      if (seen && seen.epoch === f.epoch && f.offset <= seen.offset) return;
      positions.set(key, { offset: f.offset, epoch: f.epoch, user: me && me.user });
    }
    let scope;
    if (f.scope === 'room') scope = String(f.room);
    else if (f.scope === 'user') scope = 'direct';
    else if (f.scope === 'all') scope = 'all';
    else scope = String(f.scope);
    const from = typeof f.from === 'string' ? f.from : '(server)';  // no `from`: published over HTTP
    const el = logLine('msg', ['scope', '[' + scope + ']'], ' ', ['from', from], ': ', ['text', dataText(f.data)]);
    el.dataset.scope = String(f.scope);
    if (me && from === me.user) el.classList.add('mine');
  }

  // ---- sending -------------------------------------------------------------------------
  const isOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;

  // Sends `frame` with a fresh id and remembers `what` it was; returns the id, or null.
  function request(frame, what) {
    if (!isOpen()) return null;
    const id = nextId++;
    ws.send(JSON.stringify(Object.assign({}, frame, { id })));
    pending.set(id, what);
    // Replies normally always come; this only bounds the map if a server drops some.
    if (pending.size > 1000) pending.delete(pending.keys().next().value);
    return id;
  }

  function localError(text) {
    showError(text);
    logLine('err', text);
  }

  // The last position seen in each room: a re-join asks for everything after it (recovery).
  const positions = new Map();
  const USER_CHANNEL = '\u0000direct';  // positions' key for the user's own channel (no room has it)
  const sendJoin = (room) => {
    const since = positions.get(room);
    request(since ? { type: 'join', room, since } : { type: 'join', room }, { kind: 'join', room });
  };

  function requestPresence() {
    if (!presenceOn || !current || !joined.has(current)) return;
    request({ type: 'presence', room: current }, { kind: 'presence', room: current });
  }

  function joinRoom(room) {
    if (!isName(room)) { localError('Type a room name first.'); return; }
    if (!rooms.includes(room)) rooms.push(room);
    current = room;
    saveRooms();
    clearPresence();
    renderRooms();
    if (isOpen()) sendJoin(room);
    else logSys('will join ' + room + ' once connected');
  }

  function leaveRoom(room) {
    rooms = rooms.filter((r) => r !== room);
    joined.delete(room);
    if (current === room) {
      current = rooms.length ? rooms[0] : null;
      clearPresence();
      presenceOn = true;
      requestPresence();
    }
    saveRooms();
    renderRooms();
    request({ type: 'leave', room }, { kind: 'leave', room });
  }

  function selectRoom(room) {
    if (current === room) return;
    current = room;
    saveRooms();
    renderRooms();
    clearPresence();
    presenceOn = true;
    requestPresence();
    ui.message.focus();
  }

  function sendMessage() {
    const text = ui.message.value;
    if (!text.trim()) return;
    if (!current) { localError('Join a room first.'); return; }
    if (!isOpen()) { localError('Not connected: the message was not sent.'); return; }
    request({ type: 'publish', room: current, data: { text } }, { kind: 'publish', room: current });
    ui.message.value = '';
  }

  function sendDirect() {
    const user = ui.toUser.value.trim();
    const text = ui.dm.value;
    if (!user) { localError('Whom to? Fill in the user.'); ui.toUser.focus(); return; }
    if (!text.trim()) return;
    if (!isOpen()) { localError('Not connected: the message was not sent.'); return; }
    // The sender gets no delivery of a direct message, so it is echoed locally (class
    // `sent`, not `msg`) and ticked when the server answers `ok`.
    const echo = logLine('sent', ['scope', '[to ' + user + ']'], ' you: ', ['text', text]);
    request({ type: 'send', user, data: { text } }, { kind: 'send', user, echo });
    ui.dm.value = '';
  }

  // ---- receiving -----------------------------------------------------------------------
  function onFrame(raw) {
    let f;
    try { f = JSON.parse(raw); } catch (_) { f = null; }
    if (!f || typeof f !== 'object' || Array.isArray(f)) {
      logLine('err', 'unreadable frame: ' + String(raw).slice(0, 200));
      return;
    }
    let what;
    if (typeof f.id === 'number' && pending.has(f.id)) {
      what = pending.get(f.id);
      pending.delete(f.id);
    }
    switch (f.type) {
      case 'welcome': onWelcome(f); break;
      case 'joined':
        if (f.recovered === false) {
          logSys('missed messages in ' + f.room + ' could not be recovered (' + f.reason + '): reload the history from your own store');
        }
        if (typeof f.offset === 'number' && typeof f.epoch === 'string' && f.recovered === false) {
          positions.set(f.room, { offset: f.offset, epoch: f.epoch });
        }
        if (rooms.includes(f.room)) {
          joined.add(f.room);
          renderRooms();
          if (f.room === current) { presenceOn = true; requestPresence(); }
        }
        logSys('joined ' + f.room);
        break;
      case 'left': logSys('left ' + f.room); break;
      case 'ok': if (what && what.echo) what.echo.classList.add('ok'); break;
      case 'presence': renderPresence(f); break;
      case 'message': renderDelivery(f); break;
      case 'error': onServerError(f, what); break;
      default: logSys('unknown frame: ' + String(raw).slice(0, 200));
    }
  }

  function onWelcome(f) {
    me = f;
    attempt = 0;
    setState('connected');
    clearError();
    renderMe();
    logSys('welcome ' + f.user + ' (connection ' + f.connection + ' on node ' + f.node +
           ', heartbeat ' + f.heartbeat + ' s)');
    if (f.recovered === false) {
      logSys('missed direct messages could not be recovered (' + f.reason + ')');
      positions.set(USER_CHANNEL, { offset: f.offset, epoch: f.epoch, user: f.user });
    }
    // The server may have lost every membership (restart, another node): join them all again.
    joined.clear();
    renderRooms();
    for (const room of rooms) sendJoin(room);
    presenceOn = true;
    clearInterval(presenceTimer);
    presenceTimer = setInterval(requestPresence, PRESENCE_EVERY_MS);
  }

  function onServerError(f, what) {
    const code = typeof f.code === 'string' ? f.code : 'error';
    const message = typeof f.message === 'string' ? f.message : '';
    let context = '';
    if (what) context = what.kind + (what.room ? ' ' + what.room : what.user ? ' to ' + what.user : '') + ': ';
    const text = context + code + (message ? ' \u2013 ' + message : '');
    showError(text);
    logLine('err', text);
    if (!what) return;
    if (what.echo) what.echo.classList.add('failed');
    if (what.kind === 'join' && code !== 'rate_limited') {
      // Refused (forbidden, bad name, too many rooms): do not try it again on every reconnect.
      rooms = rooms.filter((r) => r !== what.room);
      if (current === what.room) current = rooms.length ? rooms[0] : null;
      saveRooms();
      renderRooms();
    } else if (what.kind === 'publish' && code === 'not_a_member' && rooms.includes(what.room)) {
      // The server forgot the membership: join again so the next message goes through.
      joined.delete(what.room);
      renderRooms();
      sendJoin(what.room);
    } else if (what.kind === 'presence') {
      // E.g. a server without presence: stop asking every 3 s until the next join or welcome.
      presenceOn = false;
      clearPresence('presence unavailable (' + code + ')');
    }
  }

  // ---- connection ----------------------------------------------------------------------
  function wsURL(name, token) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let query = token ? 'token=' + encodeURIComponent(token) : 'user=' + encodeURIComponent(name);
    // Resume the direct messages too: the server replays those sent while we were away.
    const direct = positions.get(USER_CHANNEL);
    if (direct && direct.user === name) {
      query += '&since_offset=' + direct.offset + '&since_epoch=' + encodeURIComponent(direct.epoch);
    }
    return scheme + '//' + location.host + '/ws?' + query;
  }

  // Called whenever the current connection is gone, whatever the reason.
  function connectionLost() {
    clearInterval(presenceTimer);
    presenceTimer = null;
    me = null;
    joined.clear();
    pending.clear();
    renderMe();
    renderRooms();
    clearPresence();
  }

  function cancelRetry() {
    clearTimeout(retryTimer);
    clearInterval(retryTick);
    retryTimer = retryTick = null;
    ui.retry.textContent = '';
  }

  // Closes the current socket, if any, without triggering a reconnect.
  function dropSocket() {
    if (!ws) return;
    const old = ws;
    ws = null;
    generation++;
    try { old.close(1000, 'client closed'); } catch (_) { /* already closed */ }
    connectionLost();
  }

  function openSocket() {
    cancelRetry();
    dropSocket();
    const name = ui.name.value.trim();
    const token = ui.token.value.trim();
    const gen = ++generation;
    setState('connecting');
    let socket;
    try {
      socket = new WebSocket(wsURL(name, token));
    } catch (e) {
      wantConnected = false;
      setState('disconnected');
      localError('Cannot connect: ' + e.message);
      return;
    }
    ws = socket;
    socket.onmessage = (ev) => { if (gen === generation) onFrame(ev.data); };
    // `error` is always followed by `close`, which does the work.
    socket.onclose = (ev) => { if (gen === generation) onClose(ev); };
  }

  function onClose(ev) {
    ws = null;
    connectionLost();
    logClose('connection closed: code ' + ev.code + (ev.reason ? ' \u2013 ' + ev.reason : ''));
    setState('disconnected');
    if (ev.code === 4001) {
      // Authentication failed (token missing, malformed, bad signature, expired):
      // retrying with the same credentials cannot help.
      wantConnected = false;
      showError('Authentication failed: ' + (ev.reason || 'no reason given'));
      return;
    }
    if (!wantConnected) return;
    let delay;
    if (ev.code === 1012) {
      // The server is restarting: come back soon, then back off if it is not up yet.
      delay = RESTART_DELAY_MS * (0.8 + 0.4 * Math.random());
      attempt = 1;
    } else {
      // Exponential backoff with +-20% jitter, so that many clients do not come back at once.
      const base = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** attempt);
      delay = Math.min(BACKOFF_CAP_MS, base * (0.8 + 0.4 * Math.random()));
      attempt++;
    }
    scheduleReconnect(delay);
  }

  // Logs a close; while the server stays down, repeats of the same close are counted on
  // one line instead of adding a line every few seconds.
  function logClose(text) {
    const last = ui.log.lastElementChild;
    if (last && last.dataset.close === text) {
      const n = Number(last.dataset.repeat) + 1;
      last.dataset.repeat = String(n);
      last.dataset.time = timeNow();
      last.textContent = text + ' (\u00d7' + n + ')';
      return;
    }
    const el = logSys(text);
    el.dataset.close = text;
    el.dataset.repeat = '1';
  }

  function scheduleReconnect(delay) {
    cancelRetry();
    const at = Date.now() + delay;
    const show = () => {
      ui.retry.textContent = 'reconnecting in ' + Math.max(0, (at - Date.now()) / 1000).toFixed(1) + ' s';
    };
    show();
    retryTick = setInterval(show, 100);
    retryTimer = setTimeout(() => { cancelRetry(); openSocket(); }, delay);
  }

  function connect() {
    const name = ui.name.value.trim();
    const token = ui.token.value.trim();
    if (!name && !token) { localError('Choose a name (or paste a token) first.'); ui.name.focus(); return; }
    store.set('herald.name', name);
    tokenStore.set(token);
    wantConnected = true;
    attempt = 0;
    openSocket();
  }

  function disconnect() {
    wantConnected = false;
    cancelRetry();
    if (ws) { dropSocket(); logSys('disconnected'); }
    setState('disconnected');
  }

  // ---- wiring --------------------------------------------------------------------------
  const onSubmit = (form, fn) => form.addEventListener('submit', (ev) => { ev.preventDefault(); fn(); });
  onSubmit(ui.connectForm, connect);
  onSubmit(ui.joinForm, () => { joinRoom(ui.room.value.trim()); ui.room.value = ''; });
  onSubmit(ui.messageForm, sendMessage);
  onSubmit(ui.dmForm, sendDirect);
  ui.disconnect.addEventListener('click', disconnect);
  ui.error.addEventListener('click', clearError);
  // Back online after a network outage: do not wait for the rest of the backoff.
  window.addEventListener('online', () => { if (wantConnected && retryTimer) { cancelRetry(); openSocket(); } });

  const savedName = store.get('herald.name', '');
  ui.name.value = typeof savedName === 'string' ? savedName : '';
  ui.token.value = tokenStore.get();
  renderMe();
  renderRooms();
  if (ui.name.value || ui.token.value) connect();  // a reload reconnects
  else ui.name.focus();
})();
</script>
</body>
</html>
"""#
}
