import CoreMetrics
import Foundation
public import Herald
import Prometheus
import Synchronization

extension HeraldMetrics {
    /// Metrics kept in a Prometheus registry of their own (one per node, so several nodes in
    /// one process never mix), served at `/metrics` in the Prometheus text format.
    public static func prometheus() -> HeraldMetrics {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            Name.publishLatency: publishLatencyBuckets,
            Name.redisCommandDuration: redisCommandBuckets,
        ]
        return HeraldMetrics(factory: factory, exposition: PrometheusExposition(registry: registry))
    }
}

struct PrometheusExposition: MetricsExposition {
    let registry: PrometheusCollectorRegistry

    func emit(into buffer: inout [UInt8]) {
        registry.emit(into: &buffer)
    }
}

/// What `/metrics` answers: figures read when asked (gauges, and the hub's and broker's atomic
/// counters copied into counters of the same names), then the registry in the Prometheus text
/// format with a `# HELP` line for each metric.
final class NodeMetrics: Sendable {
    private let node: HeraldNode
    private let metrics: HeraldMetrics
    private let mirrored: Mutex<[String: Int]> = Mutex([:])
    private let counters: [String: CoreMetrics.Counter]
    private let gauges: [String: CoreMetrics.Gauge]
    private let cpuSeconds: CoreMetrics.FloatingPointCounter
    private let startTime: Double

