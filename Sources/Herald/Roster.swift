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
    /// Returns `false` when the user already was a member.
    func join(user: String, room: String) async throws(HubError) -> Bool

    /// Ends the membership, with the same guarantees as ``join(user:room:)``. Returns `false`
    /// when the user was not a member.
    func leave(user: String, room: String) async throws(HubError) -> Bool

    /// The room's members (empty when the room does not exist).
    func members(of room: String) async throws(HubError) -> Set<String>

    /// The rooms `user` is a member of.
    func rooms(of user: String) async throws(HubError) -> Set<String>

    /// The rooms of a user whose first connection is being set up, without a task: the hub
    /// calls it on every such connect, so a roster backed by a store should batch these reads
    /// (one round trip for many connects, not one each). Fails with ``HubError``.
    func rooms(of user: String, on loop: any EventLoop) -> EventLoopFuture<Set<String>>

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
}

extension Roster {
    public func clusterTotals() async throws(HubError) -> ClusterTotals? { nil }

    public func rooms(of user: String, on loop: any EventLoop) -> EventLoopFuture<Set<String>> {
        loop.makeFutureWithTask { try await self.rooms(of: user) }
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

/// One membership change: `user` joined (`isMember`) or left `room`.
public struct MembershipChange: Sendable, Hashable {
    public var user: String
    public var room: String
    public var isMember: Bool

    public init(user: String, room: String, isMember: Bool) {
        self.user = user
        self.room = room
        self.isMember = isMember
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
