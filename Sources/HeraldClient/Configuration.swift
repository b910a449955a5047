public import Logging

/// Who the client connects as.
public enum Credentials: Sendable {
    /// Development mode (a server without a token key): the client names itself with `?user=`.
    case user(String)
    /// A fixed JWT. It cannot be refreshed: when the server warns that it expires, the client
    /// reports a ``HeraldClientError/token(_:)`` event, and the server closes with 4001 at expiry.
    case token(String)
    /// Asked for a fresh JWT before every connection and when the server warns that the current
    /// one expires (then sent as a `refresh` on the open connection). Throwing counts as a failed
    /// connection attempt (the client backs off and asks again).
    case tokenProvider(@Sendable () async throws -> String)
}

extension HeraldClient {
    /// The client's policies, with the defaults of the JavaScript client (herald.js).
    public struct Configuration: Sendable {
        /// The first reconnection delay's ceiling: delays are random in `0..<min(cap, min * 2^attempt)` (full jitter).
        public var minReconnectDelay: Duration = .milliseconds(250)
        /// The ceiling of reconnection delays.
        public var maxReconnectDelay: Duration = .seconds(8)
        /// The backoff starts again from ``minReconnectDelay`` only after a connection stayed up
        /// this long, so a node that welcomes and crashes at once does not get a storm of retries.
        public var resetBackoffAfter: Duration = .seconds(5)
        /// How long a request waits for its reply, counted from the call (queued time included).
        public var requestTimeout: Duration = .seconds(10)
        /// How long a connection may take to say `welcome` before it is given up on.
        public var connectTimeout: Duration = .seconds(10)
        /// How long to wait for any frame after a JSON `ping` before the connection counts as dead.
        public var pongTimeout: Duration = .seconds(5)
        /// Silence after which a JSON `ping` is sent; `nil`: the welcome's `heartbeat`.
        public var heartbeat: Duration? = nil
        /// A token is refreshed this long before its `exp` (at most half its remaining lifetime)
        /// when the server's `token_expiring` warning has not come first.
        public var tokenRefreshMargin: Duration = .seconds(30)
        /// Requests waiting for a connection; more are refused with ``HeraldClientError/queueFull(limit:)``.
        public var maxQueuedRequests = 100
        /// Requests awaiting a reply; more are refused with ``HeraldClientError/tooManyRequests(limit:)``.
        public var maxPendingRequests = 1000
        /// Channels (rooms and the user channel) whose last position is remembered; the least
        /// recently used is forgotten beyond it (its next join cannot resume).
        public var maxPositions = 10_000
        /// Messages buffered per message stream for a consumer that does not keep up; beyond it the
        /// newest are dropped (see ``HeraldClient/messages``).
        public var messageBufferSize = 10_000
        /// Events buffered per event stream; beyond it the oldest are dropped.
        public var eventBufferSize = 1000
        /// Streams (``HeraldClient/messages``, ``HeraldClient/events``, a room's messages) that may
        /// be open at once per source, so a stream opened per message by mistake shows up as an error, not a leak.
        public var maxSubscribers = 1000
        /// Acknowledge `ack:true` messages once a stream took them (see ``HeraldMessage/ack()``).
        public var autoAck = true
        /// Asks for the presence events of the rooms the server watches (`?presence_events=true`):
        /// ``HeraldEvent/presence(_:)`` events and ``HeraldRoom/presenceState``.
        public var presenceEvents = true
        /// Deliver messages of rooms the application did not join (for example memberships the
        /// backend granted) instead of reporting them as unexpected.
        public var acceptUnjoinedRooms = false
        /// The largest frame accepted from the server.
        public var maxFrameSize = 1 << 20
        /// The source of randomness of the backoff jitter, in `0..<1` (tests make it fixed).
        public var random: @Sendable () -> Double = { Double.random(in: 0..<1) }
        /// Where the client logs (connections, reconnects); the WebSocket library logs here too.
        public var logger = Logger(label: "herald.client")
        /// Tests only: rewrites each connection's URL (to simulate a network outage).
        var connectURLHook: (@Sendable (String) -> String)?

        public init() {}
    }
}