    init(node: HeraldNode) {
        self.node = node
        let metrics = node.hub.metrics
        self.metrics = metrics
        let factory = metrics.factory
        typealias Name = HeraldMetrics.Name
        var counters: [String: CoreMetrics.Counter] = [:]
        func counter(_ key: String, _ name: String, _ dimensions: [(String, String)] = []) {
            counters[key] = CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory)
        }
        counter("opened", Name.connectionsOpened)
        counter("refused.limit", Name.connectionsRefused, [("reason", "limit")])
        counter("refused.overload", Name.connectionsRefused, [("reason", "overload")])
        counter("messages", Name.messages)
        counter("deliveries.all", Name.deliveries, [("scope", "all")])
        counter("deliveries.room", Name.deliveries, [("scope", "room")])
        counter("deliveries.user", Name.deliveries, [("scope", "user")])
        counter("presence", Name.presenceFrames)
        counter("slow", Name.slowConsumerDisconnects)
        counter("publishFailures", Name.brokerPublishFailures)
        counter("reconnects", Name.brokerReconnects)
        counter("healingLosses", Name.brokerHealingLosses)
        self.counters = counters
        self.cpuSeconds = FloatingPointCounter(label: Name.cpuSeconds, factory: factory)
        var gauges: [String: CoreMetrics.Gauge] = [:]
        for name in [
            Name.connections, Name.connectionsSettingUp, Name.usersOnline, Name.localRooms, Name.outboundQueued, Name.brokerConnected, Name.ready,
            Name.residentMemory, Name.startTime,
        ] {
            gauges[name] = CoreMetrics.Gauge(label: name, factory: factory)
        }
        gauges[Name.buildInfo] = CoreMetrics.Gauge(label: Name.buildInfo, dimensions: [("version", HeraldVersion.current)], factory: factory)
        self.gauges = gauges
        self.startTime = ProcessFigures.startTime() ?? Date().timeIntervalSince1970
    }

    /// The exposition, or `nil` when the node's metrics are not kept in a registry it can write.
    func exposition() async -> [UInt8]? {
        guard let exposition = metrics.exposition else { return nil }
        await sample()
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 * 1024)
        exposition.emit(into: &buffer)
        return Self.addingHelp(to: buffer)
    }

    private func sample() async {
        typealias Name = HeraldMetrics.Name
        let hub = node.hub
        let counts = hub.statistics.snapshot()
        let broker = node.broker.statistics
        let cpu = ProcessFigures.cpuSeconds()
        mirror([
            "opened": counts.connectionsOpened,
            "refused.limit": counts.connectionsRefused,
            "refused.overload": node.overloadRefusals.load(ordering: .relaxed),
            "messages": counts.messagesDelivered,
            "deliveries.all": counts.deliveriesToAll,
            "deliveries.room": counts.deliveriesToRooms,
            "deliveries.user": counts.deliveriesToUsers,
            "presence": counts.presenceFramesWritten,
            "slow": counts.slowConsumersCut,
            "publishFailures": broker.publishFailures,
            "reconnects": broker.reconnects,
            "healingLosses": broker.healingLosses,
        ])
        // CPU seconds move by fractions: counted in milliseconds, added as seconds.
        if let cpu { mirrorSeconds("cpu", milliseconds: Int(cpu * 1000)) }
        gauges[Name.connections]?.record(hub.connectionCount)
        gauges[Name.connectionsSettingUp]?.record(node.connecting.load(ordering: .relaxed))
        gauges[Name.usersOnline]?.record(hub.onlineUserCount)
        gauges[Name.localRooms]?.record(hub.localRoomCount)
        gauges[Name.outboundQueued]?.record(await hub.queuedOutboundBytes())
        gauges[Name.brokerConnected]?.record(node.broker.unreadiness == nil ? 1 : 0)
        gauges[Name.ready]?.record(node.readiness().isReady ? 1 : 0)
        gauges[Name.buildInfo]?.record(1)
        gauges[Name.startTime]?.record(startTime)
        if let resident = ProcessFigures.residentBytes() { gauges[Name.residentMemory]?.record(resident) }
    }

    /// Adds to each counter what its source gained since the last reading.
    private func mirror(_ values: [String: Int]) {
        mirrored.withLock { last in
            for (key, value) in values {
                let gained = value - last[key, default: 0]
                if gained > 0 { counters[key]?.increment(by: gained) }
                last[key] = max(value, last[key, default: 0])
            }
        }
    }

    /// Like ``mirror(_:)`` for a counter of seconds read in milliseconds.
    private func mirrorSeconds(_ key: String, milliseconds: Int) {
        mirrored.withLock { last in
            let gained = milliseconds - last[key, default: 0]
            guard gained > 0 else { return }
            cpuSeconds.increment(by: Double(gained) / 1000)
            last[key] = milliseconds
        }
    }

    /// The registry's text with `# HELP` before each `# TYPE` line of a metric in the catalog.
    static func addingHelp(to exposition: [UInt8]) -> [UInt8] {
        let help = Dictionary(HeraldMetrics.catalog.map { ($0.name, $0.help) }, uniquingKeysWith: { first, _ in first })
        var output: [UInt8] = []
        output.reserveCapacity(exposition.count + help.count * 100)
        for line in exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: Array("# TYPE ".utf8)) {
                let name = String(decoding: line.dropFirst(7).prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
                if let text = help[name] { output += Array("# HELP \(name) \(text)\n".utf8) }
            }
            output += line
            output.append(UInt8(ascii: "\n"))
        }
        if output.last == UInt8(ascii: "\n"), output.dropLast().last == UInt8(ascii: "\n") { output.removeLast() }
        return output
    }
}

/// The process's own figures, from /proc on Linux (`nil` elsewhere).
enum ProcessFigures {
    static func residentBytes() -> Int? {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = statm.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// User + system CPU seconds.
    static func cpuSeconds() -> Double? {
        guard let fields = statFields(), fields.count > 14, let user = Double(fields[13]), let system = Double(fields[14]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Seconds since 1970 when the process started.
    static func startTime() -> Double? {
        guard let fields = statFields(), fields.count > 21, let ticks = Double(fields[21]),
            let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
            let boot = Double(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        else { return nil }
        return boot + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// /proc/self/stat's fields: index N is proc(5)'s field N + 1. The command name (which may
    /// hold spaces) is replaced by a placeholder.
    private static func statFields() -> [String]? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        return ["pid", "comm"] + stat[stat.index(after: close)...].split(separator: " ").map(String.init)
    }
}
