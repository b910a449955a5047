public import Herald
public import NIOCore

/// Everything a Herald node is configured with. Only the executable reads flags and the
/// environment; tests and embedding apps build this struct directly.
public struct HeraldConfiguration: Sendable {
    /// Address to bind. Development mode (no JWT secret) is meant for 127.0.0.1.
    public var host: String = "127.0.0.1"
    /// Port to bind; 0 picks a free one (see ``HeraldServer/run(onListening:)``).
    public var port: Int = 8080
    /// Listen backlog: connections the kernel queues before Herald accepts them. A connection
    /// storm overflowing it makes clients retry their SYN a second later. Capped by the
    /// kernel's `net.core.somaxconn`.
    public var backlog: Int = 4096
    /// Serve TLS (`https://`, `wss://`) on ``port`` with this certificate and key; `nil` serves
    /// plain HTTP and WebSocket. Both files are read at start-up (a missing or invalid one is a
    /// ``ConfigurationError``) and again on SIGHUP, which swaps the certificate for new
    /// connections without dropping open ones. A plain-HTTP request to a TLS port gets a `400`.
    public var tls: TLSCertificateFiles?
    /// This node's name in `welcome` frames and connection ids. Random when `nil`.
    public var nodeID: String?
    /// Sets `SO_REUSEPORT` on the listening socket, so several processes can share the port
    /// (`herald serve --workers N` sets it in its workers).
    public var reusePort: Bool = false
    /// HMAC secret (HS256, HS384, HS512) for client tokens. With no secret, key or key set,
    /// the server is in development mode: `?user=NAME` is trusted.
    public var jwtSecret: String?
    /// More keys that verify client tokens: public keys (``TokenKey/pem(_:kid:algorithm:source:)``),
    /// more secrets. Selected by the token's `kid`, or by its `alg` when it has none.
    public var tokenKeys: [TokenKey] = []
    /// Published key sets (JWKS) that verify client tokens, fetched at start and again on an
    /// unknown `kid` (at most once per ``TokenPolicy/keySetRefreshInterval``).
    public var tokenKeySets: [any TokenKeySet] = []
    /// What a token must satisfy besides its signature: issuer, audience, leeway, `exp`.
    public var tokenPolicy = TokenPolicy()
    /// How long before its token's `exp` a connection is sent `token_expiring` (it should then
    /// send `refresh`); at `exp` it is closed with 4001 "token expired".
    public var tokenExpiryWarning: TimeAmount = .seconds(60)
    /// Asked whether each connection may open (`--connect-hook`); `nil`: tokens decide alone.
    public var connectHook: BackendHook.Configuration?
    /// Asked whether a user may join a room its token does not allow (`--join-hook`).
    public var joinHook: BackendHook.Configuration?
    /// When a hook cannot decide (timeout, error, garbage, circuit open): `false` refuses
    /// (connections are closed with 1013 "retry in N s", joins answered `unavailable`); `true`
    /// lets connections through as if there were no connect hook.
    public var hookFailOpen = false
    /// Revoked token ids held at once (`POST /api/tokens/{jti}/revoke`); past it a revocation is
    /// refused (507) until entries expire.
    public var maxRevokedTokens: Int = 100_000
    /// How long a revocation lasts when the request names no expiry: longer than any token
    /// your identity provider issues should live.
    public var defaultRevocationTTL: TimeAmount = .hours(24)
    /// Who a user may `send` to. `nil` means: users sharing a room with the sender when tokens
    /// are configured, anyone in development mode.
    public var sendPolicy: SendPolicy?
    /// When set, every `/api` call needs `Authorization: Bearer <apiKey>`.
    public var apiKey: String?
    /// Browser origins (`https://app.example.com`, or `*`) allowed to call `/api` from a page:
    /// their requests get CORS headers and their preflights are answered. `nil` sends no CORS
    /// headers (a browser page on another origin cannot read the API's answers).
    public var allowedOrigins: [String]?
    /// Whether clients may send `broadcast` frames (to every connection).
    public var allowClientBroadcast: Bool = false
    /// Who may publish to a room over WebSocket. `nil` means: members only when a JWT secret
    /// is configured, anyone in development mode.
    public var publishPolicy: PublishPolicy?
    /// History kept per room and user for recovery (`join` with `since`, node healing).
    public var history = HistoryConfiguration()
    /// Rooms whose members are told of presence changes (`presence_change` frames), and the
    /// window they are coalesced over; `nil` sends none.
    public var presenceEvents: PresenceEventsConfiguration?
    /// Hub limits and heartbeat.
    public var hub = HubConfiguration()
    /// Largest WebSocket frame (and fragmented message) a client may send; larger closes with 1009.
    public var maxFrameSize: Int = 64 * 1024
    /// Largest HTTP API request body.
    public var maxBodySize: Int = 1024 * 1024
    /// Client frames per second per connection (token bucket rate).
    public var rateLimit: Double = 100
    /// Client frames a connection may send in a burst above the rate.
    public var rateBurst: Int = 200
    /// Bytes a connection may have queued for sending; past it the connection is closed with
    /// 1013 (slow consumer). Bounds the server's memory per connection.
    public var maxOutboundBytes: Int = 1024 * 1024
    /// How long a closing connection may take to flush its close frame before the socket is dropped.
    public var closeTimeout: TimeAmount = .seconds(2)

