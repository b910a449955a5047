import DequeModule
import HeraldWire
public import NIOCore
import ServiceLifecycle
import Synchronization

/// The in-process broker: a publish is delivered to this node's hub at once.
///
/// The default when Herald runs as one node. It numbers each room's and user's messages (offset
/// and epoch, stamped by the hub, see ``Envelope/deliveredFrame``) and keeps their recent history in memory, bounded
/// by ``HistoryConfiguration``. Offsets are assigned and delivered under one lock, so every
/// connection sees a channel's messages in offset order.
///
/// Memory is bounded three ways, so that no sender can make the node hold what it likes:
/// - history per channel by count, age and bytes, and over all channels by
///   ``HistoryConfiguration/maxBytes`` (the oldest entries of any channel go first);
/// - history only for channels someone could recover from: a channel this node has had local
///   interest in (a connection of the user, or of a member of the room) within the history TTL.
///   A message to a user who has not been connected within the TTL, or to a room none of whose
///   members has, still gets its offset but is not kept: no client can hold a position in that
///   epoch's recent past, so nobody could ever ask for it;
/// - unacknowledged messages per user by count and bytes (oldest dropped), and over all users
///   by ``HistoryConfiguration/maxUnacknowledgedBytes``, where a new one is refused instead
///   (``LocalAcknowledgementStore``).
///
/// Lock order: `channels` → the hub's state (deliveries), `channels` → `interest` and `channels` →
/// the acknowledgement store's state; the hub
/// calls ``changeInterest(_:on:)`` under its own lock, which takes `interest` only.
public final class LocalBroker: Broker {
    let sink: any DeliverySink
    public let historyConfiguration: HistoryConfiguration
    /// This process's part of every epoch: a restart loses the history, so it changes.
    private let epochPrefix: String
    private let channels = LockedChannels()
    private let interest = Mutex<Interest>(Interest())
    /// Messages sent with `requiresAck`, kept under `channels` in the step that numbers them.
    public let localAcknowledgements: LocalAcknowledgementStore
    public var acknowledgements: any AcknowledgementStore { localAcknowledgements }

    struct Channels {
        var logs: [DeliveryTarget: ChannelLog] = [:]
        var created = 0
        /// Idempotency keys seen within the history TTL, oldest first; bounded by
        /// `maxIdempotencyKeys` (past it the oldest key is forgotten early).
        var keys: Set<IdempotencyKey> = []
        var keyOrder = Deque<(key: IdempotencyKey, at: ContinuousClock.Instant)>()
        /// Bytes of every channel's kept history, and where each kept entry was appended, oldest
        /// first, for the node-wide budget. An entry trimmed from its channel stays here until it
        /// reaches the front (checked then), or until the deque is compacted.
        var historyBytes = 0
        var historyEntries = 0
        var historyOrder = Deque<(target: DeliveryTarget, epoch: String, offset: Int64)>()

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

        /// Trims `target`'s log by its limits and keeps the byte counts right.
        mutating func trim(_ target: DeliveryTarget, size: Int, history: HistoryConfiguration, now: ContinuousClock.Instant) {
            guard var log = logs[target] else { return }
            logs[target] = nil  // uniquely referenced while trimmed
            let removed = log.trim(size: size, maxBytes: history.maxChannelBytes, ttl: history.ttl, now: now)
            historyBytes -= removed.bytes
            historyEntries -= removed.count
            logs[target] = log
        }

        /// Drops the oldest entries of any channel until the node is within `maxBytes`.
        mutating func enforceBudget(_ maxBytes: Int) {
            while historyBytes > maxBytes, let oldest = historyOrder.popFirst() {
                guard var log = logs[oldest.target], log.epoch == oldest.epoch,
                    let first = log.entries.first, first.entry.offset == oldest.offset
                else { continue }  // trimmed from its channel already
                logs[oldest.target] = nil
                log.entries.removeFirst()
                log.bytes -= first.entry.cost
                historyBytes -= first.entry.cost
                historyEntries -= 1
                logs[oldest.target] = log
            }
            // Entries trimmed by their channel's own limits leave stale records behind; keep the
            // deque within a small multiple of the entries it indexes.
            if historyOrder.count > 2 * historyEntries + 1024 {
                historyOrder = Deque(
                    historyOrder.filter { record in
                        guard let log = logs[record.target], log.epoch == record.epoch, let first = log.entries.first?.entry.offset else { return false }
                        return record.offset >= first && record.offset <= log.latest
                    })
            }
        }

