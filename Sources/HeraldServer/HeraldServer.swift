import Herald
import HeraldRedis
import Hummingbird
import HummingbirdCore
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import UnixSignals

/// A Herald node: the WebSocket endpoint, the HTTP API, the demo page, the hub, the broker and
/// the roster, run together in one service group.
///
/// Without ``HeraldConfiguration/redisURL`` the node stands alone (``LocalBroker``,
/// ``LocalRoster``); with it, it joins the cluster of nodes sharing that Redis
/// (``RedisBroker``, ``RedisRoster``).
///
/// ```swift
/// let server = try await HeraldServer(configuration: configuration, logger: logger)
/// try await server.run()   // until SIGINT or SIGTERM
/// ```
public struct HeraldServer: Sendable {
    public let node: HeraldNode
    let logger: Logger
    /// The cluster's services besides the hub (broker, and the roster when it heartbeats).
    let clusterServices: [any Service]

    /// Builds a node; with a Redis URL, connects to Redis first.
    /// - Throws: ``ConfigurationError`` for a configuration Herald cannot run with, or a Redis
    ///   it cannot reach.
    /// The event loop of every Redis connection of the process, a thread of its own: a node
    /// saturated by its clients (a reconnect storm) still reads Redis's replies in time, so
    /// its command watchdog, its subscription confirmations and its reconnects to Redis are not
    /// starved by the very load they serve. Shared by every node of the process, never shut down
    /// (like NIO's singleton group).
    static let redisEventLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public init(configuration: HeraldConfiguration, logger: Logger = Logger(label: "herald")) async throws(ConfigurationError) {
        var configuration = configuration
        let nodeID = configuration.nodeID ?? HeraldNode.randomNodeID()
        if let problem = HeraldNode.problem(withID: nodeID) { throw ConfigurationError("node id \(nodeID) \(problem)") }
        if let problem = configuration.openAPIProblem { throw ConfigurationError(problem) }
        configuration.nodeID = nodeID
        // Read before anything connects, so a bad file fails the start-up at once.
        var tls: TLSContextStore?
        if let files = configuration.tls { tls = try TLSContextStore(files: files, shutdownTimeout: configuration.closeTimeout) }
        let group = MultiThreadedEventLoopGroup.singleton
        let hub = Hub(configuration: configuration.hub, eventLoopGroup: group, logger: logger, framing: WebSocketFraming.textFrame)
        let authenticator: Authenticator =
            if let secret = configuration.jwtSecret { try await .jwt(secret: secret) } else { .development }
        let broker: any Broker
        let roster: any Roster
        if let redis = configuration.redisURL {
            let url: RedisURL
            do {
                url = try RedisURL(parsing: redis)
            } catch {
                throw ConfigurationError("--redis \(RedisURL.redacting(redis)): \(error)")
            }
            var brokerConfiguration = RedisBroker.Configuration(url: url, nodeID: nodeID)
            brokerConfiguration.prefix = configuration.redisPrefix
            brokerConfiguration.history = configuration.history
            let redisBroker = RedisBroker(configuration: brokerConfiguration, deliveringTo: hub, logger: logger, group: Self.redisEventLoop)
            do {
                try await redisBroker.connect()
            } catch {
                throw ConfigurationError.unavailable(
                    "cannot use Redis at \(url.host):\(url.port): \(error). Check that redis-server runs there and accepts connections, or fix --redis / HERALD_REDIS_URL"
                )
            }
            let redisRoster = RedisRoster(
                broker: redisBroker,
                limits: configuration.hub,
                presenceTTL: configuration.presenceTTL,
                notifying: hub,
                logger: logger
            )
            await redisRoster.heartbeat()
            broker = redisBroker
            roster = redisRoster
            var services: [any Service] = [redisBroker, redisRoster]
            let stream = configuration.ingestStream ?? configuration.redisPrefix + ":ingest"
            if !stream.isEmpty {
                var ingest = IngestConsumer.Configuration(stream: stream)
                ingest.claimIdle = configuration.ingestClaimIdle
                ingest.maxAttempts = configuration.ingestMaxAttempts
                services.append(IngestConsumer(configuration: ingest, broker: redisBroker, logger: logger))
            }
            clusterServices = services
        } else {
            let localBroker = LocalBroker(deliveringTo: hub, history: configuration.history)
            broker = localBroker
            roster = LocalRoster(limits: configuration.hub, notifying: hub)
            clusterServices = [localBroker]
        }
        hub.attach(broker: broker, roster: roster)
        self.node = HeraldNode(configuration: configuration, hub: hub, broker: broker, roster: roster, authenticator: authenticator, tls: tls, logger: logger)
        self.logger = logger
    }

