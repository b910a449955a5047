public import Herald
import Hummingbird
import HummingbirdCore
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization
import UnixSignals

/// A Herald node: the WebSocket endpoint, the HTTP API, the demo page and the hub, run with the
/// broker, the roster and any other services it is given, in one service group.
///
/// The server wires no backend: it takes the `Hub`, a `Broker`, a `Roster` and the services
/// that keep them running (the shape of Hummingbird's `Application(…, services:)`). The
/// in-memory backend (`LocalBroker`, `LocalRoster`) is one call away:
///
/// ```swift
/// let server = try await HeraldServer(configuration: configuration, logger: logger)
/// try await server.run()   // until SIGINT or SIGTERM
/// ```
///
/// A cluster backend is built outside and passed in (the `herald` executable builds the Redis
/// one, in `HeraldCluster`):
///
/// ```swift
/// let hub = HeraldServer.makeHub(configuration: configuration, logger: logger)
/// let broker = MyBroker(deliveringTo: hub)
/// let roster = MyRoster(notifying: hub)
/// let server = try await HeraldServer(configuration: configuration, hub: hub, broker: broker, roster: roster, services: [broker])
/// ```
public struct HeraldServer: Sendable {
    public let node: HeraldNode
    let logger: Logger
    /// Services run beside the hub for the life of the node (the broker, the roster when it
    /// heartbeats, an ingest consumer…), started in order, stopped in reverse.
    let services: [any Service]

    /// A hub for `configuration`, framing its messages as WebSocket text frames, on NIO's
    /// shared event loop group, with a Prometheus registry of its own unless metrics are off: what a broker and a roster are built around before the server.
    public static func makeHub(configuration: HeraldConfiguration, logger: Logger = Logger(label: "herald")) -> Hub {
        Hub(
            configuration: configuration.hub, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger,
            metrics: configuration.metrics == .off ? .disabled : .prometheus(), framing: WebSocketFraming.textFrame
        )
    }

    /// A node standing alone: the in-memory broker and roster.
    /// - Throws: ``ConfigurationError`` for a configuration Herald cannot run with.
    public init(configuration: HeraldConfiguration, logger: Logger = Logger(label: "herald")) async throws(ConfigurationError) {
        var configuration = configuration
        configuration.nodeID = configuration.nodeID ?? HeraldNode.randomNodeID()
        let hub = Self.makeHub(configuration: configuration, logger: logger)
        let broker = LocalBroker(deliveringTo: hub, history: configuration.history)
        let roster = LocalRoster(limits: configuration.hub, notifying: hub)
        try await self.init(configuration: configuration, hub: hub, broker: broker, roster: roster, services: [broker], logger: logger)
    }

