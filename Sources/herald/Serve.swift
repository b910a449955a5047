import ArgumentParser
import Foundation
import Herald
import HeraldCluster
import HeraldServer
import Logging
import NIOCore
import NIOPosix

/// `herald serve`: every option is also read from a `HERALD_*` environment variable; a flag wins.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Herald node (the default subcommand).",
        discussion: """
            Every option can also be set with the environment variable named in its help (a flag wins over \
            the environment). Without --jwt-secret, --jwt-public-key, --jwks or --jwks-url the server runs in development \
            mode: clients name themselves with ?user=NAME and may join any room.
            """
    )

    @Option(help: "Address to bind. (env: HERALD_HOST, default 127.0.0.1)")
    var host: String?

    @Option(parsing: .unconditional, help: "Port to bind; 0 picks a free one. (env: HERALD_PORT, default 8080)")
    var port: Int?

    @Option(parsing: .unconditional, help: "Listen backlog for connection storms, capped by net.core.somaxconn. (env: HERALD_BACKLOG, default 4096)")
    var backlog: Int?

    @Option(
        name: .customLong("event-loops"), parsing: .unconditional,
        help: "Event-loop threads; each connection lives on one. (env: HERALD_EVENT_LOOPS, default one per core)")
    var eventLoops: Int?

    @Option(name: .customLong("node-id"), help: "This node's name in welcome frames and connection ids. (env: HERALD_NODE_ID, default random)")
    var nodeID: String?

    @Option(
        name: .customLong("jwt-secret"),
        help:
            "HMAC secret for client tokens, at least 32 bytes (HS256; HS384 from 48, HS512 from 64); no secret, key or JWKS means development mode. (env: HERALD_JWT_SECRET)"
    )
    var jwtSecret: String?

    @Option(
        name: .customLong("jwt-public-key"),
        help:
            "[KID=]FILE: a PEM public key (RSA: RS256/384/512, PS256; EC P-256: ES256; P-384: ES384; Ed25519: EdDSA) verifying client tokens; repeatable, selected by the token's kid. (env: HERALD_JWT_PUBLIC_KEY, comma-separated)"
    )
    var jwtPublicKey: [String] = []

    @Option(name: .customLong("jwks"), help: "A JWKS file of public keys verifying client tokens, read again on an unknown kid. (env: HERALD_JWKS)")
    var jwks: String?

    @Option(
        name: .customLong("jwks-url"),
        help:
            "The identity provider's JWKS URL (https; http only to a loopback host), fetched at start, on unknown kids and when older than 10 minutes; its last keys stay in use while it is down. (env: HERALD_JWKS_URL)"
    )
    var jwksURL: String?

    @Option(
        name: .customLong("jwks-refresh-interval"), parsing: .unconditional,
        help: "Seconds between fetches of the JWKS on unknown kids. (env: HERALD_JWKS_REFRESH_INTERVAL, default 60)")
    var jwksRefreshInterval: Int?

    @Option(name: .customLong("jwt-issuer"), help: "Required iss claim of client tokens. (env: HERALD_JWT_ISSUER)")
    var jwtIssuer: String?

    @Option(name: .customLong("jwt-audience"), help: "A value the aud claim of client tokens must contain. (env: HERALD_JWT_AUDIENCE)")
    var jwtAudience: String?

    @Option(
        name: .customLong("jwt-leeway"), parsing: .unconditional,
        help: "Seconds of clock skew forgiven on exp, nbf and iat. (env: HERALD_JWT_LEEWAY, default 5)")
    var jwtLeeway: Int?

    @Flag(
        name: .customLong("allow-tokens-without-exp"),
        help: "Accept client tokens without exp (they never expire). (env: HERALD_ALLOW_TOKENS_WITHOUT_EXP=true)")
    var allowTokensWithoutExp = false

    @Option(
        name: .customLong("token-expiry-warning"), parsing: .unconditional,
        help: "Seconds before a token's exp that its connection is sent token_expiring. (env: HERALD_TOKEN_EXPIRY_WARNING, default 60)")
    var tokenExpiryWarning: Int?

    @Option(
        name: .customLong("connect-hook"),
        help:
            "Your backend's URL, asked (POST {\"event\":\"connect\",\"user\":U}) whether each connection may open; it answers {\"allow\":true|false}. (env: HERALD_CONNECT_HOOK)"
    )
    var connectHook: String?

    @Option(
        name: .customLong("join-hook"),
        help:
            "Your backend's URL, asked (POST {\"event\":\"join\",\"user\":U,\"room\":R}) whether a user may join a room its token does not allow. (env: HERALD_JOIN_HOOK)"
    )
    var joinHook: String?

    @Option(
        name: .customLong("hook-timeout"), parsing: .unconditional,
        help: "Milliseconds a hook question waits for the backend. (env: HERALD_HOOK_TIMEOUT, default 2000)")
    var hookTimeout: Int?

    @Option(
        name: .customLong("hook-concurrency"), parsing: .unconditional,
        help: "Hook questions under way at once, per hook; more fail at once. (env: HERALD_HOOK_CONCURRENCY, default 64)")
    var hookConcurrency: Int?

    @Option(
        name: .customLong("hook-cache-ttl"), parsing: .unconditional,
        help: "Seconds a hook's answer is reused for the same user (and room); 0 asks every time. (env: HERALD_HOOK_CACHE_TTL, default 30)")
    var hookCacheTTL: Int?

    @Option(
        name: .customLong("hook-secret"),
        help: "Sent to the hooks as Authorization: Bearer, so your backend can tell Herald's questions apart (never the API key). (env: HERALD_HOOK_SECRET)")
    var hookSecret: String?

    @Flag(
        name: .customLong("hook-fail-open"),
        help:
            "Let connections through when the connect hook cannot decide (timeout, error, garbage); the default refuses them with 1013. (env: HERALD_HOOK_FAIL_OPEN=true)"
    )
    var hookFailOpen = false

    @Option(
        name: .customLong("max-revoked-tokens"), parsing: .unconditional,
        help: "Revoked token ids held at once (POST /api/tokens/{jti}/revoke answers 507 past it). (env: HERALD_MAX_REVOKED_TOKENS, default 100000)")
    var maxRevokedTokens: Int?

    @Option(
        name: .customLong("revocation-ttl"), parsing: .unconditional,
        help: "Seconds a token revocation lasts when the request gives no expires. (env: HERALD_REVOCATION_TTL, default 86400)")
    var revocationTTL: Int?

    @Option(
        name: .customLong("send-policy"),
        help:
            "Whom a user may send to: anyone, shared-room (users sharing a room with the sender) or claim (the token's send claim). (env: HERALD_SEND_POLICY, default shared-room with tokens, anyone in development mode)"
    )
    var sendPolicy: String?

    @Option(
        name: .customLong("api-key"),
        help: "Bearer key required by every /api call; required with --jwt-secret, unset leaves the API open in development mode. (env: HERALD_API_KEY)")
    var apiKey: String?

    @Flag(name: .customLong("allow-client-broadcast"), help: "Let clients send broadcast frames to everyone. (env: HERALD_ALLOW_CLIENT_BROADCAST=true)")
    var allowClientBroadcast = false

    @Option(
        name: .customLong("publish-policy"),
        help:
            "Who may publish to a room over WebSocket: members or anyone. (env: HERALD_PUBLISH_POLICY, default members with a JWT secret, anyone in development mode)"
    )
    var publishPolicy: String?

    @Option(
        parsing: .unconditional, help: "Seconds between server pings; a connection silent until the next ping is closed. (env: HERALD_HEARTBEAT, default 25)")
    var heartbeat: Int?

    @Option(
        name: .customLong("max-frame-size"), parsing: .unconditional,
        help: "Largest client frame or message in bytes; larger closes with 1009. (env: HERALD_MAX_FRAME_SIZE, default 65536)")
    var maxFrameSize: Int?

    @Option(name: .customLong("max-body-size"), parsing: .unconditional, help: "Largest HTTP API body in bytes. (env: HERALD_MAX_BODY_SIZE, default 1048576)")
    var maxBodySize: Int?

    @Option(
        name: .customLong("max-connections"), parsing: .unconditional,
        help: "Connections this node accepts; more are closed with 4029. (env: HERALD_MAX_CONNECTIONS, default 100000)")
    var maxConnections: Int?

    @Option(
        name: .customLong("max-connections-per-user"), parsing: .unconditional,
        help: "Connections per user on this node; more are closed with 4029. (env: HERALD_MAX_CONNECTIONS_PER_USER, default 32)")
    var maxConnectionsPerUser: Int?

    @Option(
        name: .customLong("max-rooms-per-user"), parsing: .unconditional, help: "Rooms a user may be a member of. (env: HERALD_MAX_ROOMS_PER_USER, default 256)"
    )
    var maxRoomsPerUser: Int?

    @Option(name: .customLong("max-rooms"), parsing: .unconditional, help: "Rooms that may exist at once. (env: HERALD_MAX_ROOMS, default 1000000)")
    var maxRooms: Int?

    @Option(name: .customLong("rate-limit"), parsing: .unconditional, help: "Client frames per second per connection. (env: HERALD_RATE_LIMIT, default 100)")
    var rateLimit: Double?

    @Option(
        name: .customLong("rate-burst"), parsing: .unconditional,
        help: "Frames a connection may send in a burst above the rate. (env: HERALD_RATE_BURST, default 200)")
    var rateBurst: Int?

    @Option(
        name: .customLong("max-outbound-bytes"), parsing: .unconditional,
        help: "Bytes queued for one connection before it is cut off as a slow consumer (1013). (env: HERALD_MAX_OUTBOUND_BYTES, default 1048576)")
    var maxOutboundBytes: Int?

    @Option(help: "Redis shared by the cluster's nodes, redis://[[user]:password@]host[:port][/db]; unset runs one node on its own. (env: HERALD_REDIS_URL)")
    var redis: String?

    @Option(
        name: .customLong("redis-prefix"),
        help: "Prefix of Herald's channels and keys in Redis, so several clusters can share it. (env: HERALD_REDIS_PREFIX, default herald)")
    var redisPrefix: String?

    @Option(
        name: .customLong("presence-ttl"), parsing: .unconditional,
        help: "Seconds a node that stopped heartbeating (killed, cut off from Redis) still counts its users online. (env: HERALD_PRESENCE_TTL, default 10)")
    var presenceTTL: Int?

    @Option(
        name: .customLong("presence-events"),
        help:
            "Comma-separated rooms whose members are told when users join, leave, come online or go offline (exact names or prefix*; * every room; none for none). (env: HERALD_PRESENCE_EVENTS, default * on a node on its own, none with --redis)"
    )
    var presenceEvents: String?

    @Option(
        name: .customLong("presence-window"), parsing: .unconditional,
        help:
            "Milliseconds presence changes are coalesced over: at most one presence_change frame per room per window. (env: HERALD_PRESENCE_WINDOW, default 1000)"
    )
    var presenceWindow: Int?

    @Option(
        name: .customLong("ingest-stream"),
        help:
            "With --redis: the Redis Stream backends append events to (XADD STREAM * target room:NAME data JSON [id KEY]); empty turns it off. (env: HERALD_INGEST_STREAM, default PREFIX:ingest)"
    )
    var ingestStream: String?

    @Option(
        name: .customLong("ingest-claim-idle"), parsing: .unconditional,
        help: "Seconds an ingest entry may stay pending with a silent node before another node claims it. (env: HERALD_INGEST_CLAIM_IDLE, default 30)")
    var ingestClaimIdle: Int?

    @Option(
        name: .customLong("ingest-max-attempts"), parsing: .unconditional,
        help: "Deliveries after which an ingest entry is moved aside to STREAM:dead. (env: HERALD_INGEST_MAX_ATTEMPTS, default 5)")
    var ingestMaxAttempts: Int?

    @Option(
        name: .customLong("history-size"), parsing: .unconditional,
        help: "Messages kept per room and user for recovery; 0 keeps none. (env: HERALD_HISTORY_SIZE, default 100)")
    var historySize: Int?

    @Option(
        name: .customLong("history-ttl"), parsing: .unconditional,
        help: "Seconds a message is kept for recovery; a channel idle longer starts a new epoch. (env: HERALD_HISTORY_TTL, default 300)")
    var historyTTL: Int?

    @Option(
        name: .customLong("no-history-rooms"),
        help: "Comma-separated rooms that keep no history (exact names or prefix*); their messages still get offsets. (env: HERALD_NO_HISTORY_ROOMS)")
    var noHistoryRooms: String?

    @Option(
        name: .customLong("ack-ttl"), parsing: .unconditional,
        help: "Seconds a message sent with ack waits for its acknowledgement. (env: HERALD_ACK_TTL, default 3600)")
    var ackTTL: Int?

    @Option(
        name: .customLong("history-max-bytes"), parsing: .unconditional,
        help:
            "Bytes of history one node keeps in memory over all channels (without --redis); past it the oldest entries of any channel are dropped. (env: HERALD_HISTORY_MAX_BYTES, default 67108864)"
    )
    var historyMaxBytes: Int?

    @Option(
        name: .customLong("history-channel-max-bytes"), parsing: .unconditional,
        help:
            "Bytes of history one room or user channel keeps in memory (and of one user's unacknowledged messages), without --redis; past it its oldest are dropped. (env: HERALD_HISTORY_CHANNEL_MAX_BYTES, default 4194304)"
    )
    var historyChannelMaxBytes: Int?

    @Option(
        name: .customLong("ack-max-bytes"), parsing: .unconditional,
        help:
            "Bytes of unacknowledged messages one node keeps in memory (without --redis); past it new ones are refused with 507. (env: HERALD_ACK_MAX_BYTES, default 67108864)"
    )
    var ackMaxBytes: Int?

    @Option(
        name: .customLong("max-connections-per-ip"), parsing: .unconditional,
        help: "Open connections one client IP may hold; 0 for no limit. 127.0.0.1 and ::1 are not counted. (env: HERALD_MAX_CONNECTIONS_PER_IP, default 1000)")
    var maxConnectionsPerIP: Int?

    @Option(
        name: .customLong("max-pending-connections"), parsing: .unconditional,
        help:
            "Connections still negotiating (no complete upgrade or HTTP request yet) at once; past it the oldest is closed. 0 for no limit. (env: HERALD_MAX_PENDING_CONNECTIONS, default 1024)"
    )
    var maxPendingConnections: Int?
    @Option(
        name: .customLong("max-connecting"), parsing: .unconditional,
        help:
            "WebSocket connections being set up (handshake done, channels not ready) at once; past it new ones get 503 with Retry-After. 0 for no limit. (env: HERALD_MAX_CONNECTING, default 2048)"
    )
    var maxConnecting: Int?

    @Option(
        name: .customLong("handshake-timeout"), parsing: .unconditional,
        help: "Seconds a new connection may take to send its first request head or finish its WebSocket handshake. (env: HERALD_HANDSHAKE_TIMEOUT, default 10)")
    var handshakeTimeout: Int?

    @Option(
        name: .customLong("request-timeout"), parsing: .unconditional,
        help: "Seconds an HTTP request body may take to arrive once its head has; past it 408. (env: HERALD_REQUEST_TIMEOUT, default 30)")
    var requestTimeout: Int?

    @Option(
        name: .customLong("min-request-rate"), parsing: .unconditional,
        help: "Slowest average HTTP body rate in bytes/s, from its head, after 5 s; slower is 408; 0 turns it off. (env: HERALD_MIN_REQUEST_RATE, default 1024)"
    )
    var minRequestRate: Int?

    @Option(
        name: .customLong("keep-alive-timeout"), parsing: .unconditional,
        help: "Seconds an HTTP connection may wait for its next request. (env: HERALD_KEEP_ALIVE_TIMEOUT, default 30)")
    var keepAliveTimeout: Int?

    @Option(parsing: .unconditional, help: "Worker processes sharing the port (SO_REUSEPORT); more than 1 needs --redis. (env: HERALD_WORKERS, default 1)")
    var workers: Int?

    @Flag(name: .customLong("reuse-port"), help: "Set SO_REUSEPORT on the listening socket (what each --workers process does).")
    var reusePort = false

    @Option(
        name: .customLong("allowed-origins"),
        help:
            "Comma-separated browser origins (https://app.example.com, https://*.example.com) allowed to open WebSockets (403 for others) and call /api (CORS), or *; unset: WebSockets from the same origin only (any in development mode), no CORS. (env: HERALD_ALLOWED_ORIGINS)"
    )
    var allowedOrigins: String?

    @Option(
        name: .customLong("tls-cert"),
        help: "PEM certificate (the full chain, leaf first) to serve https:// and wss:// on --port; needs --tls-key. Reloaded on SIGHUP. (env: HERALD_TLS_CERT)"
    )
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert. Reloaded on SIGHUP. (env: HERALD_TLS_KEY)")
    var tlsKey: String?

    @Option(
        name: .customLong("metrics"),
        help: """
            Where /metrics (Prometheus) is served: api (on --port, behind the API key), HOST:PORT (an address of its own \
            without a key, with /healthz and /readyz; keep it private) or off. (env: HERALD_METRICS, default api)
            """
    )
    var metrics: String?

    @Option(
        name: .customLong("drain-delay"), parsing: .unconditional,
        help: "Seconds a node keeps serving after SIGTERM with /readyz failing, before it closes its connections (0-300). (env: HERALD_DRAIN_DELAY, default 0)"
    )
    var drainDelay: Double?

    @Option(name: .customLong("log-format"), help: "text, or json: one JSON object per line. (env: HERALD_LOG_FORMAT, default text)")
    var logFormat: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (env: HERALD_LOG_LEVEL, default info)")
    var logLevel: String?

    /// Checks every option before anything runs, so that a mistake is reported as a usage
    /// error of `herald serve` (exit 64) with the option's name and allowed range.
    func validate() throws {
        _ = try settings()
    }

    func run() async throws {
        let settings = try settings()
        if let loops = settings.eventLoops {
            // Read once, when NIO's shared group is first used: nothing has used it yet.
            NIOSingletons.groupLoopCountSuggestion = loops
        }
        var configuration = settings.configuration
        if settings.jsonLogs {
            // The node's id on every line: chosen now (when not given) so the handler knows it.
            let nodeID = configuration.nodeID ?? HeraldNode.randomNodeID()
            if settings.workers == 1 { configuration.nodeID = nodeID }
            LoggingSystem.bootstrap { label in JSONLogHandler.standardError(label: label, metadata: ["node": .string(nodeID)]) }
        }
        // Every warning and error of the node (the Redis backend's included) also goes to /status.
        let recentEvents = RecentLogEvents()
        configuration.recentLogEvents = recentEvents
        var logger = Logger(label: "herald")
        logger.logLevel = settings.logLevel
        logger = recentEvents.capturing(logger)

        if settings.workers > 1 {
            let supervisor = WorkerSupervisor(
                count: settings.workers,
                arguments: Array(CommandLine.arguments.dropFirst()),
                baseNodeID: configuration.nodeID,
                forwardsHangup: configuration.tls != nil,
                logger: logger
            )
            do {
                try await supervisor.run()
            } catch let failure as WorkerFailure {
                FileHandle.standardError.write(Data("herald: \(failure.description)\n".utf8))
                // The workers' reason (69: Redis unreachable) is the group's.
                throw ExitCode([Self.usageExitCode, Self.unavailableExitCode].contains(failure.status) ? failure.status : 1)
            }
            return
        }

        let server: HeraldServer
        do {
            configuration.tokenKeys = try await settings.tokenKeys()
            if let redis = settings.redis {
                server = try await RedisBackend.server(configuration: configuration, redis: redis, logger: logger)
            } else {
                server = try await HeraldServer(configuration: configuration, logger: logger)
            }
        } catch  where error.isUnavailable {
            // Not a usage error: the command was right, something it needs is not there.
            FileHandle.standardError.write(Data("herald: \(error.description)\n".utf8))
            throw ExitCode(Self.unavailableExitCode)
        } catch {
            throw ValidationError(error.description)
        }
        try await server.run()
    }

    /// `EX_UNAVAILABLE` (sysexits.h): a service the node needs (Redis) cannot be reached.
    static let unavailableExitCode: Int32 = 69
    /// `EX_USAGE` (sysexits.h), what ArgumentParser exits with for a bad option.
    static let usageExitCode: Int32 = 64

    /// What `herald serve` runs with: the flags, then the environment, checked.
    struct Settings {
        var configuration = HeraldConfiguration()
        var workers = 1
        var eventLoops: Int?
        var logLevel = Logger.Level.info
        /// `--log-format json`.
        var jsonLogs = false
        /// The Redis backend (`--redis`); `nil` runs one node on its own.
        var redis: RedisBackendConfiguration?
        /// `--jwt-public-key` files, read; turned into keys by ``tokenKeys()``.
        var publicKeys: [(kid: String?, path: String, pem: String)] = []

        /// The public keys, parsed (asynchronously: jwt-kit's key collections are actors).
        func tokenKeys() async throws(ConfigurationError) -> [TokenKey] {
            var keys: [TokenKey] = []
            for file in publicKeys { keys.append(try await TokenKey.pem(file.pem, kid: file.kid, source: "--jwt-public-key \(file.path)")) }
            return keys
        }
    }

    private func settings() throws -> Settings {
        let options = OptionReader(environment: ProcessInfo.processInfo.environment)
        var settings = Settings()
        var configuration = HeraldConfiguration()

        settings.eventLoops = try options.integer(eventLoops, "event-loops", in: 1...1024)
        if let host = options.string(host, "host") {
            guard !host.isEmpty else { throw ValidationError("--host must not be empty") }
            configuration.host = host
        }
        if let port = try options.integer(port, "port", in: 0...65535) { configuration.port = port }
        if let backlog = try options.integer(backlog, "backlog", in: 1...65535) { configuration.backlog = backlog }
        configuration.nodeID = options.string(nodeID, "node-id")
        if let secret = options.string(jwtSecret, "jwt-secret") {
            guard secret.utf8.count >= Authenticator.minimumSecretBytes else {
                throw ValidationError(
                    "--jwt-secret is \(secret.utf8.count) bytes; HS256 needs at least \(Authenticator.minimumSecretBytes) (generate one with: openssl rand -hex 32)"
                )
            }
            configuration.jwtSecret = secret
        }
        let publicKeys = jwtPublicKey.isEmpty ? (options.string(nil, "jwt-public-key")?.split(separator: ",").map(String.init) ?? []) : jwtPublicKey
        for entry in publicKeys {
            // KID=FILE; a path with '=' in it needs the KID= prefix.
            var kid: String?
            var path = entry
            if let equals = entry.firstIndex(of: "="), !entry[..<equals].contains("/") {
                kid = String(entry[..<equals])
                path = String(entry[entry.index(after: equals)...])
            }
            guard let data = FileManager.default.contents(atPath: path), data.count <= 64 * 1024, let pem = String(data: data, encoding: .utf8) else {
                throw ValidationError("--jwt-public-key \(entry): cannot read \(path) as a PEM file (at most 64 KiB)")
            }
            settings.publicKeys.append((kid, path, pem))
        }
        if let path = options.string(jwks, "jwks") {
            guard FileManager.default.isReadableFile(atPath: path) else { throw ValidationError("--jwks \(path): no readable file there") }
            configuration.tokenKeySets = [JWKSFile(path: path)]
        }
        if let address = options.string(jwksURL, "jwks-url") {
            do {
                configuration.tokenKeySets.append(try JWKSURL(address))
            } catch {
                throw ValidationError(error.description)
            }
        }
        if let seconds = try options.integer(jwksRefreshInterval, "jwks-refresh-interval", in: 1...86_400) {
            configuration.tokenPolicy.keySetRefreshInterval = .seconds(seconds)
        }
        configuration.tokenPolicy.issuer = options.string(jwtIssuer, "jwt-issuer")
        configuration.tokenPolicy.audience = options.string(jwtAudience, "jwt-audience")
        if let seconds = try options.integer(jwtLeeway, "jwt-leeway", in: 0...300) { configuration.tokenPolicy.leeway = .seconds(seconds) }
        configuration.tokenPolicy.allowsTokensWithoutExpiry = try options.flag(allowTokensWithoutExp, "allow-tokens-without-exp")
        if let seconds = try options.integer(tokenExpiryWarning, "token-expiry-warning", in: 0...86_400) {
            configuration.tokenExpiryWarning = .seconds(Int64(seconds))
        }
        if let count = try options.integer(maxRevokedTokens, "max-revoked-tokens", in: 1...10_000_000) { configuration.maxRevokedTokens = count }
        let hookTimeout = try options.integer(self.hookTimeout, "hook-timeout", in: 10...60_000)
        let hookConcurrency = try options.integer(self.hookConcurrency, "hook-concurrency", in: 1...BackendHook.maxConcurrency)
        let hookCacheTTL = try options.integer(self.hookCacheTTL, "hook-cache-ttl", in: 0...86_400)
        func hook(_ flag: String?, _ option: String) throws -> BackendHook.Configuration? {
            guard let address = options.string(flag, option) else { return nil }
            var hook: BackendHook.Configuration
            do {
                hook = try BackendHook.Configuration(url: address)
            } catch {
                throw ValidationError("--\(option): \(error.description)")
            }
            if let hookTimeout { hook.timeout = .milliseconds(Int64(hookTimeout)) }
            if let hookConcurrency { hook.maxConcurrent = hookConcurrency }
            if let hookCacheTTL { hook.cacheTTL = .seconds(hookCacheTTL) }
            hook.bearer = options.string(hookSecret, "hook-secret")
            return hook
        }
        configuration.connectHook = try hook(connectHook, "connect-hook")
        configuration.joinHook = try hook(joinHook, "join-hook")
        configuration.hookFailOpen = try options.flag(hookFailOpen, "hook-fail-open")
        if let seconds = try options.integer(revocationTTL, "revocation-ttl", in: 1...31_622_400) {
            configuration.defaultRevocationTTL = .seconds(Int64(seconds))
        }
        if let policy = options.string(sendPolicy, "send-policy") {
            guard let parsed = SendPolicy(rawValue: policy) else {
                throw ValidationError("--send-policy must be anyone, shared-room or claim, not \(policy)")
            }
            configuration.sendPolicy = parsed
        }
        configuration.apiKey = options.string(apiKey, "api-key")
        if configuration.apiKey?.isEmpty == true { throw ValidationError("--api-key must not be empty (leave it unset for an open API)") }
        configuration.allowClientBroadcast = try options.flag(allowClientBroadcast, "allow-client-broadcast")
        if let policy = options.string(publishPolicy, "publish-policy") {
            guard let parsed = PublishPolicy(rawValue: policy) else {
                throw ValidationError("--publish-policy must be members or anyone, not \(policy)")
            }
            configuration.publishPolicy = parsed
        }
        if let seconds = try options.integer(heartbeat, "heartbeat", in: 1...3600) { configuration.hub.heartbeat = .seconds(Int64(seconds)) }
        if let size = try options.integer(maxFrameSize, "max-frame-size", in: 128...(64 << 20)) { configuration.maxFrameSize = size }
        if let size = try options.integer(maxBodySize, "max-body-size", in: 128...(1 << 30)) { configuration.maxBodySize = size }
        if let count = try options.integer(maxConnections, "max-connections", in: 1...10_000_000) { configuration.hub.maxConnections = count }
        if let count = try options.integer(maxConnectionsPerUser, "max-connections-per-user", in: 1...1_000_000) {
            configuration.hub.maxConnectionsPerUser = count
        }
        if let count = try options.integer(maxRoomsPerUser, "max-rooms-per-user", in: 1...1_000_000) { configuration.hub.maxRoomsPerUser = count }
        if let count = try options.integer(maxRooms, "max-rooms", in: 1...100_000_000) { configuration.hub.maxRooms = count }
        if let rate = try options.number(rateLimit, "rate-limit", in: 0.001...1_000_000) { configuration.rateLimit = rate }
        if let burst = try options.integer(rateBurst, "rate-burst", in: 1...1_000_000) { configuration.rateBurst = burst }
        if let bytes = try options.integer(maxOutboundBytes, "max-outbound-bytes", in: 1024...(1 << 30)) { configuration.maxOutboundBytes = bytes }

        let presenceRooms = (options.string(presenceEvents, "presence-events") ?? (options.string(redis, "redis") == nil ? "*" : "none"))
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && $0 != "none" }
        if let room = presenceRooms.first(where: { $0.dropLast($0.hasSuffix("*") ? 1 : 0).contains("*") }) {
            throw ValidationError("--presence-events: \(room) is not a room name or prefix* pattern (a * may only end it)")
        }
        let presenceWindowMilliseconds = try options.integer(presenceWindow, "presence-window", in: 50...60_000) ?? 1000
        if !presenceRooms.isEmpty {
            configuration.presenceEvents = PresenceEventsConfiguration(rooms: presenceRooms, window: .milliseconds(presenceWindowMilliseconds))
        }

        if let url = options.string(redis, "redis") {
            var backend = RedisBackendConfiguration(url: url)
            if let prefix = options.string(redisPrefix, "redis-prefix") {
                guard !prefix.isEmpty, !prefix.contains(where: \.isWhitespace) else {
                    throw ValidationError("--redis-prefix must be non-empty, without spaces")
                }
                backend.prefix = prefix
            }
            // At least 3: the presence heartbeat runs every third of it.
            if let seconds = try options.integer(presenceTTL, "presence-ttl", in: 3...86_400) { backend.presenceTTL = .seconds(seconds) }
            // An empty value is meaningful here (it turns the queue off): read it as given.
            if let stream = ingestStream ?? options.environment["HERALD_INGEST_STREAM"] { backend.ingestStream = stream }
            if let seconds = try options.integer(ingestClaimIdle, "ingest-claim-idle", in: 1...86_400) { backend.ingestClaimIdle = .seconds(seconds) }
            if let attempts = try options.integer(ingestMaxAttempts, "ingest-max-attempts", in: 1...1000) { backend.ingestMaxAttempts = attempts }
            settings.redis = backend
        } else {
            // Checked even without Redis, so a typo fails where it is made.
            if let prefix = options.string(redisPrefix, "redis-prefix"), prefix.isEmpty || prefix.contains(where: \.isWhitespace) {
                throw ValidationError("--redis-prefix must be non-empty, without spaces")
            }
            _ = try options.integer(presenceTTL, "presence-ttl", in: 3...86_400)
            _ = try options.integer(ingestClaimIdle, "ingest-claim-idle", in: 1...86_400)
            _ = try options.integer(ingestMaxAttempts, "ingest-max-attempts", in: 1...1000)
        }
        configuration.reusePort = reusePort
        if let size = try options.integer(historySize, "history-size", in: 0...1_000_000) { configuration.history.size = size }
        if let seconds = try options.integer(historyTTL, "history-ttl", in: 1...2_592_000) { configuration.history.ttl = .seconds(seconds) }
        if let rooms = options.string(noHistoryRooms, "no-history-rooms") {
            configuration.history.roomsWithoutHistory = rooms.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let seconds = try options.integer(ackTTL, "ack-ttl", in: 1...2_592_000) { configuration.history.ackTTL = .seconds(seconds) }
        if let count = try options.integer(maxConnectionsPerIP, "max-connections-per-ip", in: 0...10_000_000) { configuration.maxConnectionsPerIP = count }
        if let count = try options.integer(maxPendingConnections, "max-pending-connections", in: 0...10_000_000) { configuration.maxPendingConnections = count }
        if let count = try options.integer(maxConnecting, "max-connecting", in: 0...10_000_000) { configuration.maxConnectingConnections = count }
        if let seconds = try options.integer(handshakeTimeout, "handshake-timeout", in: 1...3600) {
            configuration.requestHeadTimeout = .seconds(Int64(seconds))
        }
        if let seconds = try options.integer(requestTimeout, "request-timeout", in: 1...3600) { configuration.requestTimeout = .seconds(Int64(seconds)) }
        if let rate = try options.integer(minRequestRate, "min-request-rate", in: 0...(1 << 30)) { configuration.minimumRequestBytesPerSecond = rate }
        if let seconds = try options.integer(keepAliveTimeout, "keep-alive-timeout", in: 1...86_400) {
            configuration.keepAliveTimeout = .seconds(Int64(seconds))
        }
        if let bytes = try options.integer(historyMaxBytes, "history-max-bytes", in: 0...(1 << 40)) { configuration.history.maxBytes = bytes }
        if let bytes = try options.integer(historyChannelMaxBytes, "history-channel-max-bytes", in: 0...(1 << 40)) {
            configuration.history.maxChannelBytes = bytes
        }
        if let bytes = try options.integer(ackMaxBytes, "ack-max-bytes", in: 0...(1 << 40)) { configuration.history.maxUnacknowledgedBytes = bytes }
        if let origins = options.string(allowedOrigins, "allowed-origins") {
            configuration.allowedOrigins = try Self.origins(origins)
        }
        switch (options.string(tlsCert, "tls-cert"), options.string(tlsKey, "tls-key")) {
        case (nil, nil):
            break
        case (let certificate?, let key?):
            configuration.tls = TLSCertificateFiles(certificateChain: certificate, privateKey: key)
        case (_?, nil):
            throw ValidationError("--tls-cert needs --tls-key (or HERALD_TLS_KEY): the private key of the certificate")
        case (nil, _?):
            throw ValidationError("--tls-key needs --tls-cert (or HERALD_TLS_CERT): the certificate chain the key belongs to")
        }
        if let problem = configuration.openAPIProblem { throw ValidationError(problem) }
        settings.workers = try options.integer(workers, "workers", in: 1...256) ?? 1

        let level = options.string(logLevel, "log-level") ?? "info"
        guard let parsedLevel = Logger.Level(rawValue: level) else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), not \(level)")
        }
        settings.logLevel = parsedLevel
        switch options.string(logFormat, "log-format") ?? "text" {
        case "text": settings.jsonLogs = false
        case "json": settings.jsonLogs = true
        case let other: throw ValidationError("--log-format must be text or json, not \(other)")
        }
        if let delay = try options.number(drainDelay, "drain-delay", in: 0...300) {
            configuration.drainDelay = .milliseconds(Int64(delay * 1000))
        }
        if let endpoint = options.string(metrics, "metrics") {
            configuration.metrics = try Self.metricsEndpoint(endpoint)
            if case .separate(_, let port) = configuration.metrics, port != 0, settings.workers > 1 {
                throw ValidationError(
                    "--metrics \(endpoint) with --workers \(settings.workers): every worker would bind that port. Use port 0 (each worker logs its own) or --metrics api"
                )
            }
        }

        if settings.workers > 1 {
            guard settings.redis != nil else {
                throw ValidationError(
                    """
                    --workers \(settings.workers) needs a shared broker: each worker is a separate process with its own \
                    connections and rooms, so without Redis a message published on one worker would never reach \
                    clients on another. Start Redis and pass it, e.g. --workers \(settings.workers) --redis redis://127.0.0.1:6379 \
                    (or set HERALD_REDIS_URL).
                    """
                )
            }
            guard configuration.port != 0 else { throw ValidationError("--workers needs a fixed --port: with port 0 every worker would pick another one") }
        }
        settings.configuration = configuration
        return settings
    }

    /// `--metrics`: `api`, `off` or `HOST:PORT` (`[::1]:9090` for IPv6).
    static func metricsEndpoint(_ text: String) throws -> MetricsEndpoint {
        switch text {
        case "api": return .api
        case "off": return .off
        default:
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
                throw ValidationError("--metrics must be api, off or HOST:PORT (e.g. 127.0.0.1:9090), not \(text)")
            }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw ValidationError("--metrics \(text): the host is missing (e.g. 127.0.0.1:\(port))") }
            return .separate(host: host, port: port)
        }
    }

    /// `--allowed-origins`: `*`, or origins as a browser sends them (`scheme://host[:port]`),
    /// normalized (lowercase, no default port) so that they match what browsers send.
    static func origins(_ text: String) throws -> [String] {
        let origins = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !origins.isEmpty else { throw ValidationError("--allowed-origins must list at least one origin, or *") }
        return try origins.map { origin in
            if origin == "*" { return origin }
            switch CORSPolicy.normalize(origin, allowingSubdomainPattern: true) {
            case .success(let normalized): return normalized
            case .failure(let problem):
                throw ValidationError(
                    "--allowed-origins: \(origin) \(problem); write it as a browser sends it, e.g. https://app.example.com or http://localhost:3000"
                )
            }
        }
    }
}

