/// Rooms as the seed defines them: a room is a named set of user ids.
///
/// Membership belongs to users, not connections, and outlives them: a user who goes offline
/// stays a member until they (or the backend) leave. A room whose last member leaves
/// disappears. Bounded by ``HubConfiguration`` (rooms per user, rooms, members per room).
public struct RoomRegistry: Sendable {
    private(set) var members: [String: Set<String>] = [:]
    private(set) var roomsOfUser: [String: Set<String>] = [:]
    let limits: HubConfiguration

    public init(limits: HubConfiguration = .init()) {
        self.limits = limits
    }

    /// Adds `user` to `room`. Returns `false` when the user already was a member.
    @discardableResult
    public mutating func join(user: String, room: String) throws(HubError) -> Bool {
        if members[room]?.contains(user) == true { return false }
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
        return true
    }

    /// Removes `user` from `room`; an empty room disappears. Returns `false` when the user was not a member.
    @discardableResult
    public mutating func leave(user: String, room: String) -> Bool {
        guard members[room]?.remove(user) != nil else { return false }
        if members[room]?.isEmpty == true { members[room] = nil }
        roomsOfUser[user]?.remove(room)
        if roomsOfUser[user]?.isEmpty == true { roomsOfUser[user] = nil }
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

    public var roomCount: Int { members.count }
    public func roomExists(_ room: String) -> Bool { members[room] != nil }
}
