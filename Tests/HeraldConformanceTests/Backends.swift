import Foundation
import Herald
import HeraldRedis
import HeraldRedisClient
import HeraldTestSupport
import HeraldWire
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing

/// The backends every conformance suite runs against. A new backend adds a case here (and its
/// nodes in ``TestBackend/start(_:nodes:configure:)``) and must pass every suite unchanged.
enum BackendKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case redis
    /// Redis behind Sentinel: a master, a replica and three sentinels, reached through
    /// `redis+sentinel://`.
    case sentinel
    /// A Redis Cluster of three masters with a replica each, reached through `redis+cluster://`:
    /// room and user channels spread over the slots (sharded pub/sub), shared keys in the
    /// prefix's slot.
    case cluster
    /// The same cluster with `?sharding=none`: every key and channel in the prefix's slot.
    case clusterOneSlot

    var testDescription: String { rawValue }

    /// Nodes that can share one instance of the backend (the in-memory one is a single node).
    var maxNodes: Int { self == .memory ? 1 : 2 }

    /// Whether the backend is a service that can become unreachable.
    var canBeUnavailable: Bool { self != .memory }

    /// Whether nodes can die without telling the backend (presence must then expire).
    var outlivesNodes: Bool { self != .memory }
}

/// What a conformance test configures.
struct BackendSettings: Sendable {
    var history = HistoryConfiguration()
    var limits = HubConfiguration()
    var presenceTTL: Duration = .seconds(3)
    /// Nodes whose roster never heartbeats after it started (as if killed right then).
    var silentNodes: Set<Int> = []
}

/// One node's view of the backend: its broker and roster, delivering to a recording hub.
final class TestNode: Sendable {
    let broker: any Broker
    let roster: any Roster
    let sink: RecordingSink
    private let group: ServiceGroup?
    private let running: Task<Void, any Error>?

    init(broker: any Broker, roster: any Roster, sink: RecordingSink, services: [any Service]) {
        self.broker = broker
        self.roster = roster
        self.sink = sink
        if services.isEmpty {
            group = nil
            running = nil
        } else {
            let group = ServiceGroup(services: services, gracefulShutdownSignals: [], logger: Logger(label: "conformance"))
            self.group = group
            running = Task { try await group.run() }
        }
    }

    static let loop = MultiThreadedEventLoopGroup.singleton.next()

    /// This node now has a connection of `user` (its hub would say so): the broker delivers the
    /// user's channel here, and the roster counts the connection.
    func holds(_ targets: DeliveryTarget...) async throws {
        try await broker.changeInterest(InterestChange(subscribe: targets), on: Self.loop).get()
    }

    func drops(_ targets: DeliveryTarget...) async throws {
        try await broker.changeInterest(InterestChange(unsubscribe: targets), on: Self.loop).get()
    }

    @discardableResult
    func publish(_ target: DeliveryTarget, _ data: String, key: String? = nil, ack: Bool = false) async throws -> StreamPosition? {
        var envelope = Envelope.message(to: target, from: "sender", data: try RawJSON(validating: data), requiresAck: ack)
        envelope.idempotencyKey = key
        return try await broker.publish(envelope, on: Self.loop)
    }

    func stop() async {
        await group?.triggerGracefulShutdown()
        _ = try? await running?.value
    }
}

/// A backend instance shared by one or more nodes, stopped by ``stop()``.
final class TestBackend: Sendable {
    let kind: BackendKind
    let nodes: [TestNode]
    let redis: RedisServerProcess?
    let sentinel: RedisSentinelSetup?
    let cluster: RedisClusterSetup?

    var node: TestNode { nodes[0] }

    private init(kind: BackendKind, nodes: [TestNode], redis: RedisServerProcess?, sentinel: RedisSentinelSetup? = nil, cluster: RedisClusterSetup? = nil) {
        self.kind = kind
        self.nodes = nodes
        self.redis = redis
        self.sentinel = sentinel
        self.cluster = cluster
    }

