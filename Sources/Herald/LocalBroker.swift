import DequeModule
import HeraldWire
public import NIOCore
import ServiceLifecycle
import Synchronization

/// The in-process broker: a publish is delivered to this node's hub at once.
///
/// The default when Herald runs as one node. It numbers each room's and user's messages (offset
/// and epoch, see ``Envelope/positioned(_:)``) and keeps their recent history in memory, bounded
/// by ``HistoryConfiguration``. Offsets are assigned and delivered under one lock, so every
/// connection sees a channel's messages in offset order.
public final class LocalBroker: Broker {
    let sink: any DeliverySink
    public let historyConfiguration: HistoryConfiguration
    /// This process's part of every epoch: a restart loses the history, so it changes.
    private let epochPrefix: String
    private let channels = Mutex<Channels>(Channels())

    struct Channels {
        var logs: [DeliveryTarget: ChannelLog] = [:]
        var created = 0
        /// Idempotency keys seen within the history TTL, oldest first; bounded by
        /// `maxIdempotencyKeys` (past it the oldest key is forgotten early).
        var keys: Set<IdempotencyKey> = []
        /// Per user, messages sent with `requiresAck` and not acknowledged, oldest first.
        var unacknowledged: [String: Deque<(entry: HistoryEntry, epoch: String, expires: ContinuousClock.Instant)>] = [:]
        var keyOrder = Deque<(key: IdempotencyKey, at: ContinuousClock.Instant)>()

        /// Records `key`; `false` when it was seen already (a retried publish).
        mutating func admit(_ key: IdempotencyKey, now: ContinuousClock.Instant, ttl: Duration, limit: Int) -> Bool {
            while let first = keyOrder.first, now - first.at > ttl || keyOrder.count >= limit {
                keys.remove(first.key)
                keyOrder.removeFirst()
            }
            guard keys.insert(key).inserted else { return false }
            keyOrder.append((key, now))
            return true
        }
    }

    struct IdempotencyKey: Hashable {
        var target: DeliveryTarget
        var key: String
    }

    /// Idempotency keys remembered at most at once.
    static let maxIdempotencyKeys = 100_000

    /// One channel's stream: its epoch, last offset and kept messages. Bounded by the history
    /// size; a channel idle for longer than the history TTL is dropped by ``run()``.
    struct ChannelLog {
        let epoch: String
        var latest: Int64 = 0
        var entries = Deque<(entry: HistoryEntry, at: ContinuousClock.Instant)>()
        var lastPublish: ContinuousClock.Instant

        mutating func trim(size: Int, ttl: Duration, now: ContinuousClock.Instant) {
            while entries.count > size { entries.removeFirst() }
            while let first = entries.first, now - first.at > ttl { entries.removeFirst() }
        }
    }

    public init(deliveringTo sink: any DeliverySink, history: HistoryConfiguration = .init()) {
        self.sink = sink
        self.historyConfiguration = history
        self.epochPrefix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
    }

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let now = ContinuousClock.now
        let history = historyConfiguration
        if let key = envelope.idempotencyKey {
            let admitted = channels.withLock {
                $0.admit(IdempotencyKey(target: envelope.target, key: key), now: now, ttl: history.ttl, limit: Self.maxIdempotencyKeys)
            }
            guard admitted else { return eventLoop.makeSucceededVoidFuture() }
        }
        guard envelope.target != .all else {
            sink.deliver(envelope)
            return eventLoop.makeSucceededVoidFuture()
        }
        channels.withLock { channels in
            let log = channels.logs[envelope.target] ?? {
                channels.created += 1
                return ChannelLog(epoch: epochPrefix + "-" + String(channels.created, radix: 36), lastPublish: now)
            }()
            var updated = log
            updated.latest += 1
            updated.lastPublish = now
            let positioned = envelope.positioned(StreamPosition(offset: updated.latest, epoch: updated.epoch))
            let size = history.size(for: envelope.target)
            if size > 0 {
                updated.entries.append((HistoryEntry(offset: updated.latest, frame: positioned.frame), now))
                updated.trim(size: size, ttl: history.ttl, now: now)
            }
            channels.logs[envelope.target] = updated
            if envelope.requiresAck, case .user(let user) = envelope.target {
                var pending = channels.unacknowledged[user, default: []]
                if pending.count >= history.maxUnacknowledged { pending.removeFirst() }
                pending.append((HistoryEntry(offset: updated.latest, frame: positioned.frame), updated.epoch, now + history.ackTTL))
                channels.unacknowledged[user] = pending
            }
            // Delivered under the lock: the next offset of this channel cannot overtake it.
            sink.deliver(positioned)
        }
        return eventLoop.makeSucceededVoidFuture()
    }

    public func history(of target: DeliveryTarget, since: Int64, limit: Int) -> HistoryPage {
        let now = ContinuousClock.now
        let history = historyConfiguration
        return channels.withLock { channels in
            guard var log = channels.logs[target] else {
                // Never published (or forgotten): an empty stream in an epoch of its own.
                return HistoryPage(latest: StreamPosition(offset: 0, epoch: epochPrefix), entries: [], oldest: 1)
            }
            log.trim(size: history.size(for: target), ttl: history.ttl, now: now)
            channels.logs[target] = log
            let entries = log.entries.lazy.map(\.entry).filter { $0.offset > since }.prefix(max(0, limit))
            return HistoryPage(
                latest: StreamPosition(offset: log.latest, epoch: log.epoch),
                entries: Array(entries),
                oldest: log.entries.first?.entry.offset ?? log.latest + 1
            )
        }
    }

    public func unacknowledged(for user: String) -> [HistoryEntry] {
        let now = ContinuousClock.now
        return channels.withLock { channels in
            guard var pending = channels.unacknowledged[user] else { return [] }
            pending.removeAll { $0.expires < now }
            channels.unacknowledged[user] = pending.isEmpty ? nil : pending
            return pending.map(\.entry)
        }
    }

    public func unacknowledgedInMemory(for user: String) -> [HistoryEntry]? {
        unacknowledged(for: user)
    }

    public func acknowledge(user: String, offset: Int64, epoch: String?) {
        channels.withLock { channels in
            guard let epoch = epoch ?? channels.logs[.user(user)]?.epoch else { return }
            channels.unacknowledged[user]?.removeAll { $0.entry.offset == offset && $0.epoch == epoch }
            if channels.unacknowledged[user]?.isEmpty == true { channels.unacknowledged[user] = nil }
        }
    }

    /// One node delivers every channel already: nothing to subscribe.
    public func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        eventLoop.makeSucceededVoidFuture()
    }

    public var statistics: BrokerStatistics.Snapshot { .init() }

    /// Until shutdown, forgets channels idle for longer than the history TTL (their history has
    /// expired), so the channel table does not grow with every room and user ever addressed.
    public func run() async throws {
        let ttl = historyConfiguration.ttl
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: ttl) }
            let now = ContinuousClock.now
            channels.withLock { channels in
                channels.logs = channels.logs.filter { now - $0.value.lastPublish <= ttl }
                channels.unacknowledged = channels.unacknowledged.compactMapValues { pending in
                    let live = pending.filter { $0.expires >= now }
                    return live.isEmpty ? nil : live
                }
            }
        }
    }
}
