import ArgumentParser
import Foundation
import Herald
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
            the environment). Without --jwt-secret the server runs in development mode: clients name \
            themselves with ?user=NAME and may join any room.
            """
    )

    @Option(help: "Address to bind. (env: HERALD_HOST, default 127.0.0.1)")
    var host: String?

    @Option(help: "Port to bind; 0 picks a free one. (env: HERALD_PORT, default 8080)")
    var port: Int?

    @Option(help: "Listen backlog for connection storms, capped by net.core.somaxconn. (env: HERALD_BACKLOG, default 4096)")
    var backlog: Int?

    @Option(name: .customLong("event-loops"), help: "Event-loop threads; each connection lives on one. (env: HERALD_EVENT_LOOPS, default one per core)")
    var eventLoops: Int?

    @Option(name: .customLong("node-id"), help: "This node's name in welcome frames and connection ids. (env: HERALD_NODE_ID, default random)")
    var nodeID: String?

    @Option(name: .customLong("jwt-secret"), help: "HS256 secret for client tokens, at least 32 bytes; unset means development mode. (env: HERALD_JWT_SECRET)")
    var jwtSecret: String?

    @Option(name: .customLong("api-key"), help: "Bearer key required by every /api call; unset leaves the API open. (env: HERALD_API_KEY)")
    var apiKey: String?

    @Flag(name: .customLong("allow-client-broadcast"), help: "Let clients send broadcast frames to everyone. (env: HERALD_ALLOW_CLIENT_BROADCAST=true)")
    var allowClientBroadcast = false

    @Option(name: .customLong("publish-policy"), help: "Who may publish to a room over WebSocket: members or anyone. (env: HERALD_PUBLISH_POLICY, default members with a JWT secret, anyone in development mode)")
    var publishPolicy: String?

    @Option(help: "Seconds between server pings; a connection silent until the next ping is closed. (env: HERALD_HEARTBEAT, default 25)")
    var heartbeat: Int?

    @Option(name: .customLong("max-frame-size"), help: "Largest client frame or message in bytes; larger closes with 1009. (env: HERALD_MAX_FRAME_SIZE, default 65536)")
    var maxFrameSize: Int?

    @Option(name: .customLong("max-body-size"), help: "Largest HTTP API body in bytes. (env: HERALD_MAX_BODY_SIZE, default 1048576)")
    var maxBodySize: Int?

    @Option(name: .customLong("max-connections"), help: "Connections this node accepts; more are closed with 4029. (env: HERALD_MAX_CONNECTIONS, default 100000)")
    var maxConnections: Int?

    @Option(name: .customLong("max-connections-per-user"), help: "Connections per user on this node; more are closed with 4029. (env: HERALD_MAX_CONNECTIONS_PER_USER, default 32)")
    var maxConnectionsPerUser: Int?

    @Option(name: .customLong("max-rooms-per-user"), help: "Rooms a user may be a member of. (env: HERALD_MAX_ROOMS_PER_USER, default 256)")
    var maxRoomsPerUser: Int?

    @Option(name: .customLong("max-rooms"), help: "Rooms that may exist at once. (env: HERALD_MAX_ROOMS, default 1000000)")
    var maxRooms: Int?

    @Option(name: .customLong("rate-limit"), help: "Client frames per second per connection. (env: HERALD_RATE_LIMIT, default 100)")
    var rateLimit: Double?

    @Option(name: .customLong("rate-burst"), help: "Frames a connection may send in a burst above the rate. (env: HERALD_RATE_BURST, default 200)")
    var rateBurst: Int?

    @Option(name: .customLong("max-outbound-bytes"), help: "Bytes queued for one connection before it is cut off as a slow consumer (1013). (env: HERALD_MAX_OUTBOUND_BYTES, default 1048576)")
    var maxOutboundBytes: Int?

    @Option(help: "Redis shared by the cluster's nodes, redis://[[user]:password@]host[:port][/db]; unset runs one node on its own. (env: HERALD_REDIS_URL)")
    var redis: String?

    @Option(name: .customLong("redis-prefix"), help: "Prefix of Herald's channels and keys in Redis, so several clusters can share it. (env: HERALD_REDIS_PREFIX, default herald)")
    var redisPrefix: String?

    @Option(name: .customLong("presence-ttl"), help: "Seconds a node that stopped heartbeating (killed, cut off from Redis) still counts its users online. (env: HERALD_PRESENCE_TTL, default 10)")
    var presenceTTL: Int?

    @Option(name: .customLong("ingest-stream"), help: "With --redis: the Redis Stream backends append events to (XADD STREAM * target room:NAME data JSON [id KEY]); empty turns it off. (env: HERALD_INGEST_STREAM, default PREFIX:ingest)")
    var ingestStream: String?

    @Option(name: .customLong("ingest-claim-idle"), help: "Seconds an ingest entry may stay pending with a silent node before another node claims it. (env: HERALD_INGEST_CLAIM_IDLE, default 30)")
    var ingestClaimIdle: Int?

    @Option(name: .customLong("ingest-max-attempts"), help: "Deliveries after which an ingest entry is moved aside to STREAM:dead. (env: HERALD_INGEST_MAX_ATTEMPTS, default 5)")
    var ingestMaxAttempts: Int?

    @Option(name: .customLong("history-size"), help: "Messages kept per room and user for recovery; 0 keeps none. (env: HERALD_HISTORY_SIZE, default 100)")
    var historySize: Int?

    @Option(name: .customLong("history-ttl"), help: "Seconds a message is kept for recovery; a channel idle longer starts a new epoch. (env: HERALD_HISTORY_TTL, default 300)")
    var historyTTL: Int?

    @Option(name: .customLong("no-history-rooms"), help: "Comma-separated rooms that keep no history (exact names or prefix*); their messages still get offsets. (env: HERALD_NO_HISTORY_ROOMS)")
    var noHistoryRooms: String?

    @Option(name: .customLong("ack-ttl"), help: "Seconds a message sent with ack waits for its acknowledgement. (env: HERALD_ACK_TTL, default 3600)")
    var ackTTL: Int?

    @Option(help: "Worker processes sharing the port (SO_REUSEPORT); more than 1 needs --redis. (env: HERALD_WORKERS, default 1)")
    var workers: Int?

    @Flag(name: .customLong("reuse-port"), help: "Set SO_REUSEPORT on the listening socket (what each --workers process does).")
    var reusePort = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (env: HERALD_LOG_LEVEL, default info)")
    var logLevel: String?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        func value<T: LosslessStringConvertible>(_ flag: T?, _ name: String) throws -> T? {
            if let flag { return flag }
            guard let text = environment[name], !text.isEmpty else { return nil }
            guard let parsed = T(text) else { throw ValidationError("\(name)=\(text) is not a valid value") }
            return parsed
        }

        if let loops = try value(eventLoops, "HERALD_EVENT_LOOPS") {
            // Read once, when NIO's shared group is first used: nothing has used it yet.
            NIOSingletons.groupLoopCountSuggestion = try positive(loops, "event-loops")
        }
        var configuration = HeraldConfiguration()
        if let host = try value(host, "HERALD_HOST") { configuration.host = host }
        if let port = try value(port, "HERALD_PORT") { configuration.port = port }
        if let backlog = try value(backlog, "HERALD_BACKLOG") { configuration.backlog = try positive(backlog, "backlog") }
        configuration.nodeID = try value(nodeID, "HERALD_NODE_ID")
        configuration.jwtSecret = try value(jwtSecret, "HERALD_JWT_SECRET")
        configuration.apiKey = try value(apiKey, "HERALD_API_KEY")
        if configuration.apiKey?.isEmpty == true { throw ValidationError("--api-key must not be empty (leave it unset for an open API)") }
        if allowClientBroadcast {
            configuration.allowClientBroadcast = true
        } else if let text = environment["HERALD_ALLOW_CLIENT_BROADCAST"]?.lowercased(), !text.isEmpty {
            guard let enabled = ["true": true, "1": true, "yes": true, "false": false, "0": false, "no": false][text] else {
                throw ValidationError("HERALD_ALLOW_CLIENT_BROADCAST=\(text) must be true or false")
            }
            configuration.allowClientBroadcast = enabled
        }
        if let policy = try value(publishPolicy, "HERALD_PUBLISH_POLICY") {
            guard let parsed = PublishPolicy(rawValue: policy) else {
                throw ValidationError("publish policy must be members or anyone, not \(policy)")
            }
            configuration.publishPolicy = parsed
        }
        if let seconds = try value(heartbeat, "HERALD_HEARTBEAT") {
            guard seconds > 0 else { throw ValidationError("heartbeat must be at least 1 second") }
            configuration.hub.heartbeat = .seconds(Int64(seconds))
        }
        if let size = try value(maxFrameSize, "HERALD_MAX_FRAME_SIZE") { configuration.maxFrameSize = try positive(size, "max-frame-size") }
        if let size = try value(maxBodySize, "HERALD_MAX_BODY_SIZE") { configuration.maxBodySize = try positive(size, "max-body-size") }
        if let count = try value(maxConnections, "HERALD_MAX_CONNECTIONS") { configuration.hub.maxConnections = try positive(count, "max-connections") }
        if let count = try value(maxConnectionsPerUser, "HERALD_MAX_CONNECTIONS_PER_USER") {
            configuration.hub.maxConnectionsPerUser = try positive(count, "max-connections-per-user")
        }
        if let count = try value(maxRoomsPerUser, "HERALD_MAX_ROOMS_PER_USER") { configuration.hub.maxRoomsPerUser = try positive(count, "max-rooms-per-user") }
        if let count = try value(maxRooms, "HERALD_MAX_ROOMS") { configuration.hub.maxRooms = try positive(count, "max-rooms") }
        if let rate = try value(rateLimit, "HERALD_RATE_LIMIT") {
            guard rate > 0 else { throw ValidationError("rate-limit must be positive") }
            configuration.rateLimit = rate
        }
        if let burst = try value(rateBurst, "HERALD_RATE_BURST") { configuration.rateBurst = try positive(burst, "rate-burst") }
        if let bytes = try value(maxOutboundBytes, "HERALD_MAX_OUTBOUND_BYTES") { configuration.maxOutboundBytes = try positive(bytes, "max-outbound-bytes") }

        configuration.redisURL = try value(redis, "HERALD_REDIS_URL")
        if let prefix = try value(redisPrefix, "HERALD_REDIS_PREFIX") {
            guard !prefix.isEmpty, !prefix.contains(where: \.isWhitespace) else { throw ValidationError("redis-prefix must be non-empty, without spaces") }
            configuration.redisPrefix = prefix
        }
        if let seconds = try value(presenceTTL, "HERALD_PRESENCE_TTL") {
            guard seconds >= 3 else { throw ValidationError("presence-ttl must be at least 3 seconds (the heartbeat runs every third of it)") }
            configuration.presenceTTL = .seconds(seconds)
        }
        configuration.reusePort = reusePort
        if let stream = ingestStream ?? environment["HERALD_INGEST_STREAM"] { configuration.ingestStream = stream }
        if let seconds = try value(ingestClaimIdle, "HERALD_INGEST_CLAIM_IDLE") { configuration.ingestClaimIdle = .seconds(try positive(seconds, "ingest-claim-idle")) }
        if let attempts = try value(ingestMaxAttempts, "HERALD_INGEST_MAX_ATTEMPTS") { configuration.ingestMaxAttempts = try positive(attempts, "ingest-max-attempts") }
        if let size = try value(historySize, "HERALD_HISTORY_SIZE") {
            guard size >= 0 else { throw ValidationError("history-size must be 0 (no history) or more") }
            configuration.history.size = size
        }
        if let rooms = try value(noHistoryRooms, "HERALD_NO_HISTORY_ROOMS") {
            configuration.history.roomsWithoutHistory = rooms.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let seconds = try value(ackTTL, "HERALD_ACK_TTL") { configuration.history.ackTTL = .seconds(try positive(seconds, "ack-ttl")) }
        if let seconds = try value(historyTTL, "HERALD_HISTORY_TTL") { configuration.history.ttl = .seconds(try positive(seconds, "history-ttl")) }
        if let rooms = try value(noHistoryRooms, "HERALD_NO_HISTORY_ROOMS") {
            configuration.history.roomsWithoutHistory = rooms.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let seconds = try value(ackTTL, "HERALD_ACK_TTL") { configuration.history.ackTTL = .seconds(try positive(seconds, "ack-ttl")) }
        let workerCount = try value(workers, "HERALD_WORKERS") ?? 1
        guard workerCount >= 1 else { throw ValidationError("workers must be at least 1") }

        var logger = Logger(label: "herald")
        let level = try value(logLevel, "HERALD_LOG_LEVEL") ?? "info"
        guard let parsedLevel = Logger.Level(rawValue: level) else { throw ValidationError("unknown log level \(level)") }
        logger.logLevel = parsedLevel

        if workerCount > 1 {
            guard configuration.redisURL != nil else {
                throw ValidationError(
                    """
                    --workers \(workerCount) needs a shared broker: each worker is a separate process with its own \
                    connections and rooms, so without Redis a message published on one worker would never reach \
                    clients on another. Start Redis and pass it, e.g. --workers \(workerCount) --redis redis://127.0.0.1:6379 \
                    (or set HERALD_REDIS_URL).
                    """
                )
            }
            guard configuration.port != 0 else { throw ValidationError("--workers needs a fixed --port: with port 0 every worker would pick another one") }
            let supervisor = WorkerSupervisor(count: workerCount, arguments: Array(CommandLine.arguments.dropFirst()), baseNodeID: configuration.nodeID, logger: logger)
            try await supervisor.run()
            return
        }

        let server: HeraldServer
        do {
            server = try await HeraldServer(configuration: configuration, logger: logger)
        } catch {
            throw ValidationError(error.description)
        }
        try await server.run()
    }

    private func positive(_ value: Int, _ name: String) throws -> Int {
        guard value > 0 else { throw ValidationError("\(name) must be positive") }
        return value
    }
}