    static func start(_ kind: BackendKind, nodes count: Int = 1, configure: (inout BackendSettings) -> Void = { _ in }) async throws -> TestBackend {
        precondition(count <= kind.maxNodes, "\(kind) holds at most \(kind.maxNodes) nodes")
        var settings = BackendSettings()
        configure(&settings)
        switch kind {
        case .memory:
            let sink = RecordingSink()
            let broker = LocalBroker(deliveringTo: sink, history: settings.history)
            let roster = LocalRoster(limits: settings.limits, notifying: sink)
            return TestBackend(kind: kind, nodes: [TestNode(broker: broker, roster: roster, sink: sink, services: [broker])], redis: nil)
        case .redis, .sentinel, .cluster, .clusterOneSlot:
            var redis: RedisServerProcess?
            var sentinel: RedisSentinelSetup?
            var cluster: RedisClusterSetup?
            let url: RedisURL
            switch kind {
            case .sentinel:
                let setup = try await RedisSentinelSetup(readyForFailover: false)
                sentinel = setup
                url = try RedisURL(parsing: setup.url)
            case .cluster, .clusterOneSlot:
                let setup = try await RedisClusterSetup(readyForFailover: false)
                cluster = setup
                url = try RedisURL(parsing: setup.url + (kind == .clusterOneSlot ? "?sharding=none" : ""))
            default:
                let server = try await RedisServerProcess()
                redis = server
                url = RedisURL(port: server.port)
            }
            var nodes: [TestNode] = []
            for index in 0..<count {
                let sink = RecordingSink()
                var configuration = RedisBackplane.Configuration(url: url, nodeID: "n\(index)")
                configuration.prefix = "conformance"
                configuration.client.commandTimeout = .seconds(2)
                let logger = Logger(label: "conformance")
                let backplane = RedisBackplane(configuration: configuration, logger: logger)
                var brokerConfiguration = RedisBroker.Configuration()
                brokerConfiguration.history = settings.history
                let broker = RedisBroker(configuration: brokerConfiguration, backplane: backplane, deliveringTo: sink, logger: logger)
                let roster = RedisRoster(backplane: backplane, limits: settings.limits, presenceTTL: settings.presenceTTL, notifying: sink, logger: logger)
                await broker.connect()
                try await backplane.connect()
                await roster.heartbeat()
                let services: [any Service] = settings.silentNodes.contains(index) ? [backplane, broker] : [backplane, broker, roster]
                nodes.append(TestNode(broker: broker, roster: roster, sink: sink, services: services))
            }
            return TestBackend(kind: kind, nodes: nodes, redis: redis, sentinel: sentinel, cluster: cluster)
        }
    }

    /// Makes the backend unreachable (kills the Redis server; with Sentinel, the master and
    /// its replica, so that there is nothing to fail over to; every node of a cluster).
    func makeUnavailable() {
        redis?.stop()
        sentinel?.replica.stop()
        sentinel?.master.stop()
        cluster?.stop()
    }

    func stop() async {
        for node in nodes { await node.stop() }
        redis?.stop()
        sentinel?.stop()
        cluster?.stop()
    }

    /// Runs `body` with a started backend, stopping it afterwards (also when `body` throws).
    static func with(
        _ kind: BackendKind,
        nodes: Int = 1,
        configure: (inout BackendSettings) -> Void = { _ in },
        _ body: (TestBackend) async throws -> Void
    ) async throws {
        let backend = try await start(kind, nodes: nodes, configure: configure)
        do {
            try await body(backend)
        } catch {
            await backend.stop()
            throw error
        }
        await backend.stop()
    }
}

/// A node's hub as the broker and roster see it: records what they deliver and announce;
/// connection counts and memberships are what the test sets.
final class RecordingSink: DeliverySink {
    struct Delivery: Sendable {
        var target: DeliveryTarget
        var position: StreamPosition?
        /// The frame as a client would receive it.
        var frame: String
    }

    let deliveries = Mutex<[Delivery]>([])
    let changes = Mutex<[MembershipChange]>([])
    let counts = Mutex<[String: Int]>([:])

    func deliver(_ envelope: Envelope) {
        let delivery = Delivery(target: envelope.target, position: envelope.position, frame: String(buffer: envelope.deliveredFrame))
        deliveries.withLock { $0.append(delivery) }
    }

    func membershipChanged(_ change: MembershipChange) -> EventLoopFuture<Void> {
        changes.withLock { $0.append(change) }
        return TestNode.loop.makeSucceededVoidFuture()
    }

    func localConnectionCounts() -> [String: Int] { counts.withLock { $0 } }

    func delivered(to target: DeliveryTarget) -> [Delivery] {
        deliveries.withLock { $0.filter { $0.target == target } }
    }
}

/// Polls `condition` until it holds, for at most `seconds` (for effects that are batched or
/// travel through the backend with no event to await).
func eventually(_ what: String, within seconds: Double = 5, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("timed out after \(seconds) s waiting until \(what)")
    throw CancellationError()
}

/// The JSON object a client receives in `frame`.
func json(_ frame: String) throws -> [String: Any] {
    try #require(JSONSerialization.jsonObject(with: Data(frame.utf8)) as? [String: Any])
}
