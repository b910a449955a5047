public import CoreMetrics
public import HeraldWire
public import NIOCore
import Synchronization

/// A metrics backend that can write what it holds (the server serves it at `/metrics`).
public protocol MetricsExposition: Sendable {
    func emit(into buffer: inout [UInt8])
}

/// Herald's metrics, made through swift-metrics with the factory a node is given (the server
/// gives a Prometheus one; ``disabled`` records nothing).
///
/// Counted where they happen: events that are rare per message (a publish, a disconnect, a
/// refused frame, a recovery, a Redis command). Figures that move once per recipient are kept
/// in ``HubStatistics``' atomics as before and copied into the counters of the same names when
/// the metrics are read (by the server, at each scrape), so the delivery path gains no work.
///
/// No label takes values that grow with users, rooms or connections: labels are a scope, a
/// close code, a source, a reason — each a short fixed list (``catalog`` names them).
public final class HeraldMetrics: Sendable {
    /// Whether anything is recorded: with ``disabled`` the hub skips the work of measuring.
    public let isEnabled: Bool
    public let factory: any MetricsFactory
    /// Writes the metrics in an exposition format (for the Prometheus factory: its text
    /// format); `nil` when the factory's backend is read some other way.
    public let exposition: (any MetricsExposition)?

    public let framesReceived: Counter
    public let rateLimitedFrames: Counter
    public let rateLimitDisconnects: Counter
    public let ingestDeadLetters: Counter
    public let ingestLag: Gauge
    public let redisCommandDuration: Timer
    public let redisCommandErrors: Counter
    /// From the moment the message was accepted (its `ts`, milliseconds) to its hand-off to
    /// this node's event loops, once per message per node.
    public let publishLatency: Timer
    /// Publish latencies counted per ``publishLatencyBuckets`` bucket (and one past the last),
    /// for the status page's quantiles (the Prometheus histogram cannot be read back).
    private let publishCount = Atomic<Int>(0)
    private let latencyCounts = Mutex<[Int]>(Array(repeating: 0, count: publishLatencyBuckets.count + 1))
    private let publishes: [PublishSource: Counter]
    private let disconnects: [CloseCode?: Counter]
    private let recoveries: [Recovery: Counter]

    /// Where a publish came from (the `source` label of `herald_publishes_total`).
    public enum PublishSource: String, Sendable, CaseIterable {
        case websocket, http, ingest
    }

    public init(factory: any MetricsFactory, exposition: (any MetricsExposition)? = nil) {
        self.factory = factory
        self.exposition = exposition
        self.isEnabled = !(factory is NOOPMetricsHandler)
        framesReceived = Counter(label: Name.framesReceived, factory: factory)
        rateLimitedFrames = Counter(label: Name.rateLimitedFrames, factory: factory)
        rateLimitDisconnects = Counter(label: Name.rateLimitDisconnects, factory: factory)
        ingestDeadLetters = Counter(label: Name.ingestDeadLetters, factory: factory)
        ingestLag = Gauge(label: Name.ingestLag, factory: factory)
        redisCommandDuration = Timer(label: Name.redisCommandDuration, factory: factory)
        redisCommandErrors = Counter(label: Name.redisCommandErrors, factory: factory)
        publishLatency = Timer(label: Name.publishLatency, factory: factory)
        var publishes: [PublishSource: Counter] = [:]
        for source in PublishSource.allCases {
            publishes[source] = Counter(label: Name.publishes, dimensions: [("source", source.rawValue)], factory: factory)
        }
        self.publishes = publishes
        var disconnects: [CloseCode?: Counter] = [:]
        for code in [nil] + CloseCode.allCases.map(Optional.some) {
            disconnects[code] = Counter(label: Name.disconnects, dimensions: [("code", Self.label(code))], factory: factory)
        }
        self.disconnects = disconnects
        var recoveries: [Recovery: Counter] = [:]
        for recovery in Recovery.allCases {
            recoveries[recovery] = Counter(label: Name.recoveries, dimensions: [("result", recovery.reason ?? "recovered")], factory: factory)
        }
        self.recoveries = recoveries
    }

