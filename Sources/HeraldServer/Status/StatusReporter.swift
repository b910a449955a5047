import Foundation
import Herald
import NIOCore
import ServiceLifecycle
import Synchronization

/// Posts this node's figures to the status board every ``interval`` (kept for ``ttl``), so that
/// `/status` on any node shows every node of the cluster: with Redis through Redis, on its own
/// from memory.
final class StatusReporter: Service, Sendable {
    static let interval: Duration = .seconds(2)
    static let ttl: Duration = .seconds(10)

    let node: HeraldNode
    let board: any StatusBoard
    private let recentEvents: RecentLogEvents
    private let startTime = ProcessFigures.startTime() ?? Date().timeIntervalSince1970
    /// The latency counts at the last post: quantiles are of what happened since.
    private let lastLatencyCounts = Mutex<[Int]>([])
    /// The queued bytes when last measured: the periodic post does not walk every connection.
    private let lastQueuedBytes = Atomic<Int>(0)

    init(node: HeraldNode, board: any StatusBoard, recentEvents: RecentLogEvents) {
        self.node = node
        self.board = board
        self.recentEvents = recentEvents
    }

    func run() async throws {
        lastLatencyCounts.withLock { $0 = node.hub.metrics.publishLatencyCounts() }
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let snapshot = await self.snapshot(resettingBaseline: true, walkingConnections: false)
            if let json = try? JSONEncoder().encode(snapshot) {
                await board.post(node: node.nodeID, snapshot: ByteBuffer(bytes: json), ttl: Self.ttl)
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.interval) }
        }
    }

    /// This node's figures now, for `/api/status`: the queued bytes measured (a walk of every
    /// connection, only when someone asks), the latency quantiles since the last post (asking
    /// does not move the window).
    func current() async -> ByteBuffer? {
        guard let json = try? JSONEncoder().encode(await snapshot(resettingBaseline: false, walkingConnections: true)) else { return nil }
        return ByteBuffer(bytes: json)
    }

    private func snapshot(resettingBaseline: Bool, walkingConnections: Bool) async -> NodeStatus {
        let hub = node.hub
        let counts = hub.statistics.snapshot()
        let latency = hub.metrics.publishLatencyCounts()
        let previous = lastLatencyCounts.withLock { previous in
            defer { if resettingBaseline { previous = latency } }
            return previous
        }
        if walkingConnections { lastQueuedBytes.store(await hub.queuedOutboundBytes(), ordering: .relaxed) }
        let brokerProblem = node.broker.unreadiness
        return NodeStatus(
            node: node.nodeID,
            version: HeraldVersion.current,
            time: Int64(Date().timeIntervalSince1970 * 1000),
            startTime: startTime,
            ready: node.readiness().isReady,
            broker: brokerProblem ?? "connected",
            connections: hub.connectionCount,
            usersOnline: hub.onlineUserCount,
            localRooms: hub.localRoomCount,
            messages: counts.messagesDelivered,
            deliveries: counts.deliveriesToAll + counts.deliveriesToRooms + counts.deliveriesToUsers,
            publishes: hub.metrics.publishesRecorded,
            slowConsumersCut: counts.slowConsumersCut,
            publishLatencyP50Milliseconds: previous.isEmpty ? nil : HeraldMetrics.latencyQuantile(0.5, from: previous, to: latency),
            publishLatencyP99Milliseconds: previous.isEmpty ? nil : HeraldMetrics.latencyQuantile(0.99, from: previous, to: latency),
            outboundQueuedBytes: lastQueuedBytes.load(ordering: .relaxed),
            residentBytes: ProcessFigures.residentBytes(),
            cpuSeconds: ProcessFigures.cpuSeconds(),
            lastErrors: recentEvents.all.suffix(10)
        )
    }
}

/// One node's figures on the status page (`GET /api/status`, `nodes[]`). Totals are since the
/// node started; the page turns them into rates between two readings.
struct NodeStatus: Encodable, Sendable {
    var node: String
    var version: String
    /// When the snapshot was taken, milliseconds since 1970.
    var time: Int64
    /// When the process started, seconds since 1970.
    var startTime: Double
    var ready: Bool
    /// `connected`, or why the broker cannot serve.
    var broker: String
    var connections: Int
    var usersOnline: Int
    var localRooms: Int
    var messages: Int
    var deliveries: Int
    var publishes: Int
    var slowConsumersCut: Int
    /// Of the messages delivered since the last snapshot (bucket upper bounds); absent when none.
    var publishLatencyP50Milliseconds: Int64?
    var publishLatencyP99Milliseconds: Int64?
    var outboundQueuedBytes: Int
    var residentBytes: Int?
    var cpuSeconds: Double?
    var lastErrors: [RecentLogEvents.Entry]

    init(
        node: String, version: String, time: Int64, startTime: Double, ready: Bool, broker: String, connections: Int, usersOnline: Int,
        localRooms: Int, messages: Int, deliveries: Int, publishes: Int, slowConsumersCut: Int, publishLatencyP50Milliseconds: Int64?,
        publishLatencyP99Milliseconds: Int64?, outboundQueuedBytes: Int, residentBytes: Int?, cpuSeconds: Double?,
        lastErrors: some Sequence<RecentLogEvents.Entry>
    ) {
        self.node = node
        self.version = version
        self.time = time
        self.startTime = startTime
        self.ready = ready
        self.broker = broker
        self.connections = connections
        self.usersOnline = usersOnline
        self.localRooms = localRooms
        self.messages = messages
        self.deliveries = deliveries
        self.publishes = publishes
        self.slowConsumersCut = slowConsumersCut
        self.publishLatencyP50Milliseconds = publishLatencyP50Milliseconds
        self.publishLatencyP99Milliseconds = publishLatencyP99Milliseconds
        self.outboundQueuedBytes = outboundQueuedBytes
        self.residentBytes = residentBytes
        self.cpuSeconds = cpuSeconds
        self.lastErrors = Array(lastErrors)
    }
}
