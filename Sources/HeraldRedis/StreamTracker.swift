import Herald
import HeraldWire
import Synchronization

/// The last position this node delivered on each room and user channel it subscribes to, so
/// that after its pub/sub connection to Redis was lost it can deliver, from the channel's
/// history, exactly what it missed: no gap, no duplicate, in offset order.
///
/// While a channel heals, live messages for it wait in a buffer (at most `bufferLimit`; past
/// it the oldest are dropped and the gap is reported). Deliveries are made under the lock, so
/// a channel's messages reach the hub in offset order whichever path they came by.
final class StreamTracker: Sendable {
    private let sink: any DeliverySink
    private let bufferLimit: Int
    private let state = Mutex<State>(State())

    struct Tracked {
        var position: StreamPosition?
        /// Live messages held while the channel heals; `nil` when it is live.
        var held: [Envelope]?
        var dropped = 0
        /// The loss (``State/losses``) that last suspended the channel.
        var lostAt: UInt64 = 0
    }

    struct State {
        var channels: [DeliveryTarget: Tracked] = [:]
        /// Losses counted so far: each suspension is one.
        var losses: UInt64 = 0
        /// Every loss up to this one is subscribed again: its channels may heal. A channel lost
        /// later (another shard failing meanwhile) waits for its own resubscription.
        var resubscribedThrough: UInt64 = 0
    }

    init(sink: any DeliverySink, bufferLimit: Int = 10_000) {
        self.sink = sink
        self.bufferLimit = bufferLimit
    }

    /// A message from pub/sub: delivered unless it was already delivered, held while healing.
    func received(_ envelope: Envelope) {
        guard let position = envelope.position else {
            sink.deliver(envelope)
            return
        }
        state.withLock { state in
            var tracked = state.channels[envelope.target] ?? Tracked()
            defer { state.channels[envelope.target] = tracked }
            if tracked.held != nil {
                if tracked.held!.count >= bufferLimit {
                    tracked.held!.removeFirst()
                    tracked.dropped += 1
                }
                tracked.held!.append(envelope)
                return
            }
            if let last = tracked.position, last.epoch == position.epoch, position.offset <= last.offset { return }
            tracked.position = position
            sink.deliver(envelope)
        }
    }

    /// The pub/sub connection was lost: hold live messages of every tracked channel until healed.
    func suspend() {
        state.withLock { state in
            state.losses += 1
            for key in state.channels.keys { Self.suspend(&state.channels[key]!, at: state.losses) }
        }
    }

    /// Some channels stopped being subscribed (one shard of a sharded cluster): hold their live
    /// messages until healed; the others stay live.
    func suspend(_ targets: [DeliveryTarget]) {
        state.withLock { state in
            state.losses += 1
            for target in targets where state.channels[target] != nil { Self.suspend(&state.channels[target]!, at: state.losses) }
        }
    }

    /// A channel already healing is suspended again too: what it reads from history may end
    /// before this loss, so it must heal once more (``heal(_:with:lostAt:)``).
    private static func suspend(_ tracked: inout Tracked, at loss: UInt64) {
        if tracked.held == nil { tracked.held = [] }
        tracked.lostAt = loss
    }

    /// Every channel lost so far is subscribed again (the subscriber said so): they may heal.
    func resubscribed() {
        state.withLock { $0.resubscribedThrough = $0.losses }
    }

    /// Channels to heal — suspended ones whose loss is subscribed again — with the last
    /// position delivered on each and the loss that suspended it.
    func suspended() -> [(target: DeliveryTarget, position: StreamPosition?, lostAt: UInt64)] {
        state.withLock { state in
            state.channels.compactMap { key, tracked in
                tracked.held != nil && tracked.lostAt <= state.resubscribedThrough ? (key, tracked.position, tracked.lostAt) : nil
            }
        }
    }

    /// What healing one channel achieved.
    struct Outcome {
        var delivered = 0
        /// Messages that could not be recovered (history expired, epoch changed, buffer overflow).
        var lost = 0
        var epochChanged = false
    }

    /// Delivers what `page` holds after the last position, then the held live messages, and
    /// makes the channel live again — unless it was lost again since `lostAt` (as
    /// ``suspended()`` gave it), when it goes on holding live messages until it heals again.
    /// `page` is `nil` when the history could not be read.
    func heal(_ target: DeliveryTarget, with page: HistoryPage?, lostAt: UInt64) -> Outcome {
        state.withLock { state in
            guard var tracked = state.channels[target], let held = tracked.held else { return Outcome() }
            var outcome = Outcome(lost: tracked.dropped)
            if let page, let last = tracked.position {
                // In a new epoch every message was published during the gap: deliver it from its
                // first offset. (What the old epoch held after `last` is gone with it.)
                let from = page.latest.epoch == last.epoch ? last.offset : 0
                outcome.epochChanged = page.latest.epoch != last.epoch
                if page.oldest > from + 1 { outcome.lost += Int(page.oldest - from - 1) }
                var delivered = from
                for entry in page.entries where entry.offset > delivered {
                    sink.deliver(entry.envelope(to: target))
                    tracked.position = entry.position
                    delivered = entry.offset
                    outcome.delivered += 1
                }
            }
            guard tracked.lostAt == lostAt else {
                // Lost again meanwhile: what is held may lie past that second gap, which the
                // page does not cover. Keep it held; the next heal reads on from the page.
                state.channels[target] = tracked
                return outcome
            }
            for envelope in held {
                guard let position = envelope.position else { continue }
                if let last = tracked.position, last.epoch == position.epoch, position.offset <= last.offset { continue }
                tracked.position = position
                sink.deliver(envelope)
            }
            tracked.held = nil
            tracked.dropped = 0
            state.channels[target] = tracked
            return outcome
        }
    }

    /// The node no longer subscribes to `target`: forget it.
    func forget(_ target: DeliveryTarget) {
        _ = state.withLock { $0.channels.removeValue(forKey: target) }
    }
}
