import Foundation
import Histogram
import Synchronization

/// Latency percentiles in milliseconds.
public struct LatencySummary: Sendable, Codable, Equatable {
    public var samples: UInt64
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var p999: Double
    public var max: Double

    init(_ histogram: Histogram<UInt64>) {
        samples = histogram.totalCount
        p50 = Double(histogram.valueAtPercentile(50)) / 1000
        p90 = Double(histogram.valueAtPercentile(90)) / 1000
        p99 = Double(histogram.valueAtPercentile(99)) / 1000
        p999 = Double(histogram.valueAtPercentile(99.9)) / 1000
        max = Double(histogram.max) / 1000
    }
}

/// What one run measured.
public struct BenchReport: Sendable, Codable {
    public var scenario: String
    public var target: String
    public var connections: Int
    public var rooms: Int?
    public var rate: Double?
    public var payloadSize: Int

    /// Generator processes that held the connections.
    public var processes = 1
    public var connectionsOK = 0
    public var connectionsFailed = 0
    public var connectSeconds = 0.0
    public var connectionsPerSecond = 0.0
    /// Server CPU seconds spent while the connections were opened (and joined their rooms).
    public var serverConnectCPUSeconds: Double?
    public var serverCPUMicrosecondsPerConnect: Double?
    /// Connection attempts that failed for good, by cause.
    public var connectFailures: [String: Int] = [:]
    /// Attempts the server refused with a retry hint (503 Retry-After, close 1013) and that were tried again.
    public var connectRetries = 0

    public var published = 0
    public var publishFailed = 0
    public var expectedDeliveries = 0
    public var deliveries = DeliveryTotals()
    public var lost = 0
    public var seconds = 0.0
    public var deliveriesPerSecond = 0.0
    public var latency: LatencySummary?

    public var serverCPUSeconds: Double?
    public var serverCPUMicrosecondsPerDelivery: Double?
    public var serverRSSBytes: Int?
    public var serverRSSGrowthBytes: Int?
    public var serverBytesPerConnection: Double?
    public var stalledConnectionClosedByServer: Bool?
    /// `storm`: the kill, the reconnects and what was lost.
    public var storm: StormSummary?
    public var closeCodes: [String: Int] = [:]
    /// `--plot`: deliveries per second and latency percentiles per sampling interval.
    public var timeline: [TimelinePoint]?

    init(configuration: BenchConfiguration) {
        scenario = configuration.scenario.rawValue
        target = "\(configuration.host):\(configuration.port)"
        connections = configuration.connections
        payloadSize = configuration.payloadSize
        switch configuration.scenario {
        case .rooms, .slow:
            rooms = configuration.rooms
            rate = configuration.rate
        case .users:
            rate = configuration.rate
        default:
            break
        }
    }

    /// The server's CPU over the connect phase, per connection opened.
    mutating func fillConnectCost(from before: ProcessProbe.Sample?, to after: ProcessProbe.Sample?) {
        guard let before, let after else { return }
        serverConnectCPUSeconds = after.cpuSeconds - before.cpuSeconds
        if connectionsOK > 0 { serverCPUMicrosecondsPerConnect = (after.cpuSeconds - before.cpuSeconds) * 1e6 / Double(connectionsOK) }
    }

    /// Fills in the delivery, latency and server figures of a finished run.
    mutating func fill(
        collected: Run.Collected,
        publishStatistics: PublishStatistics,
        expected: Int,
        elapsed: Double,
        probes: (baseline: ProcessProbe.Sample?, before: ProcessProbe.Sample?, after: ProcessProbe.Sample?)
    ) {
        connectionsPerSecond = Double(connectionsOK) / max(connectSeconds, 1e-9)
        published = publishStatistics.sent.load(ordering: .relaxed)
        publishFailed = publishStatistics.failed.load(ordering: .relaxed)
        expectedDeliveries = expected
        deliveries = collected.totals
        lost = collected.totals.lost(expected: expected)
        seconds = elapsed
        deliveriesPerSecond = Double(collected.totals.unique) / max(elapsed, 1e-9)
        if collected.histogram.totalCount > 0 { latency = LatencySummary(collected.histogram) }
        if let before = probes.before, let after = probes.after {
            serverCPUSeconds = after.cpuSeconds - before.cpuSeconds
            if collected.totals.unique > 0 {
                serverCPUMicrosecondsPerDelivery = (after.cpuSeconds - before.cpuSeconds) * 1e6 / Double(collected.totals.unique)
            }
            serverRSSBytes = after.rssBytes
            if let baseline = probes.baseline {
                serverRSSGrowthBytes = after.rssBytes - baseline.rssBytes
                serverBytesPerConnection = Double(after.rssBytes - baseline.rssBytes) / Double(max(connectionsOK, 1))
            }
        }
        stalledConnectionClosedByServer = collected.stalledClosedByServer
        closeCodes = collected.closeCodes.reduce(into: [:]) { $0[String($1.key)] = $1.value }
    }