        /// Forgets channels idle past `ttl`.
        mutating func expire(now: ContinuousClock.Instant, ttl: Duration) {
            for (target, log) in logs where now - log.lastPublish > ttl {
                historyBytes -= log.bytes
                historyEntries -= log.entries.count
                logs[target] = nil
            }
        }
    }

    /// The channels behind their lock, in a class so the acknowledgement store can read a
    /// user channel's epoch.
    final class LockedChannels: Sendable {
        private let mutex = Mutex<Channels>(Channels())

        func withLock<Result>(_ body: (inout sending Channels) throws -> sending Result) rethrows -> sending Result {
            try mutex.withLock(body)
        }
    }

    struct IdempotencyKey: Hashable {
        var target: DeliveryTarget
        var key: String
    }

    /// The channels this node has local recipients for, and when it stopped having them for
    /// the others (remembered for the history TTL, at most `maxRemembered`, oldest forgotten).
    struct Interest {
        var current: Set<DeliveryTarget> = []
        var ended: [DeliveryTarget: ContinuousClock.Instant] = [:]
        var endedOrder = Deque<(target: DeliveryTarget, at: ContinuousClock.Instant)>()

        static let maxRemembered = 200_000

        mutating func apply(_ change: InterestChange, now: ContinuousClock.Instant) {
            for target in change.subscribe {
                current.insert(target)
                ended[target] = nil
            }
            for target in change.unsubscribe where current.remove(target) != nil {
                ended[target] = now
                endedOrder.append((target, now))
            }
            while endedOrder.count > Self.maxRemembered, let oldest = endedOrder.popFirst() {
                if ended[oldest.target] == oldest.at { ended[oldest.target] = nil }
            }
        }

        /// Whether a client could still recover `target`'s messages: it has local recipients,
        /// or had them within `ttl`.
        func mayBeRead(_ target: DeliveryTarget, now: ContinuousClock.Instant, ttl: Duration) -> Bool {
            if current.contains(target) { return true }
            guard let at = ended[target] else { return false }
            return now - at <= ttl
        }

        mutating func expire(now: ContinuousClock.Instant, ttl: Duration) {
            while let oldest = endedOrder.first, now - oldest.at > ttl {
                endedOrder.removeFirst()
                if ended[oldest.target] == oldest.at { ended[oldest.target] = nil }
            }
        }
    }

    /// Idempotency keys remembered at most at once.
    static let maxIdempotencyKeys = 100_000

    /// One channel's stream: its epoch, last offset and kept messages. Bounded by the history
    /// size, TTL and bytes; a channel idle for longer than the history TTL is dropped by ``run()``.
    struct ChannelLog {
        let epoch: String
        var latest: Int64 = 0
        var entries = Deque<(entry: HistoryEntry, at: ContinuousClock.Instant)>()
        var bytes = 0
        var lastPublish: ContinuousClock.Instant

        /// Drops what is over the limits, oldest first; returns what was dropped.
        mutating func trim(size: Int, maxBytes: Int, ttl: Duration, now: ContinuousClock.Instant) -> (count: Int, bytes: Int) {
            var dropped = (count: 0, bytes: 0)
            while let first = entries.first, entries.count > size || bytes > maxBytes || now - first.at > ttl {
                entries.removeFirst()
                bytes -= first.entry.cost
                dropped.count += 1
                dropped.bytes += first.entry.cost
            }
            return dropped
        }
    }

    public init(deliveringTo sink: any DeliverySink, history: HistoryConfiguration = .init()) {
        self.sink = sink
        self.historyConfiguration = history
        self.epochPrefix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let channels = self.channels
        self.localAcknowledgements = LocalAcknowledgementStore(configuration: history) { user in
            channels.withLock { $0.logs[.user(user)]?.epoch }
        }
    }