/// Reads an option from its flag or, when the flag is absent, from its `HERALD_*` environment
/// variable (an empty one counts as unset), and checks it. Errors name the option, where the
/// value came from and what is allowed.
struct OptionReader {
    let environment: [String: String]

    /// `event-loops` → `HERALD_EVENT_LOOPS` (`redis` → `HERALD_REDIS_URL`).
    static func variable(_ option: String) -> String {
        option == "redis" ? "HERALD_REDIS_URL" : "HERALD_" + option.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    private func text(_ option: String) -> String? {
        guard let text = environment[Self.variable(option)], !text.isEmpty else { return nil }
        return text
    }

    func string(_ flag: String?, _ option: String) -> String? {
        flag ?? text(option)
    }

    func integer(_ flag: Int?, _ option: String, in range: ClosedRange<Int>) throws -> Int? {
        if let flag {
            guard range.contains(flag) else { throw ValidationError("--\(option) must be between \(range.lowerBound) and \(range.upperBound), not \(flag)") }
            return flag
        }
        guard let text = text(option) else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw ValidationError("\(Self.variable(option))=\(text): --\(option) must be an integer between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    func number(_ flag: Double?, _ option: String, in range: ClosedRange<Double>) throws -> Double? {
        let value: Double
        let source: String
        if let flag {
            value = flag
            source = "--\(option) \(flag == flag.rounded() && abs(flag) < 1e15 ? String(Int64(flag)) : String(flag))"
        } else if let text = text(option) {
            guard let parsed = Double(text) else {
                throw ValidationError("\(Self.variable(option))=\(text): --\(option) must be a number between \(range.lowerBound) and \(range.upperBound)")
            }
            value = parsed
            source = "\(Self.variable(option))=\(text)"
        } else {
            return nil
        }
        guard value.isFinite, range.contains(value) else {
            throw ValidationError("\(source): --\(option) must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    /// A flag that can also be turned on by its variable (`true`/`false`, `1`/`0`, `yes`/`no`).
    func flag(_ flag: Bool, _ option: String) throws -> Bool {
        if flag { return true }
        guard let text = text(option)?.lowercased() else { return false }
        guard let enabled = ["true": true, "1": true, "yes": true, "false": false, "0": false, "no": false][text] else {
            throw ValidationError("\(Self.variable(option))=\(text) must be true or false")
        }
        return enabled
    }
}
