/// Rooms as the seed defines them: a room is a named set of user ids.
///
/// Membership belongs to users, not connections, and outlives them: a user who goes offline
/// stays a member until they (or the backend) leave. A room whose last member leaves
/// disappears. Bounded by ``HubConfiguration`` (rooms per user, rooms, members per room).
public struct RoomRegistry: Sendable {
    private(set) var members: [String: Set<String>] = [:]
    private(set) var roomsOfUser: [String: Set<String>] = [:]
    /// The memberships the user made themselves (``MembershipGrant/user``); the others were
    /// granted by the backend. One set for all users: a set per user would cost an allocation
    /// per user, this costs an entry per membership.
    private(set) var ownJoins: Set<UserRoom> = []
    let limits: HubConfiguration

    public init(limits: HubConfiguration = .init()) {
        self.limits = limits
    }

    /// Adds `user` to `room`, granted by `grant`. Returns `false` when nothing changed (the
    /// user already was a member by this grant, or by the backend's).
    @discardableResult
    public mutating func join(user: String, room: String, grant: MembershipGrant = .backend) throws(HubError) -> Bool {
        if members[room]?.contains(user) == true {
            // The backend's grant replaces the user's own; the user's never replaces the backend's.
            return grant == .backend && ownJoins.remove(UserRoom(user: user, room: room)) != nil
        }
        let userRooms = roomsOfUser[user]?.count ?? 0
        guard userRooms < limits.maxRoomsPerUser else {
            throw HubError(reason: .userRoomLimit(user: user, limit: limits.maxRoomsPerUser))
        }
        if let current = members[room] {
            guard current.count < limits.maxMembersPerRoom else {
                throw HubError(reason: .roomFull(room: room, limit: limits.maxMembersPerRoom))
            }
        } else {
            guard members.count < limits.maxRooms else { throw HubError(reason: .roomLimit(limit: limits.maxRooms)) }
        }
        members[room, default: []].insert(user)
        roomsOfUser[user, default: []].insert(room)
        if grant == .user { ownJoins.insert(UserRoom(user: user, room: room)) }
        return true
    }

    /// Removes `user` from `room`; an empty room disappears. Returns `false` when the user was not a member.
    @discardableResult
    public mutating func leave(user: String, room: String) -> Bool {
        guard members[room]?.remove(user) != nil else { return false }
        if members[room]?.isEmpty == true { members[room] = nil }
        roomsOfUser[user]?.remove(room)
        if roomsOfUser[user]?.isEmpty == true { roomsOfUser[user] = nil }
        ownJoins.remove(UserRoom(user: user, room: room))
        return true
    }

    public func isMember(user: String, room: String) -> Bool {
        members[room]?.contains(user) ?? false
    }

    /// The room's members (empty when the room does not exist).
    public func members(of room: String) -> Set<String> {
        members[room] ?? []
    }

    /// The rooms `user` is a member of.
    public func rooms(of user: String) -> Set<String> {
        roomsOfUser[user] ?? []
    }

    /// The user's memberships and who granted each.
    public func memberships(of user: String) -> [String: MembershipGrant] {
        var result: [String: MembershipGrant] = [:]
        for room in roomsOfUser[user] ?? [] { result[room] = ownJoins.contains(UserRoom(user: user, room: room)) ? .user : .backend }
        return result
    }

    public var roomCount: Int { members.count }
    public func roomExists(_ room: String) -> Bool { members[room] != nil }
}

/// One user's membership of one room, as a key.
struct UserRoom: Hashable, Sendable {
    var user: String
    var room: String
}