    /// The node as one service (listener, hub, broker, roster). `onListening` receives the
    /// bound port (useful with port 0).
    public func makeService(onListening: @escaping @Sendable (Int) async -> Void = { _ in }) -> some Service {
        let node = self.node
        let logger = self.logger
        let configuration = node.configuration
        let router = Router()
        router.middlewares.add(HTTPConventionsMiddleware(cors: CORSPolicy(configuration.allowedOrigins)))
        router.middlewares.add(JSONErrorMiddleware())
        HTTPAPI(node: node).register(on: router)
        let listener = HeraldListener(
            childChannel: HeraldChildChannel(responder: HeraldListener.responder(for: router, logger: logger), node: node),
            host: configuration.host,
            port: configuration.port,
            backlog: configuration.backlog,
            reusePort: configuration.reusePort,
            eventLoopGroup: node.hub.eventLoopGroup,
            logger: logger,
            onListening: { port in
                Self.logStartup(configuration: configuration, node: node, port: port, logger: logger)
                await onListening(port)
            }
        )
        // A service group stops its services in reverse order: the listener first (no new
        // connections, every WebSocket closed with 1012), the broker and roster last.
        let reloader: [any Service] = node.tls == nil ? [] : [CertificateReloader(node: node)]
        return NodeServices(services: [node.hub] + clusterServices + reloader + [listener], logger: logger)
    }

    /// Runs until SIGINT or SIGTERM; on either, closes every connection with 1012 and returns.
    public func run() async throws {
        let group = ServiceGroup(
            configuration: .init(services: [makeService()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }

    private static func logStartup(configuration: HeraldConfiguration, node: HeraldNode, port: Int, logger: Logger) {
        logger.info(
            "Herald listening on \(configuration.tls == nil ? "http" : "https")://\(configuration.host):\(port) (WebSocket: /ws, demo chat: /)",
            metadata: ["node": .string(node.nodeID)]
        )
        if configuration.isDevelopmentMode {
            logger.warning(
                """
                DEVELOPMENT MODE: no JWT secret configured. Any client can claim any user with ?user=NAME \
                and join any room. Set --jwt-secret or HERALD_JWT_SECRET before exposing this server.
                """
            )
            if !["127.0.0.1", "localhost", "::1"].contains(configuration.host) {
                logger.critical("DEVELOPMENT MODE on \(configuration.host), a non-loopback address: anyone who can reach it can impersonate any user.")
            }
        }
        if configuration.apiKey == nil {
            // Only in development mode (HeraldServer refuses a JWT secret without an API key).
            logger.warning(
                "no API key configured: the HTTP API (/api) is open to anyone who can reach this port (development mode). Set --api-key or HERALD_API_KEY."
            )
        }
    }
}

/// Reloads the TLS certificate and key on SIGHUP (``HeraldNode/reloadCertificates()``), until
/// graceful shutdown.
struct CertificateReloader: Service {
    let node: HeraldNode

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            node.logger.info("SIGHUP: reloading the TLS certificate and key")
            node.reloadCertificates()
        }
    }
}

/// Several services run as one: the listener stops accepting first on graceful shutdown, then
/// the hub, broker and roster stop.
struct NodeServices: Service {
    let services: [any Service]
    let logger: Logger

    func run() async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [],
                logger: logger
            )
        )
        try await withGracefulShutdownHandler {
            try await group.run()
        } onGracefulShutdown: {
            Task { await group.triggerGracefulShutdown() }
        }
    }
}
