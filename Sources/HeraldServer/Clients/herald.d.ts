// Hand-written declarations of herald.js (the official JavaScript client of Herald).

/** The WebSocket constructor the client uses (WHATWG-compatible). */
export interface WebSocketLike {
  binaryType?: string;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface HeraldOptions {
  /** Development mode: the user name (sent as `?user=`). */
  user?: string;
  /** A static token (sent as `?token=`); cannot be refreshed. */
  token?: string;
  /**
   * Called for every connection (`reason: "connect"`) and before the token expires
   * (`"refresh"`); may be async. For a refresh, null, undefined or "" means "no fresh token
   * now": nothing is sent (the connection closes with 4001 at expiry unless one comes).
   */
  getToken?: (context: { reason: "connect" | "refresh" }) => string | null | undefined | Promise<string | null | undefined>;
  /** WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Backoff base in ms (default 250): delay = random(0, min(max, min * 2^attempt)). */
  minReconnectDelay?: number;
  /** Backoff cap in ms (default 8000). */
  maxReconnectDelay?: number;
  /** Reset the backoff after a connection stayed up this long, ms (default 5000). */
  resetBackoffAfter?: number;
  /** A request not answered within this is rejected with `timeout`, ms (default 10000). Counts from the call, queued time included. */
  requestTimeout?: number;
  /** A connection that has not sent its welcome within this is dropped and retried, ms (default 10000). */
  connectTimeout?: number;
  /** Silence before a JSON ping, ms (default: the welcome's `heartbeat`). */
  heartbeat?: number;
  /** After a ping, silence before the connection is considered dead, ms (default 5000). */
  pongTimeout?: number;
  /** Refresh the token at most this long before `expires` (default 30000 ms; at most half its remaining life). */
  tokenRefreshMargin?: number;
  /** Requests awaiting a reply (default 1000); more are rejected with `too_many_requests`. */
  maxPendingRequests?: number;
  /** Requests waiting for a connection (default 100); more are rejected with `queue_full`. */
  maxQueuedRequests?: number;
  /** Remembered channel positions (default 10000); the least recently used is forgotten. */
  maxPositions?: number;
  /** Listeners per event (default 1000); more throw `too_many_listeners`. */
  maxListeners?: number;
  /** Acknowledge `ack:true` messages once the handlers are done (default true). */
  autoAck?: boolean;
  /** Ask for presence events (`presence` room events) of the rooms the server watches (default true). */
  presenceEvents?: boolean;
  /** Deliver room messages of rooms the application did not join (e.g. backend grants); default false: reported as `unexpected_message` errors. */
  acceptUnjoinedRooms?: boolean;
  /** Random source in [0, 1) for jitter (tests). */
  random?: () => number;
}

export type ErrorCode =
  | "forbidden" | "not_a_member" | "bad_request" | "unauthorized" | "rate_limited" | "limit_exceeded" | "unavailable"
  | "timeout" | "closed" | "disconnected" | "queue_full" | "too_many_requests" | "too_many_listeners"
  | "bad_frame" | "unknown_reply" | "unexpected_message" | "listener_error" | "cannot_refresh"
  | "token_failed" | "connect_failed" | "not_connected"
  | (string & {});

/** Rejections and `error` events. */
export class HeraldError extends Error {
  constructor(code: string, message?: string, details?: object);
  readonly code: ErrorCode;
  /** For `closed`/`unauthorized` after a fatal close. */
  closeCode?: number;
  closeReason?: string;
  /** The server frame involved, when there is one. */
  frame?: unknown;
  room?: string;
  cause?: unknown;
}

export type State = "idle" | "connecting" | "connected" | "disconnected" | "closed";

export interface StateEvent {
  state: State;
  previous: State;
  /** Close code and reason of the connection that ended (disconnected, closed). */
  code?: number;
  reason?: string;
  /** disconnected: ms until the next attempt. */
  delay?: number;
  attempt?: number;
}

export interface Welcome {
  type: "welcome";
  user: string;
  connection: string;
  node: string;
  heartbeat: number;
  expires?: number;
  recovered?: boolean;
  reason?: string;
  offset?: number;
  epoch?: string;
  /** Rooms (names, `prefix*`) whose presence events the server sends, when asked for. */
  presence_events?: string[];
  [field: string]: unknown;
}

export interface Message<T = unknown> {
  scope: "room" | "user" | "all";
  room?: string;
  from?: string;
  data: T;
  offset?: number;
  epoch?: string;
  /** Server time, ms since 1970, when the server sends it. */
  ts?: number;
  /** True on messages sent with `ack`. */
  needsAck?: true;
  /** Present on `ack` messages: acknowledges once (idempotent); resolves on the server's `ok`. */
  ack?: () => Promise<Reply>;
}

export interface RecoveryEvent {
  scope: "room" | "user";
  room?: string;
  /** `history_expired`, `epoch_changed`, `offset_ahead`, `invalid_position`, ... */
  reason: string;
  /** The channel's position the client continues from. */
  offset?: number;
  epoch?: string;
}

export interface MembershipEvent {
  room: string;
  type: "joined" | "left";
  reason?: string;
}

export interface Reply {
  type: string;
  id: number;
  [field: string]: unknown;
}

export interface Position { offset: number; epoch: string }

type Listener<T> = (event: T) => void | Promise<void>;

export interface HeraldEvents {
  state: StateEvent;
  welcome: Welcome;
  message: Message;
  recovery: RecoveryEvent;
  membership: MembershipEvent;
  token_expiring: { type: "token_expiring"; expires: number };
  refreshed: Reply & { expires?: number };
  error: HeraldError;
}

export interface RoomEvents {
  /** Every `joined` reply for the room: the application's join and the re-joins after each welcome. */
  joined: Reply & { room: string; recovered?: boolean; reason?: string; offset?: number; epoch?: string };
  message: Message;
  recovery: RecoveryEvent;
  membership: MembershipEvent;
  presence: PresenceEvent;
}

/** A room's presence as the server's presence events keep it: after a join, and after each change. */
export interface PresenceEvent {
  room: string;
  members: string[];
  online: string[];
  /** Token `info` claims of the users the server told about, by user. */
  info: Record<string, Record<string, string>>;
  /** What changed, for a change (absent for the state sent after a join). `omitted` counts names the server left out of a mass change. */
  change?: { joined: string[]; left: string[]; online: string[]; offline: string[]; omitted: number };
}

export class Room {
  readonly client: Herald;
  readonly name: string;
  /** True between `join()` and `leave()`: the room is re-joined after every welcome. */
  joined: boolean;
  /** Last processed position, if any. */
  readonly position: Position | undefined;
  join(): Promise<Reply>;
  leave(): Promise<Reply>;
  publish(data: unknown): Promise<Reply>;
  presence(): Promise<{ members: string[]; online: string[] }>;
  /** Whether the server sends this room's presence events (from the last welcome). */
  readonly presenceEvents: boolean;
  /** Kept by presence events; empty until the first `presence` event. */
  readonly members: Set<string>;
  readonly online: Set<string>;
  readonly info: Map<string, Record<string, string>>;
  on<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): () => void;
  once<K extends keyof RoomEvents>(event: K, fn: Listener<RoomEvents[K]>): () => void;
  off<K extends keyof RoomEvents>(event: K, fn?: Listener<RoomEvents[K]>): void;
}