    /// Records nothing (a new instance each time: the counts the status page reads are per hub).
    public static var disabled: HeraldMetrics { HeraldMetrics(factory: NOOPMetricsHandler.instance) }

    public func recordPublish(from source: PublishSource, count: Int = 1) {
        publishes[source]?.increment(by: count)
        publishCount.add(count, ordering: .relaxed)
    }

    /// Publishes recorded so far, every source together (the status page's publishes/s).
    public var publishesRecorded: Int { publishCount.load(ordering: .relaxed) }

    /// A registered connection closed: with the code Herald sent, or `nil` when the client
    /// closed it or it was lost.
    public func recordDisconnect(code: CloseCode?) {
        disconnects[code]?.increment()
    }

    /// A connection or a join asked to recover from a position.
    public func recordRecovery(_ recovery: Recovery) {
        recoveries[recovery]?.increment()
    }

    /// `herald_publish_latency_seconds` for a message frame stamped with `ts` (milliseconds).
    public func recordPublishLatency(ofMessage frame: ByteBuffer, now: Int64 = WallClock.millisecondsSince1970()) {
        guard let acceptedAt = ServerFrame.acceptedAt(ofMessage: frame) else { return }
        let milliseconds = max(0, now - acceptedAt)
        publishLatency.recordMilliseconds(milliseconds)
        let bucket = Self.latencyBucketMilliseconds.firstIndex { milliseconds <= $0 } ?? Self.latencyBucketMilliseconds.count
        latencyCounts.withLock { $0[bucket] += 1 }
    }

    /// Publish latencies recorded so far, per bucket of ``publishLatencyBuckets`` (upper bounds,
    /// inclusive) and a last one for what was slower.
    public func publishLatencyCounts() -> [Int] {
        latencyCounts.withLock { $0 }
    }

    /// The `quantile` (0…1) of the latencies between two readings of ``publishLatencyCounts()``,
    /// as the upper bound of its bucket in milliseconds; `nil` when nothing was recorded between.
    public static func latencyQuantile(_ quantile: Double, from earlier: [Int], to later: [Int]) -> Int64? {
        let counts = zip(later, earlier).map { max(0, $0 - $1) }
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let rank = Int((Double(total) * quantile).rounded(.up))
        var seen = 0
        for (index, count) in counts.enumerated() {
            seen += count
            if seen >= max(1, rank) {
                return index < latencyBucketMilliseconds.count ? latencyBucketMilliseconds[index] : latencyBucketMilliseconds.last! * 2
            }
        }
        return nil
    }

    private static let latencyBucketMilliseconds: [Int64] = publishLatencyBuckets.map {
        Int64($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000)
    }

    static func label(_ code: CloseCode?) -> String {
        code.map { String($0.rawValue) } ?? "none"
    }

    // MARK: - Catalog

    /// Metric names (Prometheus conventions: `_total` counters, base units in the name).
    public enum Name {
        public static let connections = "herald_connections"
        public static let connectionsSettingUp = "herald_connections_setting_up"
        public static let connectionsOpened = "herald_connections_opened_total"
        public static let connectionsRefused = "herald_connections_refused_total"
        public static let disconnects = "herald_disconnects_total"
        public static let usersOnline = "herald_users_online"
        public static let localRooms = "herald_rooms_local"
        public static let framesReceived = "herald_frames_received_total"
        public static let messages = "herald_messages_total"
        public static let deliveries = "herald_deliveries_total"
        public static let presenceFrames = "herald_presence_frames_total"
        public static let publishes = "herald_publishes_total"
        public static let publishLatency = "herald_publish_latency_seconds"
        public static let outboundQueued = "herald_outbound_queued_bytes"
        public static let slowConsumerDisconnects = "herald_slow_consumer_disconnects_total"
        public static let rateLimitedFrames = "herald_rate_limited_frames_total"
        public static let rateLimitDisconnects = "herald_rate_limit_disconnects_total"
        public static let recoveries = "herald_recoveries_total"
        public static let brokerConnected = "herald_broker_connected"
        public static let brokerPublishFailures = "herald_broker_publish_failures_total"
        public static let brokerReconnects = "herald_broker_reconnects_total"
        public static let brokerHealingLosses = "herald_broker_healing_losses_total"
        public static let redisCommandDuration = "herald_redis_command_duration_seconds"
        public static let redisCommandErrors = "herald_redis_command_errors_total"
        public static let ingestLag = "herald_ingest_lag_entries"
        public static let ingestDeadLetters = "herald_ingest_dead_letters_total"
        public static let ready = "herald_ready"
        public static let buildInfo = "herald_build_info"
        public static let residentMemory = "process_resident_memory_bytes"
        public static let cpuSeconds = "process_cpu_seconds_total"
        public static let startTime = "process_start_time_seconds"
    }

