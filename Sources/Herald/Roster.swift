public import HeraldWire
public import NIOCore

/// Who is a member of which room, and who is online: the state every node of a cluster shares.
///
/// ``LocalRoster`` keeps it in memory for one node; a Redis roster shares it between nodes.
/// Membership belongs to users, not connections, and outlives them. Every method may throw
/// ``HubError``: a limit (`isLimit`), or the shared store being unavailable.
public protocol Roster: Sendable {
    /// Makes `user` (every connection of the user, on every node) a member of `room`.
    ///
    /// Stores the change and tells every node's ``DeliverySink/membershipChanged(_:)``, in
    /// store order; returns once this node and every node holding a connection of the user
    /// applied it (bounded), so a message published after `join` returns reaches the user.
    /// Returns `false` when nothing changed: the user already was a member, by the same grant
    /// or by the backend's (a `.backend` grant replaces a `.user` one, and is announced like a
    /// join; a `.user` join never downgrades a backend's grant).
    func join(user: String, room: String, grant: MembershipGrant) async throws(HubError) -> Bool

    /// Ends the membership, with the same guarantees as ``join(user:room:)``. Returns `false`
    /// when the user was not a member.
    func leave(user: String, room: String) async throws(HubError) -> Bool

    /// Closes every connection of `user` on every node with `code` and `reason` (the backend's
    /// revocation). Returns once the nodes holding the user's connections closed them (bounded,
    /// as a membership change).
    func disconnect(user: String, code: CloseCode, reason: String) async throws(HubError)

    /// The room's members (empty when the room does not exist).
    func members(of room: String) async throws(HubError) -> Set<String>

    /// The rooms `user` is a member of.
    func rooms(of user: String) async throws(HubError) -> Set<String>

    /// The memberships of a user whose first connection is being set up, and who granted each,
    /// without a task: the hub calls it on every such connect, so a roster backed by a store
    /// should batch these reads (one round trip for many connects, not one each). Fails with
    /// ``HubError``.
    func memberships(of user: String, on loop: any EventLoop) -> EventLoopFuture<[String: MembershipGrant]>

    /// Connections of each user across the cluster (0 for a user offline everywhere).
    func connectionCounts(of users: [String]) async throws(HubError) -> [String: Int]

    /// Rooms that exist in the cluster.
    func roomCount() async throws(HubError) -> Int

    /// Records that this node's connections of `user` changed by `delta` (presence). Called by
    /// the hub on every connect and disconnect; must not block.
    func presenceChanged(user: String, delta: Int)

    /// The cluster's live nodes and their summed presence, as each node last reported it; `nil`
    /// for a roster of one node (its own figures are the whole).
    func clusterTotals() async throws(HubError) -> ClusterTotals?

    /// Which rooms' members or online members may have changed since `version` (a value this
    /// method returned before; `nil` the first time), for presence events: a roster that
    /// cannot tell answers ``PresenceChanges/rooms`` `nil` (any room may have changed), which
    /// costs a presence read per watched room. Over-reporting is harmless; missing a change
    /// is not. Must be cheap: every node asks once per presence window.
    func presenceChanges(since version: String?) async throws(HubError) -> PresenceChanges

    /// Records what presence events tell about `user` (a JSON object from the token's `info`
    /// claim) while the user has connections on this node; forgotten with the last one. Must
    /// not block.
    func presenceInfoChanged(user: String, info: String)

    /// The recorded info of those of `users` that have some (JSON objects, by user).
    func presenceInfo(of users: [String]) async throws(HubError) -> [String: String]
}

extension Roster {
    public func clusterTotals() async throws(HubError) -> ClusterTotals? { nil }

    public func presenceChanges(since version: String?) async throws(HubError) -> PresenceChanges {
        PresenceChanges(version: "", rooms: nil)
    }

    public func presenceInfoChanged(user: String, info: String) {}

    public func presenceInfo(of users: [String]) async throws(HubError) -> [String: String] { [:] }

    /// A membership the backend grants (the HTTP API, an application embedding Herald): it
    /// stands on its own, whatever the user's tokens allow.
    public func join(user: String, room: String) async throws(HubError) -> Bool {
        try await join(user: user, room: room, grant: .backend)
    }
}

/// Who made a membership. It decides whether the membership depends on the user's token.
public enum MembershipGrant: String, Sendable, Hashable, CustomStringConvertible {
    /// The user joined, as a token's `rooms` claim allowed: a connection receives the room, and
    /// may use it, only while its current token allows the room.
    case user
    /// The backend granted it (the HTTP API, a join hook, the application): it is trusted and
    /// stands on its own, whatever the user's tokens allow.
    case backend

    public var description: String { rawValue }
}

/// What ``Roster/presenceChanges(since:)`` answers.
public struct PresenceChanges: Sendable, Equatable {
    /// Pass it to the next call.
    public var version: String
    /// The rooms whose presence may have changed since the version asked about; `nil` when
    /// any room may have (the roster cannot tell, or lost track).
    public var rooms: Set<String>?

    public init(version: String, rooms: Set<String>?) {
        self.version = version
        self.rooms = rooms
    }
}

/// Figures summed over a cluster's live nodes.
public struct ClusterTotals: Sendable, Equatable {
    /// Nodes that heartbeated within the presence TTL.
    public var nodes: Int
    public var presence: PresenceTotals

    public init(nodes: Int, presence: PresenceTotals) {
        self.nodes = nodes
        self.presence = presence
    }
}

/// One membership change: `user` joined (`isMember`) or left `room`. A join says who granted
/// it; a join of a member changes the grant (from `.user` to `.backend`).
public struct MembershipChange: Sendable, Hashable {
    public var user: String
    public var room: String
    public var isMember: Bool
    /// Who granted the membership (for a join; a leave ignores it).
    public var grant: MembershipGrant

    public init(user: String, room: String, isMember: Bool, grant: MembershipGrant = .backend) {
        self.user = user
        self.room = room
        self.isMember = isMember
        self.grant = grant
    }
}

extension Roster {
    /// The room's members and which of them are online anywhere in the cluster, both sorted.
    public func presence(of room: String) async throws(HubError) -> (members: [String], online: [String]) {
        let members = try await self.members(of: room).sorted()
        guard !members.isEmpty else { return ([], []) }
        let counts = try await connectionCounts(of: members)
        return (members, members.filter { (counts[$0] ?? 0) > 0 })
    }
}