    /// A node on the backend it is given. `broker` and `roster` deliver to `hub` (they were
    /// built around it), and so does `denylist` (revoked token ids; `nil`: one in memory, for
    /// a node on its own); `services` run for the life of the node and usually include the
    /// broker. The hub itself is always run.
    /// - Throws: ``ConfigurationError`` for a configuration Herald cannot run with (a bad node
    ///   id, a JWT secret without an API key, an unreadable TLS certificate).
    public init(
        configuration: HeraldConfiguration,
        hub: Hub,
        broker: any Broker,
        roster: any Roster,
        denylist: (any TokenDenylist)? = nil,
        statusBoard: (any StatusBoard)? = nil,
        services: [any Service] = [],
        logger: Logger = Logger(label: "herald")
    ) async throws(ConfigurationError) {
        var configuration = configuration
        let nodeID = configuration.nodeID ?? HeraldNode.randomNodeID()
        if let problem = HeraldNode.problem(withID: nodeID) { throw ConfigurationError("node id \(nodeID) \(problem)") }
        if let problem = configuration.openAPIProblem { throw ConfigurationError(problem) }
        configuration.nodeID = nodeID
        // Read before anything listens, so a bad file fails the start-up at once.
        var tls: TLSContextStore?
        if let files = configuration.tls { tls = try TLSContextStore(files: files, shutdownTimeout: configuration.closeTimeout) }
        let authenticator: Authenticator
        if configuration.isDevelopmentMode {
            authenticator = .development
        } else {
            var keys = configuration.tokenKeys
            if let secret = configuration.jwtSecret { keys.insert(try await TokenKey.secret(secret), at: 0) }
            authenticator = try await Authenticator(keys: keys, keySets: configuration.tokenKeySets, policy: configuration.tokenPolicy, logger: logger)
        }
        hub.attach(broker: broker, roster: roster)
        let denylist = denylist ?? LocalTokenDenylist(limit: configuration.maxRevokedTokens, notifying: hub)
        // The node's own warnings and errors are kept for /status (the caller's, when it
        // captured its logger for the whole process: ``HeraldConfiguration/recentLogEvents``).
        let recentEvents = configuration.recentLogEvents ?? RecentLogEvents()
        let logger = configuration.recentLogEvents == nil ? recentEvents.capturing(logger) : logger
        self.node = HeraldNode(
            configuration: configuration, hub: hub, broker: broker, roster: roster, denylist: denylist, authenticator: authenticator, tls: tls, logger: logger,
            statusBoard: statusBoard, recentEvents: recentEvents
        )
        self.logger = logger
        self.services = services
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
        let metrics = configuration.metrics == .off ? nil : NodeMetrics(node: node)
        let status = StatusReporter(node: node, board: node.statusBoard, recentEvents: node.recentEvents)
        HTTPAPI(node: node, metrics: configuration.metrics == .api ? metrics : nil, status: status).register(on: router)
        let listener = HeraldListener(
            childChannel: HeraldChildChannel(responder: HeraldListener.responder(for: router, logger: logger), node: node),
            host: configuration.host,
            port: configuration.port,
            backlog: configuration.backlog,
            reusePort: configuration.reusePort,
            eventLoopGroup: node.hub.eventLoopGroup,
            logger: logger,
            onListening: { port in
                node.listening.store(true, ordering: .relaxed)
                Self.logStartup(configuration: configuration, node: node, port: port, logger: logger)
                await onListening(port)
            }
        )
        var metricsListener: [any Service] = []
        if case .separate(let host, let port) = configuration.metrics, let metrics {
            metricsListener = [MetricsListener(host: host, port: port, node: node, metrics: metrics, logger: logger)]
        }
        // A service group stops its services in reverse order: the listener first (no new
        // connections, every WebSocket closed with 1012), the broker and roster last.
        let reloader: [any Service] = node.tls == nil ? [] : [CertificateReloader(node: node)]
        let presence: [any Service] = node.presenceNotifier.map { [$0] } ?? []
        return NodeServices(
            services: [node.hub] + services + presence + reloader + metricsListener + [status, listener], node: node, drainDelay: configuration.drainDelay,
            logger: logger)
    }

    /// Runs until SIGINT or SIGTERM; on either, closes every connection with 1012 and returns.
    /// `onListening` receives the bound port.
    public func run(onListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let group = ServiceGroup(
            configuration: .init(services: [makeService(onListening: onListening)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
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
                DEVELOPMENT MODE: no token key configured. Any client can claim any user with ?user=NAME \
                and join any room. Set --jwt-secret, --jwt-public-key, --jwks or --jwks-url before exposing this server.
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
    let node: HeraldNode
    /// How long `/readyz` fails before the listener stops (``HeraldConfiguration/drainDelay``).
    let drainDelay: TimeAmount
    let logger: Logger

    func run() async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [],
                logger: logger
            )
        )
        // The inner group runs in a detached task: a service group inherits its parent's
        // graceful shutdown through a task-local and would stop the listener at once, before
        // the drain delay (during which /readyz fails but everything is still served).
        let running = Task.detached { try await group.run() }
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await running.value
            } onGracefulShutdown: { [node, drainDelay, logger] in
                node.draining.store(true, ordering: .relaxed)
                Task {
                    if drainDelay > .zero {
                        logger.notice("draining: /readyz fails for \(drainDelay.nanoseconds / 1_000_000) ms, then connections close (1012)")
                        try? await Task.sleep(for: .nanoseconds(drainDelay.nanoseconds))
                    }
                    await group.triggerGracefulShutdown()
                }
            }
        } onCancel: {
            running.cancel()
        }
    }
}
