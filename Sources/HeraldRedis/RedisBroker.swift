public import Herald
public import Logging
public import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The ``Broker`` for a cluster of Herald nodes sharing one Redis: the seed's design.
///
/// A publish is one `PUBLISH` of the encoded frame to the target's channel (``RedisLayout``);
/// every node subscribed to it hands the same bytes to its hub. A broadcast costs one Redis
/// message per node, not per connection. A node subscribes to a room's or a user's channel only
/// while it has local interest (the hub says when, through ``changeInterest(_:on:)``).
///
/// Pub/sub is best-effort: while a node is disconnected from Redis it misses what is published
/// meanwhile (the reconnect is logged and counted), and publishes fail at once instead of
/// queueing. Membership and presence live in ``RedisRoster``, which shares this broker's
/// connections.
public final class RedisBroker: Broker {
    public struct Configuration: Sendable {
        public var url: RedisURL
        /// Prefix of every channel and key, so several clusters can share one Redis.
        public var prefix = "herald"
        /// This node's id (unique in the cluster).
        public var nodeID: String
        public var client = RedisClient.Configuration()
        /// How long a membership change waits for the nodes holding the user's connections to
        /// confirm they applied it.
        public var membershipConfirmationTimeout: TimeAmount = .seconds(2)

        public init(url: RedisURL, nodeID: String) {
            self.url = url
            self.nodeID = nodeID
        }
    }

    public let configuration: Configuration
    public let layout: RedisLayout
    let client: RedisClient
    let subscriber: RedisSubscriber
    let acks: MembershipAcks
    private let logger: Logger
    private let counters = BrokerStatistics()
    private let interest = Mutex<PendingInterest>(PendingInterest())
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>

    /// Channel changes not yet sent to Redis: the last wish per channel wins, so a burst of
    /// connects and disconnects costs one SUBSCRIBE and one UNSUBSCRIBE. Bounded by the
    /// number of distinct channels the node has had interest in since the last batch.
    struct PendingInterest {
        var wanted: [String: Bool] = [:]
        var waiters: [EventLoopPromise<Void>] = []
    }

    public init(configuration: Configuration, deliveringTo sink: any DeliverySink, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.logger = logger
        let layout = RedisLayout(prefix: configuration.prefix)
        self.layout = layout
        let acks = MembershipAcks(timeout: configuration.membershipConfirmationTimeout)
        self.acks = acks
        let counters = self.counters
        let url = configuration.url
        self.client = RedisClient(url: url, configuration: configuration.client, on: group) {
            logger.notice("Redis command connection re-established", metadata: ["redis": "\(url.host):\(url.port)"])
        }
        let client = self.client
        self.subscriber = RedisSubscriber(
            url: url,
            on: group,
            onMessage: { message in
                Self.route(message, layout: layout, sink: sink, acks: acks, client: client, logger: logger)
            },
            onReconnect: {
                counters.recordReconnect()
                logger.warning(
                    "Redis pub/sub connection re-established and every channel resubscribed; messages published while it was down were missed",
                    metadata: ["redis": "\(url.host):\(url.port)"]
                )
            }
        )
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Connects both connections and subscribes the broadcast and node channels.
    /// - Throws: ``RedisError`` when Redis cannot be reached, with where it was looked for.
    public func connect() async throws {
        try await client.connect()
        try await subscriber.connect()
        try await subscriber.subscribe([layout.broadcastChannel, layout.nodeChannel(configuration.nodeID)])
    }

    public var statistics: BrokerStatistics.Snapshot { counters.snapshot() }

    /// Runs until graceful shutdown: keeps both connections up and applies interest changes.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.subscriber.run() }
            group.addTask { await self.applyInterestChanges() }
            try? await gracefulShutdown()
            group.cancelAll()
            wake.finish()
        }
    }

    // MARK: - Publishing

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let command = RESPCommand(arguments: [Self.publishName, ByteBuffer(string: layout.channel(for: envelope.target)), envelope.frame])
        let counters = self.counters
        return client.submit(command).hop(to: eventLoop).flatMapErrorThrowing { error in
            counters.recordPublishFailure()
            throw BrokerError("Redis did not take the message: \(error)")
        }.map { _ in }
    }

    private static let publishName = ByteBuffer(string: "PUBLISH")

    // MARK: - Interest

    public func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        interest.withLock { pending in
            for target in change.subscribe { pending.wanted[layout.channel(for: target)] = true }
            for target in change.unsubscribe { pending.wanted[layout.channel(for: target)] = false }
            pending.waiters.append(promise)
        }
        wake.yield()
        return promise.futureResult
    }

    /// One batch at a time, in order: a later change never overtakes an earlier one.
    private func applyInterestChanges() async {
        for await _ in wakes {
            let batch = interest.withLock { pending in
                defer { pending = PendingInterest() }
                return pending
            }
            let subscribe = batch.wanted.filter(\.value).map(\.key)
            let unsubscribe = batch.wanted.filter { !$0.value }.map(\.key)
            do {
                try await subscriber.subscribe(subscribe)
                try await subscriber.unsubscribe(unsubscribe)
                for waiter in batch.waiters { waiter.succeed() }
            } catch {
                logger.error("Redis did not confirm a subscription change", metadata: ["error": "\(error)"])
                for waiter in batch.waiters { waiter.fail(error) }
            }
        }
    }

    // MARK: - Receiving

    private static func route(
        _ message: RedisMessage,
        layout: RedisLayout,
        sink: any DeliverySink,
        acks: MembershipAcks,
        client: RedisClient,
        logger: Logger
    ) {
        switch layout.destination(of: message.channel) {
        case .target(let target)?:
            if case .user(let user) = target, message.payload.readableBytesView.first == UInt8(ascii: "!") {
                guard let notice = MembershipNotice(user: user, payload: String(buffer: message.payload)) else {
                    logger.warning("malformed membership notice ignored", metadata: ["channel": "\(message.channel)"])
                    return
                }
                sink.membershipChanged(notice.change).whenComplete { _ in
                    // Confirm even when the subscription failed: the change is applied here;
                    // the origin must not wait for a node that cannot do better.
                    _ = client.submit(RESPCommand("PUBLISH", layout.nodeChannel(notice.origin), notice.token))
                }
                return
            }
            sink.deliver(Envelope(target: target, frame: message.payload))
        case .node?:
            acks.confirmed(String(buffer: message.payload))
        case nil:
            break
        }
    }
}
