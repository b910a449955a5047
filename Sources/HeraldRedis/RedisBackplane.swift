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
    /// slot's master serves Herald's shared keys (the layout's shared prefix).
    public let url: RedisURL
    /// The event loops the connections run on.
    let group: any EventLoopGroup
    /// The command connection for what the cluster shares: broadcasts, the roster, the ingest
    /// queue, and (unless sharded) every channel.
    public let client: RedisClient
    let subscriber: RedisSubscriber
    /// On a sharded Redis Cluster: the commands of room and user channels, each sent to the
    /// master of its channel's slot, and their shard channels.
    public let shards: RedisClusterClient?
    let shardSubscriber: RedisClusterSubscriber?
    private let routes: RouteTable
    private let health = SubscriptionHealth()
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
        /// Some channels stopped being subscribed (a shard of a sharded cluster): the others go on.
        var channelsLost: @Sendable ([DeliveryTarget]) -> Void = { _ in }
        var subscriberBack: @Sendable () -> Void = {}
        var control: @Sendable (ByteBuffer) -> Void = { _ in }
        var controlBack: @Sendable () -> Void = {}
    }

    /// Whether the shared subscriber and the shard subscribers are up: the broker is told of
    /// a loss once, and that all is back only when both are.
    final class SubscriptionHealth: Sendable {
        private let down = Mutex<(shared: Bool, shards: Bool)>((false, false))

        /// Returns whether this is the first part down (tell the broker).
        func lose(shards: Bool) -> Bool {
            down.withLock { down in
                let wasUp = !down.shared && !down.shards
                if shards { down.shards = true } else { down.shared = true }
                return wasUp
            }
        }

        /// Returns whether both parts are up now (tell the broker).
        func recover(shards: Bool) -> Bool {
            down.withLock { down in
                if shards { down.shards = false } else { down.shared = false }
                return !down.shared && !down.shards
            }
        }
    }

    public init(configuration: Configuration, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.group = group
        // In a Redis Cluster Herald's shared keys carry the prefix as a hash tag, so that they
        // are in one slot (its scripts touch many at once); sharded, each room and user channel
        // carries its own tag, and its keys follow it.
        let sharded = configuration.url.cluster?.sharded ?? false
        let layout =
            if sharded {
                RedisLayout(shardedWithPrefix: configuration.prefix)
            } else {
                RedisLayout(prefix: configuration.url.cluster == nil ? configuration.prefix : "{" + configuration.prefix + "}")
            }
        self.layout = layout
        var routed = configuration.url
        routed.cluster?.routingKey = layout.sharedPrefix
        let url = routed
        self.url = url
        let routes = RouteTable()
        self.routes = routes
        let health = self.health
        let (reconnects, reconnected) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.commandReconnects = reconnects
        self.client = RedisClient(url: url, configuration: configuration.client, on: group) {
            logger.notice("Redis command connection re-established", metadata: ["redis": "\(url.location)"])
            reconnected.yield()
        }
        let dispatch: @Sendable (RedisMessage) -> Void = { message in Self.dispatch(message, layout: layout, routes: routes) }
        self.subscriber = RedisSubscriber(
            url: url,
            on: group,
            onMessage: dispatch,
            onReconnect: {
                let (back, controlBack) = routes.withLock { ($0.subscriberBack, $0.controlBack) }
                if health.recover(shards: false) { back() }
                controlBack()
            },
            onDisconnect: { if health.lose(shards: false) { routes.withLock { $0.subscriberLost }() } }
        )
        if sharded {
            var clusterConfiguration = RedisClusterClient.Configuration()
            clusterConfiguration.client = configuration.client
            let shards = RedisClusterClient(url: url, configuration: clusterConfiguration, on: group)
            self.shards = shards
            self.shardSubscriber = RedisClusterSubscriber(
                cluster: shards,
                on: group,
                onMessage: dispatch,
                onLost: { channels in
                    _ = health.lose(shards: true)
                    let targets = channels.compactMap { channel -> DeliveryTarget? in
                        if case .target(let target)? = layout.destination(of: channel) { return target }
                        return nil
                    }
                    routes.withLock { $0.channelsLost }(targets)
                },
                onBack: { if health.recover(shards: true) { routes.withLock { $0.subscriberBack }() } }
            )
        } else {
            self.shards = nil
            self.shardSubscriber = nil
        }
    }

    /// Hands a message to whoever handles its channel: membership and disconnect notices
    /// (starting with `!`) on user channels to the roster, other messages on room, user and
    /// broadcast channels to the broker, the node's and the control channel to theirs.
    private static func dispatch(_ message: RedisMessage, layout: RedisLayout, routes: RouteTable) {
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
    }

    /// Subscribes room and user channels (shard channels on a sharded cluster).
    func subscribe(_ channels: [String]) async throws {
        if let shardSubscriber { try await shardSubscriber.subscribe(channels) } else { try await subscriber.subscribe(channels) }
    }

    func unsubscribe(_ channels: [String]) async throws {
        if let shardSubscriber { try await shardSubscriber.unsubscribe(channels) } else { try await subscriber.unsubscribe(channels) }
    }

    /// The broker's part: messages on room, user and broadcast channels, and the pub/sub
    /// connection's losses (`lost`) and returns (`back`, every channel subscribed again).
    func route(
        messages: @escaping @Sendable (DeliveryTarget, ByteBuffer) -> Void, lost: @escaping @Sendable () -> Void,
        lostChannels: @escaping @Sendable ([DeliveryTarget]) -> Void, back: @escaping @Sendable () -> Void
    ) {
        routes.withLock {
            $0.message = messages
            $0.subscriberLost = lost
            $0.channelsLost = lostChannels
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
        try await shards?.connect()
        try await subscriber.connect()
        try await subscriber.subscribe([layout.broadcastChannel, layout.controlChannel, layout.nodeChannel(configuration.nodeID)])
    }

    /// Whether the command connections are up right now (on a sharded cluster, to every master).
    public var isConnected: Bool { client.isConnected && (shards?.isConnected ?? true) }

    /// Keeps the connections up until graceful shutdown.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.subscriber.run() }
            if let shards { group.addTask { await shards.run() } }
            if let shardSubscriber { group.addTask { await shardSubscriber.run() } }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }
}
