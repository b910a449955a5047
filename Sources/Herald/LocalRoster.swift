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
        var presenceVersions = PresenceVersions()
        /// Users' presence info, while they have connections.
        var info: [String: String] = [:]
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
            if changed { state.presenceVersions.changed([change.room]) }
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
            let before = state.connections[user] ?? 0
            let count = before + delta
            state.connections[user] = count > 0 ? count : nil
            if count <= 0 { state.info[user] = nil }
            // Online or offline: every room of the user changed presence.
            if (before > 0) != (count > 0) { state.presenceVersions.changed(state.registry.rooms(of: user)) }
        }
    }

    public func presenceChanges(since version: String?) async throws(HubError) -> PresenceChanges {
        state.withLock { $0.presenceVersions.changes(since: version) }
    }

    public func presenceInfoChanged(user: String, info: String) {
        state.withLock { state in
            guard state.connections[user] != nil else { return }
            state.info[user] = info
        }
    }

    public func presenceInfo(of users: [String]) async throws(HubError) -> [String: String] {
        state.withLock { state in
            var found: [String: String] = [:]
            for user in users { if let info = state.info[user] { found[user] = info } }
            return found
        }
    }
}

/// Which rooms changed presence at which version, for ``LocalRoster/presenceChanges(since:)``.
/// Bounded: past ``limit`` rooms it forgets them all and answers "any room" to older versions.
struct PresenceVersions {
    static let limit = 10_000
    private(set) var version: UInt64 = 0
    /// Versions older than this are forgotten.
    private var floor: UInt64 = 0
    private var changedAt: [String: UInt64] = [:]

    mutating func changed<S: Sequence<String>>(_ rooms: S) {
        for room in rooms {
            version += 1
            if changedAt.count >= Self.limit, changedAt[room] == nil {
                // Rooms changed before this one are forgotten: older versions get "any room".
                changedAt.removeAll(keepingCapacity: true)
                floor = version - 1
            }
            changedAt[room] = version
        }
    }

    func changes(since known: String?) -> PresenceChanges {
        let current = String(version)
        guard let known, let since = UInt64(known), since >= floor, since <= version else { return PresenceChanges(version: current, rooms: nil) }
        guard since < version else { return PresenceChanges(version: current, rooms: []) }
        return PresenceChanges(version: current, rooms: Set(changedAt.lazy.filter { $0.value > since }.map(\.key)))
    }
}
