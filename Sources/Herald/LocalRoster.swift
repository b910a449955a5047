public import HeraldWire
public import NIOCore
import Synchronization

/// The in-memory roster of a single node: a ``RoomRegistry`` and this node's connection counts.
public final class LocalRoster: Roster {
    private let sink: any DeliverySink
    private let state: Mutex<State>

    struct State {
        var registry: RoomRegistry
        var connections: [String: Int] = [:]
    }

    public init(limits: HubConfiguration = .init(), notifying sink: any DeliverySink) {
        self.sink = sink
        self.state = Mutex(State(registry: RoomRegistry(limits: limits)))
    }

    public func join(user: String, room: String, grant: MembershipGrant) async throws(HubError) -> Bool {
        try await change(MembershipChange(user: user, room: room, isMember: true, grant: grant))
    }

    public func leave(user: String, room: String) async throws(HubError) -> Bool {
        try await change(MembershipChange(user: user, room: room, isMember: false))
    }

    private func change(_ change: MembershipChange) async throws(HubError) -> Bool {
        // The hub hears of the change under the registry's lock, so it sees changes in store order.
        let applied = try state.withLock { state throws(HubError) in
            let changed =
                change.isMember
                ? try state.registry.join(user: change.user, room: change.room, grant: change.grant)
                : state.registry.leave(user: change.user, room: change.room)
            return changed ? sink.membershipChanged(change) : nil
        }
        guard let applied else { return false }
        try? await applied.get()
        return true
    }

    public func disconnect(user: String, code: CloseCode, reason: String) async {
        await sink.disconnect(user: user, code: code, reason: reason)
    }

    public func members(of room: String) -> Set<String> { state.withLock { $0.registry.members(of: room) } }
    public func rooms(of user: String) -> Set<String> { state.withLock { $0.registry.rooms(of: user) } }

    public func memberships(of user: String, on loop: any EventLoop) -> EventLoopFuture<[String: MembershipGrant]> {
        loop.makeSucceededFuture(state.withLock { $0.registry.memberships(of: user) })
    }
    public func roomCount() -> Int { state.withLock { $0.registry.roomCount } }

    public func connectionCounts(of users: [String]) -> [String: Int] {
        state.withLock { state in
            Dictionary(users.map { ($0, state.connections[$0] ?? 0) }, uniquingKeysWith: { a, _ in a })
        }
    }

    public func presenceChanged(user: String, delta: Int) {
        state.withLock { state in
            let count = (state.connections[user] ?? 0) + delta
            state.connections[user] = count > 0 ? count : nil
        }
    }
}