    /// Whether every expected delivery arrived exactly once and in order.
    public var isClean: Bool {
        if let storm {
            // Publishes in flight to the killed process fail by design: what counts is that no
            // confirmed message was lost and every dropped client came back.
            return storm.lost == 0 && storm.reconnected == storm.dropped && storm.dropped > 0 && deliveries.duplicates == 0 && deliveries.reordered == 0
        }
        return lost == 0 && deliveries.duplicates == 0 && deliveries.reordered == 0 && publishFailed == 0
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// The human-readable table.
    public func table() -> String {
        var rows: [(String, String)] = [
            ("scenario", scenario + (rooms.map { ", \($0) rooms" } ?? "") + (rate.map { ", \(Int($0)) msg/s offered" } ?? "")),
            ("target", target),
            ("connections", "\(connectionsOK) ok, \(connectionsFailed) failed" + (processes > 1 ? ", over \(processes) generator processes" : "")),
            (
                "connect",
                String(format: "%.2f s, %.0f connections/s", connectSeconds, connectionsPerSecond)
                    + (serverCPUMicrosecondsPerConnect.map { String(format: ", server CPU %.0f µs per connect", $0) } ?? "")
                    + (connectRetries > 0 ? ", \(connectRetries) retried after a retry hint" : "")
            ),
        ]
        for (reason, count) in connectFailures.sorted(by: { $0.value > $1.value }) {
            rows.append(("connect failed", "\(count)× \(reason)"))
        }
        if expectedDeliveries > 0 || published > 0 {
            rows += [
                ("published", "\(published) (\(publishFailed) refused)"),
                (
                    "deliveries",
                    "\(deliveries.unique) of \(expectedDeliveries) expected: lost \(lost), duplicates \(deliveries.duplicates), reordered \(deliveries.reordered)"
                ),
                ("throughput", String(format: "%.0f deliveries/s over %.2f s", deliveriesPerSecond, seconds)),
            ]
        }
        if let latency {
            rows.append(
                (
                    "latency ms",
                    String(format: "p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f", latency.p50, latency.p90, latency.p99, latency.p999, latency.max)
                ))
        }
        if let cpu = serverCPUSeconds {
            rows.append(
                ("server CPU", String(format: "%.2f s", cpu) + (serverCPUMicrosecondsPerDelivery.map { String(format: ", %.2f µs per delivery", $0) } ?? "")))
        }
        if let rss = serverRSSBytes {
            var text = String(format: "%.1f MB", Double(rss) / 1_048_576)
            if let growth = serverRSSGrowthBytes { text += String(format: ", grew %.1f MB", Double(growth) / 1_048_576) }
            if let perConnection = serverBytesPerConnection { text += String(format: ", %.2f KB per connection", perConnection / 1024) }
            rows.append(("server RSS", text))
        }
        if let storm {
            rows.append(("killed", String(format: "pid %d after %.1f s of publishing (SIGKILL)", storm.killedPID, storm.killedAfterSeconds)))
            var back = "\(storm.reconnected) of \(storm.dropped) dropped clients back"
            if let seconds = storm.secondsUntilAllBack, let rate = storm.reconnectsPerSecond {
                back += String(format: ", all within %.2f s of the kill (%.0f reconnects/s)", seconds, rate)
            }
            if storm.abandoned > 0 { back += ", \(storm.abandoned) gave up" }
            rows.append(("reconnected", back))
            rows.append(
                (
                    "storm losses",
                    "\(storm.lost) confirmed messages never delivered (\(storm.publishesUnconfirmed) publishes unconfirmed: in flight to the killed process, not counted)"
                ))
        }
        if let stalled = stalledConnectionClosedByServer {
            rows.append(("stalled client", stalled ? "cut off by the server" : "still connected"))
        }
        if !closeCodes.isEmpty {
            rows.append(("closed by server", closeCodes.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: ", ")))
        }
        rows.append(("verdict", isClean ? "every delivery exactly once, in order" : "NOT CLEAN"))
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
    }
}

/// One sampling interval of a run (`--plot`).
public struct TimelinePoint: Sendable, Codable, Equatable {
    /// Seconds since publishing began, at the end of the interval.
    public var seconds: Double
    public var deliveriesPerSecond: Double
    /// Latencies of the interval's deliveries in milliseconds; absent when none arrived.
    public var p50: Double?
    public var p99: Double?
    public var p999: Double?
    public var max: Double?

    public init(seconds: Double, deliveriesPerSecond: Double, p50: Double? = nil, p99: Double? = nil, p999: Double? = nil, max: Double? = nil) {
        self.seconds = seconds
        self.deliveriesPerSecond = deliveriesPerSecond
        self.p50 = p50
        self.p99 = p99
        self.p999 = p999
        self.max = max
    }
}