    /// Bytes of history and of unacknowledged messages held now (for tests and statistics).
    public var heldBytes: (history: Int, unacknowledged: Int) {
        (channels.withLock { $0.historyBytes }, localAcknowledgements.heldBytes)
    }

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<StreamPosition?> {
        let now = ContinuousClock.now
        let history = historyConfiguration
        if let key = envelope.idempotencyKey {
            let admitted = channels.withLock {
                $0.admit(IdempotencyKey(target: envelope.target, key: key), now: now, ttl: history.ttl, limit: Self.maxIdempotencyKeys)
            }
            guard admitted else { return eventLoop.makeSucceededFuture(nil) }
        }
        guard envelope.target != .all else {
            sink.deliver(envelope)
            return eventLoop.makeSucceededFuture(nil)
        }
        let acknowledgements = localAcknowledgements
        let result: Result<StreamPosition, BrokerError> = channels.withLock { channels in
            var updated = channels.logs[envelope.target] ?? ChannelLog(epoch: epochPrefix + "-" + String(channels.created + 1, radix: 36), lastPublish: now)
            let position = StreamPosition(offset: updated.latest + 1, epoch: updated.epoch)
            let kept = HistoryEntry(position: position, body: envelope.frame, positionIndex: envelope.positionIndex)
            if envelope.requiresAck, case .user(let user) = envelope.target {
                // Kept before the offset is taken: a refused message leaves no gap.
                do throws(BrokerError) { try acknowledgements.keep(kept, for: user, now: now) } catch { return .failure(error) }
            }
            if channels.logs[envelope.target] == nil { channels.created += 1 }
            channels.logs[envelope.target] = nil  // uniquely referenced while updated
            updated.latest += 1
            updated.lastPublish = now
            let size = history.size(for: envelope.target)
            if size > 0, kept.cost <= history.maxChannelBytes, interest.withLock({ $0.mayBeRead(envelope.target, now: now, ttl: history.ttl) }) {
                updated.entries.append((kept, now))
                updated.bytes += kept.cost
                channels.historyBytes += kept.cost
                channels.historyEntries += 1
                channels.historyOrder.append((envelope.target, updated.epoch, updated.latest))
            }
            let trimmed = updated.trim(size: size, maxBytes: history.maxChannelBytes, ttl: history.ttl, now: now)
            channels.historyBytes -= trimmed.bytes
            channels.historyEntries -= trimmed.count
            channels.logs[envelope.target] = updated
            channels.enforceBudget(history.maxBytes)
            // Delivered under the lock: the next offset of this channel cannot overtake it.
            sink.deliver(envelope.at(position))
            return .success(position)
        }
        return eventLoop.makeCompletedFuture(result.map { Optional($0) }.mapError { $0 as any Error })
    }

    public func position(of target: DeliveryTarget) -> StreamPosition {
        let now = ContinuousClock.now
        return channels.withLock { channels in
            if let log = channels.logs[target] { return StreamPosition(offset: log.latest, epoch: log.epoch) }
            // The epoch starts now: an idle channel is forgotten after the TTL like any other.
            channels.created += 1
            let log = ChannelLog(epoch: epochPrefix + "-" + String(channels.created, radix: 36), lastPublish: now)
            channels.logs[target] = log
            return StreamPosition(offset: 0, epoch: log.epoch)
        }
    }

    public func history(of target: DeliveryTarget, since: Int64, limit: Int) -> HistoryPage {
        let now = ContinuousClock.now
        let history = historyConfiguration
        return channels.withLock { channels in
            guard channels.logs[target] != nil else {
                // Never published (or forgotten): an empty stream in an epoch of its own.
                return HistoryPage(latest: StreamPosition(offset: 0, epoch: epochPrefix), entries: [], oldest: 1)
            }
            channels.trim(target, size: history.size(for: target), history: history, now: now)
            let log = channels.logs[target]!
            let entries = log.entries.lazy.map(\.entry).filter { $0.offset > since }.prefix(max(0, limit))
            return HistoryPage(
                latest: StreamPosition(offset: log.latest, epoch: log.epoch),
                entries: Array(entries),
                oldest: log.entries.first?.entry.offset ?? log.latest + 1
            )
        }
    }

    /// One node delivers every channel already: nothing to subscribe. The change only tells
    /// which channels keep history (see the type's documentation).
    public func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let now = ContinuousClock.now
        interest.withLock { $0.apply(change, now: now) }
        return eventLoop.makeSucceededVoidFuture()
    }

    public var statistics: BrokerStatistics.Snapshot { .init() }

    /// Until shutdown, forgets channels idle for longer than the history TTL (their history has
    /// expired), so the channel table does not grow with every room and user ever addressed.
    public func run() async throws {
        let ttl = historyConfiguration.ttl
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: ttl) }
            let now = ContinuousClock.now
            channels.withLock { $0.expire(now: now, ttl: ttl) }
            localAcknowledgements.expire(now: now)
            interest.withLock { $0.expire(now: now, ttl: ttl) }
        }
    }
}
