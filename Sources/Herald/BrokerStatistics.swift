import Synchronization

/// A broker's failure counters. Every broker has them; the local one never moves them.
public final class BrokerStatistics: Sendable {
    private let publishFailures = Atomic<Int>(0)
    private let reconnects = Atomic<Int>(0)
    private let healingLosses = Atomic<Int>(0)

    public init() {}

    /// A publish the broker refused (disconnected, or its backend did not answer in time).
    public func recordPublishFailure() { publishFailures.add(1, ordering: .relaxed) }
    /// The broker lost its backend and got it back: deliveries published meanwhile were missed.
    public func recordReconnect() { reconnects.add(1, ordering: .relaxed) }
    /// Messages a node could not recover from history after a reconnect (expired, new epoch).
    public func recordHealingLoss(_ count: Int) { healingLosses.add(count, ordering: .relaxed) }

    public struct Snapshot: Sendable, Equatable {
        public var publishFailures: Int
        public var reconnects: Int
        public var healingLosses: Int

        public init(publishFailures: Int = 0, reconnects: Int = 0, healingLosses: Int = 0) {
            self.publishFailures = publishFailures
            self.reconnects = reconnects
            self.healingLosses = healingLosses
        }
    }

    public func snapshot() -> Snapshot {
        Snapshot(
            publishFailures: publishFailures.load(ordering: .relaxed),
            reconnects: reconnects.load(ordering: .relaxed),
            healingLosses: healingLosses.load(ordering: .relaxed)
        )
    }
}