    /// Every metric a node exports with its help text (the `# HELP` lines, and docs/operations.md).
    public static let catalog: [(name: String, help: String)] = [
        (Name.connections, "Open WebSocket connections on this node."),
        (Name.connectionsSettingUp, "WebSocket connections admitted whose welcome is not sent yet."),
        (Name.connectionsOpened, "WebSocket connections opened (welcomed) on this node."),
        (Name.connectionsRefused, "WebSocket connections refused: reason=limit (connection limits), overload (503, too many setting up)."),
        (Name.disconnects, "Connections closed, by the close code Herald sent (none: closed by the client or lost)."),
        (Name.usersOnline, "Users with at least one connection on this node."),
        (Name.localRooms, "Rooms with a member connected to this node."),
        (Name.framesReceived, "WebSocket frames received from clients."),
        (Name.messages, "Messages the broker handed to this node for its connections."),
        (Name.deliveries, "Message frames written to connections, by scope (one message to N recipients counts N)."),
        (Name.presenceFrames, "Presence event frames written to connections."),
        (Name.publishes, "Messages accepted for publishing on this node, by source (websocket, http, ingest)."),
        (Name.publishLatency, "Seconds from a message's acceptance (its ts, millisecond clock) to its hand-off to this node's event loops."),
        (Name.outboundQueued, "Bytes queued for connections that the sockets have not taken yet."),
        (Name.slowConsumerDisconnects, "Connections cut off because their outbound queue hit the limit (1013)."),
        (Name.rateLimitedFrames, "Client frames refused by the per-connection rate limit."),
        (Name.rateLimitDisconnects, "Connections closed for repeated rate-limit abuse (1008)."),
        (Name.recoveries, "Recoveries asked for (connect or join with a position), by result: recovered or the recovered:false reason."),
        (Name.brokerConnected, "1 while the broker can publish and receive (Redis connected and subscribed), else 0."),
        (Name.brokerPublishFailures, "Publishes the broker refused (backend down or too slow)."),
        (Name.brokerReconnects, "Times the broker lost its pub/sub connection and got it back."),
        (Name.brokerHealingLosses, "Messages a node could not heal from history after a reconnect."),
        (Name.redisCommandDuration, "Seconds from sending a Redis command to its reply (errors included)."),
        (Name.redisCommandErrors, "Redis commands that failed (error reply, timeout, connection lost, not connected)."),
        (Name.ingestLag, "Entries of the ingest stream not yet read by the consumer group."),
        (Name.ingestDeadLetters, "Ingest entries moved to the dead-letter stream."),
        (Name.ready, "1 while /readyz answers 200, else 0."),
        (Name.buildInfo, "Always 1; the version label says which Herald runs."),
        (Name.residentMemory, "Resident memory of the process in bytes."),
        (Name.cpuSeconds, "User and system CPU time of the process in seconds."),
        (Name.startTime, "When the process started, in seconds since 1970."),
    ]

    /// Histogram buckets of the two timers, in seconds: publish latency is measured with a
    /// millisecond clock; Redis commands usually take tens of microseconds.
    public static let publishLatencyBuckets: [Duration] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000].map { .milliseconds($0) }
    public static let redisCommandBuckets: [Duration] =
        [50, 100, 250, 500].map { .microseconds($0) } + [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000].map { .milliseconds($0) }
}