    /// How long a new TCP connection may take to send its first request head (HTTP), or to
    /// finish its WebSocket handshake (upgrade request and authentication), before it is dropped.
    public var requestHeadTimeout: TimeAmount = .seconds(10)
    /// How long one HTTP request, head and body, may take to arrive; past it `408` and closed.
    public var requestTimeout: TimeAmount = .seconds(30)
    /// The slowest an HTTP request body may arrive on average, after its first 5 seconds.
    public var minimumRequestBytesPerSecond: Int = 1024
    /// How long an HTTP connection may stay open between requests (its next request head must
    /// have arrived by then).
    public var keepAliveTimeout: TimeAmount = .seconds(30)
    /// Open connections one client IP address may hold; 0 for no limit. Connections from
    /// 127.0.0.1 and ::1 (a local proxy, health checks) are not counted: behind a proxy on
    /// another host, every client shares the proxy's address, so raise it or set 0 there.
    public var maxConnectionsPerIP: Int = 1000
    /// Connections that may be negotiating at once (no complete WebSocket upgrade request and no
    /// complete HTTP request yet: the server waits for the client); past it the oldest of them
    /// is closed to admit a new one. 0 for no limit.
    public var maxPendingConnections: Int = 1024
    /// WebSocket connections whose handshake is done and whose channels are still being set
    /// up (waiting for Redis) at once. Past it a new WebSocket request is answered `503` with
    /// `Retry-After` (1 to 5 s, jittered) before any upgrade work: at overload the node refuses
    /// early and cheaply instead of letting handshakes time out. 0 for no limit.
    public var maxConnectingConnections: Int = 2048

    /// Where `/metrics` is served: on this port behind the API key (the default), on an address
    /// of its own without a key (a private port for the scraper), or not at all.
    public var metrics: MetricsEndpoint = .api
    /// How long a node keeps serving after SIGTERM/SIGINT with `/readyz` failing, before it
    /// stops accepting and closes its connections (1012): time for a load balancer's readiness
    /// probe to take it out of rotation. Zero stops at once.
    public var drainDelay: TimeAmount = .zero
    /// Where the node's last warnings and errors are kept for `/status`. Set it (and log through
    /// ``RecentLogEvents/capturing(_:)``) to capture the whole process's, the backend's
    /// included; `nil` captures what the server itself logs.
    public var recentLogEvents: RecentLogEvents?

    /// The HTTP request deadlines, as ``HTTPRequestDeadline`` takes them.
    var requestLimits: HTTPRequestDeadline.Limits {
        HTTPRequestDeadline.Limits(
            requestTimeout: requestTimeout,
            minimumBytesPerSecond: minimumRequestBytesPerSecond,
            rateGrace: .seconds(5),
            keepAliveTimeout: keepAliveTimeout
        )
    }

    public init() {}

    /// Development mode: no token key of any kind configured.
    public var isDevelopmentMode: Bool { jwtSecret == nil && tokenKeys.isEmpty && tokenKeySets.isEmpty }

    /// Why this configuration must not run: clients authenticated by tokens, and an HTTP API
    /// anyone can call. Through the API anyone could make any user a member of any room (the
    /// token's `rooms` claim is bypassed), publish as the backend and read every history, so
    /// a JWT secret without an API key is refused, not warned about. `nil` when fine.
    public var openAPIProblem: String? {
        guard !isDevelopmentMode, apiKey?.isEmpty ?? true else { return nil }
        return """
            token keys are set but no API key: the HTTP API (/api) would let anyone who reaches this port make any \
            user a member of any room, publish as the backend and read every history. Set --api-key (or HERALD_API_KEY), \
            e.g. --api-key "$(openssl rand -hex 32)", and give it only to your backend
            """
    }

    /// The publish policy in force.
    public var effectivePublishPolicy: PublishPolicy {
        publishPolicy ?? (isDevelopmentMode ? .anyone : .members)
    }

    /// The send policy in force.
    public var effectiveSendPolicy: SendPolicy {
        sendPolicy ?? (isDevelopmentMode ? .anyone : .sharedRoom)
    }
}

/// Where a node serves its Prometheus metrics.
public enum MetricsEndpoint: Sendable, Equatable {
    /// `/metrics` on the node's own port, behind the API key when one is set.
    case api
    /// `/metrics` (and `/healthz`, `/readyz`) on an address of its own, without a key: bind it
    /// where only the scraper can reach it. Port 0 picks a free one (logged).
    case separate(host: String, port: Int)
    /// No `/metrics` at all.
    case off
}

/// Whom a user may `send` to over WebSocket (the HTTP API may always send). A token's `send`
/// claim (user names or `prefix*` patterns) adds recipients under every policy.
public enum SendPolicy: String, Sendable, CaseIterable {
    /// Any user.
    case anyone
    /// Users who share a room with the sender, and those the token's `send` claim allows.
    case sharedRoom = "shared-room"
    /// Only the users the token's `send` claim allows (a token without one sends to no one).
    case claim
}

/// Who may publish to a room over WebSocket (the HTTP API may always publish).
public enum PublishPolicy: String, Sendable, CaseIterable {
    /// Only the room's members.
    case members
    /// Any connected user.
    case anyone
}
