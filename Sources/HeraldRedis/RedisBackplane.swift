import Herald
import HeraldRedisClient
public import Logging
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// What the Redis broker, roster and ingest consumer of one node share: the command connection,
/// the pub/sub connection, the key layout and the node's name.
///
/// Neither the broker nor the roster reaches into the other: each registers what it handles of
/// what arrives on the subscribed channels (`route(messages:lost:back:)`, `route(notices:nodeMessages:)`),
/// and the backplane dispatches by channel and by the payload's first byte: a membership notice
/// starts with `!` (the roster's), anything else on a room, user or broadcast channel is a
/// message (the broker's), and the node's own channel carries confirmations (the roster's).
/// The backplane is a `Service`: it keeps both connections up for the life of the node.
public final class RedisBackplane: Service, Sendable {
    public struct Configuration: Sendable {
        public var url: RedisURL
        /// Prefix of every channel and key, so several clusters can share one Redis.
        public var prefix = "herald"
        /// This node's id (unique in the cluster).
        public var nodeID: String
        public var client = RedisClient.Configuration()

        public init(url: RedisURL, nodeID: String) {
            self.url = url
            self.nodeID = nodeID
        }
    }

    public let configuration: Configuration
    public let layout: RedisLayout
    /// Where the connections go: the configured URL, and in a Redis Cluster the key whose
    /// slot's master serves Herald (the layout's prefix).
    public let url: RedisURL
    /// The event loops the connections run on.
    let group: any EventLoopGroup
    /// The command connection: publishes, scripts, reads.
    public let client: RedisClient
    let subscriber: RedisSubscriber
    private let routes: RouteTable
    /// Signalled each time the command connection is back after a loss (for one consumer: the
    /// roster, which then checks at once whether Redis lost its data).
    let commandReconnects: AsyncStream<Void>

    /// The routes behind their lock, in a class so the subscriber's callbacks can hold it.
    final class RouteTable: Sendable {
        private let mutex = Mutex(Routes())

        func withLock<Result>(_ body: (inout sending Routes) -> sending Result) -> sending Result {
            mutex.withLock(body)
        }
    }

    /// Who handles what. Set once by the broker and the roster as they are built.
    struct Routes {
        var message: @Sendable (DeliveryTarget, ByteBuffer) -> Void = { _, _ in }
        var notice: @Sendable (_ user: String, ByteBuffer) -> Void = { _, _ in }
        var nodeMessage: @Sendable (ByteBuffer) -> Void = { _ in }
        var subscriberLost: @Sendable () -> Void = {}
        var subscriberBack: @Sendable () -> Void = {}
        var control: @Sendable (ByteBuffer) -> Void = { _ in }
        var controlBack: @Sendable () -> Void = {}
    }

    public init(configuration: Configuration, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.group = group
        // In a Redis Cluster every key and channel carries the prefix as a hash tag, so that all
        // of Herald's data is in one slot: its scripts touch many keys at once.
        let layout = RedisLayout(prefix: configuration.url.cluster == nil ? configuration.prefix : "{" + configuration.prefix + "}")
        self.layout = layout
        var routed = configuration.url
        routed.cluster?.routingKey = layout.prefix
        let url = routed
        self.url = url
        let routes = RouteTable()
        self.routes = routes
        let (reconnects, reconnected) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.commandReconnects = reconnects
        self.client = RedisClient(url: url, configuration: configuration.client, on: group) {
            logger.notice("Redis command connection re-established", metadata: ["redis": "\(url.location)"])
            reconnected.yield()
        }
        self.subscriber = RedisSubscriber(
            url: url,
            on: group,
            onMessage: { message in
                switch layout.destination(of: message.channel) {
                case .target(let target)?:
                    if case .user(let user) = target, message.payload.readableBytesView.first == UInt8(ascii: "!") {
                        routes.withLock { $0.notice }(user, message.payload)
                    } else {
                        routes.withLock { $0.message }(target, message.payload)
                    }
                case .node?:
                    routes.withLock { $0.nodeMessage }(message.payload)
                case .control?:
                    routes.withLock { $0.control }(message.payload)
                case nil:
                    break
                }
            },
            onReconnect: {
                let (back, controlBack) = routes.withLock { ($0.subscriberBack, $0.controlBack) }
                back()
                controlBack()
            },
            onDisconnect: { routes.withLock { $0.subscriberLost }() }
        )
    }

    /// The broker's part: messages on room, user and broadcast channels, and the pub/sub
    /// connection's losses (`lost`) and returns (`back`, every channel subscribed again).
    func route(messages: @escaping @Sendable (DeliveryTarget, ByteBuffer) -> Void, lost: @escaping @Sendable () -> Void, back: @escaping @Sendable () -> Void) {
        routes.withLock {
            $0.message = messages
            $0.subscriberLost = lost
            $0.subscriberBack = back
        }
    }

    /// The roster's part: membership notices on user channels, and this node's channel.
    func route(notices: @escaping @Sendable (String, ByteBuffer) -> Void, nodeMessages: @escaping @Sendable (ByteBuffer) -> Void) {
        routes.withLock {
            $0.notice = notices
            $0.nodeMessage = nodeMessages
        }
    }

    /// The token denylist's part: the control channel's messages, and the pub/sub connection's
    /// returns (what was announced meanwhile was missed: reload).
    func route(control: @escaping @Sendable (ByteBuffer) -> Void, back: @escaping @Sendable () -> Void) {
        routes.withLock {
            $0.control = control
            $0.controlBack = back
        }
    }

    /// Connects both connections and subscribes the broadcast, control and node channels.
    /// - Throws: `RedisError` when Redis cannot be reached, with where it was looked for.
    public func connect() async throws {
        try await client.connect()
        try await subscriber.connect()
        try await subscriber.subscribe([layout.broadcastChannel, layout.controlChannel, layout.nodeChannel(configuration.nodeID)])
    }

    /// Whether the command connection is up right now.
    public var isConnected: Bool { client.isConnected }

    /// Keeps both connections up until graceful shutdown.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.subscriber.run() }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }
}
