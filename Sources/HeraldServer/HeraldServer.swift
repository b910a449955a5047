import Herald
public import Hummingbird
import HummingbirdCore
public import Logging
import NIOCore
import NIOPosix

/// A Herald node as a Hummingbird application: the WebSocket endpoint, the HTTP API, the
/// demo page, the hub and the broker, run together in one service group.
///
/// ```swift
/// let server = try await HeraldServer(configuration: configuration, logger: logger)
/// try await server.run()   // until SIGINT or SIGTERM
/// ```
public struct HeraldServer: Sendable {
    public let node: HeraldNode
    let logger: Logger

    /// Builds a node with the in-process ``LocalBroker``.
    /// - Throws: ``ConfigurationError`` for a configuration Herald cannot run with.
    public init(configuration: HeraldConfiguration, logger: Logger = Logger(label: "herald")) async throws(ConfigurationError) {
        let group = MultiThreadedEventLoopGroup.singleton
        let hub = Hub(configuration: configuration.hub, eventLoopGroup: group, logger: logger, framing: WebSocketFraming.textFrame)
        let authenticator: Authenticator =
            if let secret = configuration.jwtSecret { try await .jwt(secret: secret) } else { .development }
        let broker = LocalBroker(deliveringTo: hub)
        self.node = HeraldNode(configuration: configuration, hub: hub, broker: broker, authenticator: authenticator, logger: logger)
        self.logger = logger
    }

    /// The Hummingbird application. `onListening` receives the bound port (useful with port 0).
    public func makeApplication(onListening: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        let node = self.node
        let logger = self.logger
        let configuration = node.configuration
        let router = Router()
        router.middlewares.add(JSONErrorMiddleware())
        HTTPAPI(node: node).register(on: router)
        return Application(
            router: router,
            server: HTTPServerBuilder { responder in HeraldChildChannel(responder: responder, node: node) },
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "herald",
                backlog: configuration.backlog
            ),
            services: [node.hub, node.broker],
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                Self.logStartup(configuration: configuration, node: node, port: port, logger: logger)
                await onListening(port)
            },
            eventLoopGroupProvider: .shared(node.hub.eventLoopGroup),
            logger: logger
        )
    }

    /// Runs until SIGINT or SIGTERM; on either, closes every connection with 1012 and returns.
    public func run() async throws {
        try await makeApplication().runService()
    }

    private static func logStartup(configuration: HeraldConfiguration, node: HeraldNode, port: Int, logger: Logger) {
        logger.info(
            "Herald listening on http://\(configuration.host):\(port) (WebSocket: /ws, demo chat: /)",
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
            logger.warning("no API key configured: the HTTP API (/api) is open to anyone who can reach this port. Set --api-key or HERALD_API_KEY.")
        }
    }
}
