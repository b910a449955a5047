import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Where a receiver got to on its user's channel: what a reconnect resumes from
/// (`?since_offset=&since_epoch=`).
struct ChannelPosition: Sendable, Equatable {
    var offset: Int64
    var epoch: String

    /// The `"offset":N` and `"epoch":"E"` of a delivered message frame, if it has them.
    static func parse(frame bytes: UnsafeRawBufferPointer) -> ChannelPosition? {
        guard let offsetStart = find(Array(#""offset":"#.utf8), in: bytes) else { return nil }
        var index = offsetStart
        var offset: Int64 = 0
        var digits = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9"), digits < 18 {
            offset = offset * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
            index += 1
            digits += 1
        }
        guard digits > 0, let epochStart = find(Array(#""epoch":""#.utf8), in: bytes) else { return nil }
        var end = epochStart
        while end < bytes.count, bytes[end] != UInt8(ascii: "\""), end - epochStart < 64 { end += 1 }
        guard end < bytes.count, bytes[end] == UInt8(ascii: "\"") else { return nil }
        return ChannelPosition(offset: offset, epoch: String(decoding: UnsafeRawBufferPointer(rebasing: bytes[epochStart..<end]), as: UTF8.self))
    }

    private static func find(_ needle: [UInt8], in bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= needle.count else { return nil }
        var index = 0
        while index + needle.count <= bytes.count {
            if bytes[index] == needle[0], (1..<needle.count).allSatisfy({ bytes[index + $0] == needle[$0] }) { return index + needle.count }
            index += 1
        }
        return nil
    }
}

/// The receivers of a `storm` run by index; a reconnect replaces its entry.
final class ReceiverRegistry: Sendable {
    private let receivers = Mutex<[Int: ReceiverConnection]>([:])

    func set(_ receiver: ReceiverConnection) { receivers.withLock { $0[receiver.index] = receiver } }
    var all: [ReceiverConnection] { receivers.withLock { $0.values.sorted { $0.index < $1.index } } }
}

/// What a `storm` run counts while it goes on, readable from any thread.
final class StormCounters: Sendable {
    /// Welcomed connections lost without our asking (their server was killed).
    let dropped = Atomic<Int>(0)
    /// Of those, back (welcomed again, resumed from their position).
    let reconnected = Atomic<Int>(0)
    /// Of those, given up at the connect deadline.
    let abandoned = Atomic<Int>(0)
    /// Messages whose publish was not confirmed (refused, or in flight on a connection that
    /// died with its server): not counted as lost if they never arrive.
    let unconfirmed = Mutex<Set<MessageID>>([])
    /// Why reconnect attempts failed, by cause (at most 32 causes kept).
    let failures = Mutex<[String: Int]>([:])

    func recordFailure(_ cause: String) {
        failures.withLock { if $0[cause] != nil || $0.count < 32 { $0[cause, default: 0] += 1 } }
    }
}

/// One published message: its stream (the user's index) and sequence number.
struct MessageID: Hashable, Sendable, Codable {
    var stream: Int
    var sequence: Int
}

/// How the storm went, as the report shows it.
public struct StormSummary: Sendable, Codable {
    public var killedPID: Int32
    public var killedAfterSeconds: Double
    public var dropped = 0
    public var reconnected = 0
    public var abandoned = 0
    /// From the kill to the last dropped client's welcome; `nil` when not all came back.
    public var secondsUntilAllBack: Double?
    public var reconnectsPerSecond: Double?
    /// Messages not confirmed by the server (refused, or in flight when it died), not counted as lost.
    public var publishesUnconfirmed = 0
    /// Confirmed messages never delivered, after every reconnect resumed from history.
    public var lost = 0
}

extension Run {
    /// Sends SIGKILL to `--kill-pid` after `--kill-after` seconds, then waits until every
    /// client it dropped is back (bounded by the connect timeout). `counts` reads (dropped,
    /// reconnected, abandoned) across every generator process.
    static func killAndWatch(
        configuration: BenchConfiguration,
        counts: @escaping @Sendable () -> (dropped: Int, reconnected: Int, abandoned: Int),
        log: @escaping @Sendable (String) -> Void
    ) async -> StormSummary {
        let pid = configuration.killPID ?? 0
        var summary = StormSummary(killedPID: pid, killedAfterSeconds: configuration.killAfter)
        try? await Task.sleep(for: .seconds(configuration.killAfter))
        let killedAt = ContinuousClock.now
        kill(pid, SIGKILL)
        log("killed server process \(pid) with SIGKILL")
        let deadline = killedAt + .seconds(configuration.connectTimeout)
        var lastChange = (counts(), killedAt)
        while ContinuousClock.now < deadline {
            let now = counts()
            if now != lastChange.0 { lastChange = (now, ContinuousClock.now) }
            // Every client dropped noticed at once (the kernel closes a dead process's sockets);
            // done when each is back or given up, and nothing moved for a moment.
            if now.dropped > 0, now.reconnected + now.abandoned == now.dropped, ContinuousClock.now - lastChange.1 > .milliseconds(500) { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let final = counts()
        summary.dropped = final.dropped
        summary.reconnected = final.reconnected
        summary.abandoned = final.abandoned
        if final.dropped > 0, final.reconnected == final.dropped {
            let seconds = (lastChange.1 - killedAt).seconds
            summary.secondsUntilAllBack = seconds
            summary.reconnectsPerSecond = Double(final.reconnected) / max(seconds, 1e-9)
        }
        log("storm: \(final.dropped) dropped, \(final.reconnected) back, \(final.abandoned) given up")
        return summary
    }

    /// A receiver lost its connection: reconnect it with backoff and jitter, resuming from its
    /// position on the user's channel, and carry its ledger over. Called on its loop.
    func reconnect(_ lost: ReceiverConnection, counters: StormCounters, registry: ReceiverRegistry) {
        counters.dropped.add(1, ordering: .relaxed)
        let index = lost.index
        let ledger = lost.ledger
        let position = lost.position
        let deadline = ContinuousClock.now + .seconds(configuration.connectTimeout)
        Task {
            // Spread the crowd: everyone lost the server at the same instant.
            var backoff = 0.25
            try? await Task.sleep(for: .seconds(Double.random(in: 0...1)))
            var query = "user=\(user(of: index))"
            if let position { query += "&since_offset=\(position.offset)&since_epoch=\(position.epoch)" }
            while ContinuousClock.now < deadline {
                do {
                    let receiver = try await connect(index: index, query: query, ledger: ledger, position: position) { next in
                        self.reconnect(next, counters: counters, registry: registry)
                    }
                    registry.set(receiver)
                    counters.reconnected.add(1, ordering: .relaxed)
                    return
                } catch let failure as ConnectFailure where failure.retryAfter != nil {
                    counters.recordFailure(failure.cause)
                    try? await Task.sleep(for: .seconds(Double.random(in: 0.5...1.5) * max(failure.retryAfter ?? 1, backoff)))
                } catch {
                    counters.recordFailure(String(String(describing: error).prefix(120)))
                    try? await Task.sleep(for: .seconds(Double.random(in: 0.5...1.5) * backoff))
                }
                backoff = min(backoff * 2, 8)
            }
            counters.abandoned.add(1, ordering: .relaxed)
        }
    }

    /// Messages published on `stream` when `sent` were published round-robin over `streams`.
    static func published(onStream stream: Int, sent: Int, streams: Int) -> Int {
        sent / streams + (stream < sent % streams ? 1 : 0)
    }

    /// The messages this process's receivers never got, of `sent` published round-robin.
    /// Bounded: at most 100,000 listed (a run that lost more is broken anyway).
    func missingMessages(sent: Int) async throws -> [MessageID] {
        var missing: [MessageID] = []
        let streams = streamCount
        for receiver in stormRegistry.all {
            let count = Self.published(onStream: receiver.index, sent: sent, streams: streams)
            let gaps = try await receiver.channelLoop.submit { receiver.ledger.missing(stream: receiver.index, below: count) }.get()
            missing += gaps.prefix(100_000 - missing.count).map { MessageID(stream: receiver.index, sequence: $0) }
            if missing.count >= 100_000 { break }
        }
        return missing
    }

    /// Publishes to users at `--rate` for `--duration`, over publishers that are replaced when
    /// their connection dies (its server may be the one killed). Returns how many messages were
    /// numbered (round-robin over the streams), published or not.
    func publishThroughStorm(counters: StormCounters) async throws -> Int {
        var publishers = try await makeStormPublishers()
        let start = ContinuousClock.now
        var sequences = Array(repeating: 0, count: streamCount)
        var sent = 0
        while true {
            let elapsed = (ContinuousClock.now - start).seconds
            if elapsed >= configuration.duration { break }
            let due = Int(elapsed * configuration.rate)
            if due > sent {
                for index in publishers.indices where !publishers[index].isActive {
                    if let replacement = try? await makeStormPublisher() { publishers[index] = replacement }
                }
                var batches: [[(path: String, body: String, id: MessageID)]] = Array(repeating: [], count: publishers.count)
                for number in sent..<due {
                    let stream = number % streamCount
                    let id = MessageID(stream: stream, sequence: sequences[stream])
                    sequences[stream] += 1
                    let payload = BenchPayload(stream: stream, sequence: id.sequence, sentAt: NIODeadline.now().uptimeNanoseconds)
                    let (path, body) = request(stream: stream, payload: payload)
                    batches[stream % publishers.count].append((path, body, id))
                }
                for (publisher, batch) in zip(publishers, batches) where !batch.isEmpty {
                    guard publisher.isActive else {
                        counters.unconfirmed.withLock { $0.formUnion(batch.map(\.id)) }
                        continue
                    }
                    publisher.channelLoop.execute {
                        for message in batch { publisher.post(path: message.path, body: message.body, id: message.id) }
                    }
                }
                sent = due
            }
            try await Task.sleep(for: .milliseconds(1))
        }
        return sent
    }

    private func makeStormPublishers() async throws -> [HTTPPublisher] {
        var publishers: [HTTPPublisher] = []
        for _ in 0..<max(1, configuration.publishConnections) { publishers.append(try await makeStormPublisher()) }
        return publishers
    }

    private func makeStormPublisher() async throws -> HTTPPublisher {
        let statistics = publishStatistics
        let host = configuration.host
        let unconfirmed = stormCounters
        return try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let publisher = HTTPPublisher(host: host, statistics: statistics, unconfirmed: unconfirmed)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(publisher)
                    return publisher
                }
            }
    }
}

extension Run {
    /// The `storm` scenario in one generator process: publish, kill, watch everyone come back,
    /// then count what confirmed messages never arrived.
    func executeStorm(_ prepared: PreparedReceivers, probes: (baseline: ProcessProbe.Sample?, connected: ProcessProbe.Sample?)) async throws -> BenchReport {
        let counters = stormCounters
        let configuration = self.configuration
        let log = self.log
        let watcher = Task {
            await Self.killAndWatch(
                configuration: configuration,
                counts: {
                    (counters.dropped.load(ordering: .relaxed), counters.reconnected.load(ordering: .relaxed), counters.abandoned.load(ordering: .relaxed))
                },
                log: log
            )
        }
        let publishStart = ContinuousClock.now
        let sent = try await publishThroughStorm(counters: counters)
        var summary = await watcher.value
        for (cause, count) in counters.failures.withLock({ $0 }).sorted(by: { $0.value > $1.value }) {
            log("\(count) reconnect attempts failed: \(cause)")
        }
        let accepted = publishStatistics.accepted.load(ordering: .relaxed)
        try await drain(until: accepted) { self.statistics.deliveries.load(ordering: .relaxed) }
        let elapsed = (ContinuousClock.now - publishStart).seconds
        var collected = try await collect(prepared)
        collected.missing = try await missingMessages(sent: sent)
        summary.publishesUnconfirmed = counters.unconfirmed.withLock { $0.count }
        summary.lost = Self.lost(collected.missing, unconfirmed: counters.unconfirmed.withLock { $0 })

        var report = BenchReport(configuration: configuration)
        report.connectionsOK = prepared.receivers.count
        report.connectionsFailed = prepared.failures
        report.connectSeconds = prepared.connectSeconds
        report.fillConnectCost(from: probes.baseline, to: probes.connected)
        report.connectFailures = prepared.failureReasons
        report.connectRetries = prepared.retries
        report.fill(collected: collected, publishStatistics: publishStatistics, expected: accepted, elapsed: elapsed, probes: (nil, nil, nil))
        report.lost = summary.lost
        report.storm = summary
        for receiver in stormRegistry.all { receiver.channelLoop.execute { receiver.close() } }
        return report
    }

    /// Waits (bounded by `--drain-timeout`) until `delivered()` reaches `expected`.
    func drain(until expected: Int, delivered: @escaping @Sendable () -> Int) async throws {
        let deadline = ContinuousClock.now + .seconds(configuration.drainTimeout)
        while ContinuousClock.now < deadline, delivered() < expected {
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Confirmed messages among `missing`.
    static func lost(_ missing: [MessageID], unconfirmed: Set<MessageID>) -> Int {
        missing.filter { !unconfirmed.contains($0) }.count
    }
}
