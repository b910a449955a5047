import Synchronization

/// Counters of a hub, readable at any time from any thread.
public final class HubStatistics: Sendable {
    let messagesDelivered = Atomic<Int>(0)
    let framesWritten = Atomic<Int>(0)
    let connectionsOpened = Atomic<Int>(0)
    let connectionsRefused = Atomic<Int>(0)
    let slowConsumersCut = Atomic<Int>(0)
    /// Frames written by scope (all, room, user) and presence frames: `framesWritten` split up.
    let deliveriesToAll = Atomic<Int>(0)
    let deliveriesToRooms = Atomic<Int>(0)
    let deliveriesToUsers = Atomic<Int>(0)
    let presenceFramesWritten = Atomic<Int>(0)

    public init() {}

    /// Records a connection cut off because it could not keep up.
    public func recordSlowConsumer() { slowConsumersCut.add(1, ordering: .relaxed) }

    public struct Snapshot: Sendable, Equatable {
        /// Messages the broker delivered to this node.
        public var messagesDelivered: Int
        /// Frames written to local connections (one message to N recipients counts N).
        public var framesWritten: Int
        public var connectionsOpened: Int
        public var connectionsRefused: Int
        public var slowConsumersCut: Int
        public var deliveriesToAll: Int
        public var deliveriesToRooms: Int
        public var deliveriesToUsers: Int
        public var presenceFramesWritten: Int
    }

    /// Counts frames written for one message of `target`.
    func recordWritten(_ count: Int, to target: DeliveryTarget) {
        guard count > 0 else { return }
        framesWritten.add(count, ordering: .relaxed)
        switch target {
        case .all: deliveriesToAll.add(count, ordering: .relaxed)
        case .room: deliveriesToRooms.add(count, ordering: .relaxed)
        case .user: deliveriesToUsers.add(count, ordering: .relaxed)
        }
    }

    public func snapshot() -> Snapshot {
        Snapshot(
            messagesDelivered: messagesDelivered.load(ordering: .relaxed),
            framesWritten: framesWritten.load(ordering: .relaxed),
            connectionsOpened: connectionsOpened.load(ordering: .relaxed),
            connectionsRefused: connectionsRefused.load(ordering: .relaxed),
            slowConsumersCut: slowConsumersCut.load(ordering: .relaxed),
            deliveriesToAll: deliveriesToAll.load(ordering: .relaxed),
            deliveriesToRooms: deliveriesToRooms.load(ordering: .relaxed),
            deliveriesToUsers: deliveriesToUsers.load(ordering: .relaxed),
            presenceFramesWritten: presenceFramesWritten.load(ordering: .relaxed)
        )
    }
}
