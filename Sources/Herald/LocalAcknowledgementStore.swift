import DequeModule
import HeraldWire
public import NIOCore
import Synchronization

/// The in-memory ``AcknowledgementStore`` of ``LocalBroker``: per user, the messages sent with
/// ``Envelope/requiresAck`` and not acknowledged yet, oldest first.
///
/// Bounded per user by count (``HistoryConfiguration/maxUnacknowledged``) and bytes
/// (``HistoryConfiguration/maxChannelBytes``), the oldest dropped past either; and over all users
/// by ``HistoryConfiguration/maxUnacknowledgedBytes``, where a new message is refused instead
/// (a message already accepted is never dropped to make room). Expired messages are dropped when
/// read and by ``expire(now:)``.
public final class LocalAcknowledgementStore: AcknowledgementStore {
    private let configuration: HistoryConfiguration
    private let state = Mutex<State>(State())
    /// The current epoch of a user's channel, for an acknowledgement that names none.
    private let currentEpoch: @Sendable (String) -> String?

    struct State {
        var pending: [String: PendingAcks] = [:]
        var bytes = 0
    }

    /// One user's unacknowledged messages, oldest first, and their bytes.
    struct PendingAcks {
        var entries = Deque<(entry: HistoryEntry, expires: ContinuousClock.Instant)>()
        var bytes = 0

        /// Removes the messages matching `predicate`; returns the bytes freed.
        mutating func remove(where predicate: ((entry: HistoryEntry, expires: ContinuousClock.Instant)) -> Bool) -> Int {
            let before = bytes
            entries.removeAll { item in
                guard predicate(item) else { return false }
                bytes -= item.entry.cost
                return true
            }
            return before - bytes
        }
    }

    public init(configuration: HistoryConfiguration, currentEpoch: @escaping @Sendable (String) -> String?) {
        self.configuration = configuration
        self.currentEpoch = currentEpoch
    }

    /// Bytes of unacknowledged messages held now.
    public var heldBytes: Int { state.withLock { $0.bytes } }

    /// Keeps `entry` for `user` until acknowledged or `ackTTL` passed.
    /// - Throws: ``BrokerError`` `storageFull` when the node's budget cannot take it.
    public func keep(_ entry: HistoryEntry, for user: String, now: ContinuousClock.Instant = .now) throws(BrokerError) {
        let configuration = self.configuration
        let refused: Int? = state.withLock { state in
            guard state.bytes + entry.cost <= configuration.maxUnacknowledgedBytes else { return state.bytes }
            var pending = state.pending.removeValue(forKey: user) ?? PendingAcks()
            pending.entries.append((entry, now + configuration.ackTTL))
            pending.bytes += entry.cost
            state.bytes += entry.cost
            while pending.entries.count > configuration.maxUnacknowledged || (pending.bytes > configuration.maxChannelBytes && pending.entries.count > 1),
                let oldest = pending.entries.popFirst()
            {
                pending.bytes -= oldest.entry.cost
                state.bytes -= oldest.entry.cost
            }
            state.pending[user] = pending
            return nil
        }
        if let refused {
            throw BrokerError(
                "this node holds \(refused) bytes of unacknowledged messages, near its limit (--ack-max-bytes): retry once recipients have acknowledged theirs, or raise the limit",
                kind: .storageFull
            )
        }
    }

    public func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]> {
        loop.makeSucceededFuture(unacknowledged(for: user))
    }

    /// Messages to `user` not acknowledged yet (nor expired), oldest first.
    public func unacknowledged(for user: String, now: ContinuousClock.Instant = .now) -> [HistoryEntry] {
        state.withLock { state in
            guard var pending = state.pending.removeValue(forKey: user) else { return [] }
            state.bytes -= pending.remove { $0.expires < now }
            if !pending.entries.isEmpty { state.pending[user] = pending }
            return pending.entries.map(\.entry)
        }
    }

    public func acknowledge(user: String, offset: Int64, epoch: String?) {
        guard let epoch = epoch ?? currentEpoch(user) else { return }
        state.withLock { state in
            guard var pending = state.pending.removeValue(forKey: user) else { return }
            state.bytes -= pending.remove { $0.entry.offset == offset && $0.entry.position.epoch == epoch }
            if !pending.entries.isEmpty { state.pending[user] = pending }
        }
    }

    /// Drops the messages past their deadline.
    public func expire(now: ContinuousClock.Instant) {
        state.withLock { state in
            for (user, var pending) in state.pending {
                state.pending[user] = nil
                state.bytes -= pending.remove { $0.expires < now }
                if !pending.entries.isEmpty { state.pending[user] = pending }
            }
        }
    }
}