export class Herald {
  constructor(url: string | string[], options: HeraldOptions);
  readonly state: State;
  /** The current connection's welcome (null while not connected). */
  readonly welcome: Welcome | null;
  readonly stats: { connectAttempts: number; welcomes: number; messages: number; duplicates: number };
  /** Sizes of the bounded internal structures. */
  readonly sizes: { pending: number; queued: number; positions: number; rooms: number };
  /** Last processed position of the user channel, if any. */
  readonly userPosition: Position | undefined;
  /** Resolves on the first welcome; rejects if the client stops for good before. */
  connect(): Promise<Welcome>;
  /** Stops for good; pending and queued requests are rejected with `closed`. */
  close(): void;
  room(name: string): Room;
  send(user: string, data: unknown): Promise<Reply>;
  broadcast(data: unknown): Promise<Reply>;
  /**
   * Refreshes the token on the open connection now (getToken with reason "refresh"); resolves
   * with the `refreshed` reply, or null when getToken had no token to give.
   */
  refreshToken(): Promise<(Reply & { expires?: number }) | null>;
  on<K extends keyof HeraldEvents>(event: K, fn: Listener<HeraldEvents[K]>): () => void;
  once<K extends keyof HeraldEvents>(event: K, fn: Listener<HeraldEvents[K]>): () => void;
  off<K extends keyof HeraldEvents>(event: K, fn?: Listener<HeraldEvents[K]>): void;
}

/** Full-jitter backoff: random(0, min(cap, base * 2^attempt)) ms. */
export function backoffDelay(attempt: number, base?: number, cap?: number, random?: () => number): number;
/** The `retry in N s` hint of a 1013 close reason, in ms times random 0.5–1.5; null without a hint. */
export function retryHintDelay(reason: string, random?: () => number): number | null;

export default Herald;
