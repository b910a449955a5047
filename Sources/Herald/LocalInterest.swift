import NIOCore

/// This node's copy of the rooms of its online users, kept in step with the cluster's roster,
/// and the broker channels that follow from it (the seed's rule: a node subscribes to a room's
/// channel while one of the room's members has a connection here, and to a user's channel
/// while the user has one).
///
/// Bounded by the node's connections: only users with a local connection have an entry, and
/// each of them at most ``HubConfiguration/maxRoomsPerUser`` rooms.
struct LocalInterest {
    enum Rooms {
        /// The user's first connection arrived and the roster is being asked for the user's
        /// rooms; changes heard meanwhile are replayed on top of the answer, in order.
        case loading(pending: [MembershipChange], ready: EventLoopPromise<Void>)
        case known(Set<String>)
    }

    private(set) var roomsOfUser: [String: Rooms] = [:]
    /// The memberships of known users that the users made themselves (``MembershipGrant/user``):
    /// each connection of the user receives them only while its token allows them. One set for
    /// all users (an entry per membership, not an allocation per user).
    private(set) var ownJoins: Set<UserRoom> = []
    /// room → its members with a connection on this node: the fan-out's snapshot.
    private(set) var localMembers: [String: Set<String>] = [:]

    /// The user's first connection on this node: its channel is needed from now on.
    mutating func userArrived(_ user: String, ready: EventLoopPromise<Void>) -> InterestChange {
        roomsOfUser[user] = .loading(pending: [], ready: ready)
        return InterestChange(subscribe: [.user(user)])
    }

    /// The promise that completes when the user's channels are live, while loading.
    func readiness(of user: String) -> EventLoopFuture<Void>? {
        if case .loading(_, let ready)? = roomsOfUser[user] { return ready.futureResult }
        return nil
    }

    /// The roster answered with the user's memberships. Returns `nil` when the user left meanwhile.
    mutating func roomsLoaded(_ user: String, memberships: [String: MembershipGrant]) -> (InterestChange, EventLoopPromise<Void>)? {
        guard case .loading(let pending, let ready)? = roomsOfUser[user] else { return nil }
        var memberships = memberships
        for change in pending {
            if !change.isMember {
                memberships[change.room] = nil
            } else if memberships[change.room] != .backend {
                memberships[change.room] = change.grant
            }
        }
        let rooms = Set(memberships.keys)
        roomsOfUser[user] = .known(rooms)
        for (room, grant) in memberships where grant == .user { ownJoins.insert(UserRoom(user: user, room: room)) }
        var interest = InterestChange()
        for room in rooms where insert(user, into: room) { interest.subscribe.append(.room(room)) }
        return (interest, ready)
    }

    /// The roster could not answer: the user is forgotten (the caller refuses its connections;
    /// a connection arriving meanwhile loads the rooms again). Returns the promise to fail.
    mutating func roomsFailed(_ user: String) -> EventLoopPromise<Void>? {
        guard case .loading(_, let ready)? = roomsOfUser[user] else { return nil }
        roomsOfUser[user] = nil
        return ready
    }

    /// Whether the user's rooms are known or being loaded.
    func isTracking(_ user: String) -> Bool { roomsOfUser[user] != nil }

    /// The memberships of every user whose rooms are known here, and who granted each (those
    /// still loading are left out: the roster's answer is what they will hold).
    var knownMemberships: [String: [String: MembershipGrant]] {
        var result: [String: [String: MembershipGrant]] = [:]
        for case (let user, .known(let rooms)) in roomsOfUser where !rooms.isEmpty {
            result[user] = Dictionary(uniqueKeysWithValues: rooms.map { ($0, ownJoins.contains(UserRoom(user: user, room: $0)) ? .user : .backend) })
        }
        return result
    }

    /// The rooms `user` (known here) joined themselves.
    func roomsJoinedByUser(_ user: String) -> Set<String> {
        guard !ownJoins.isEmpty, case .known(let rooms)? = roomsOfUser[user] else { return [] }
        var joined: Set<String> = []
        for room in rooms where ownJoins.contains(UserRoom(user: user, room: room)) { joined.insert(room) }
        return joined
    }

    /// Who granted `user`'s membership of `room`; `nil` when the user is not a member (as far
    /// as this node knows: it knows the users connected here).
    func grant(user: String, room: String) -> MembershipGrant? {
        guard isMember(user: user, room: room) else { return nil }
        return ownJoins.contains(UserRoom(user: user, room: room)) ? .user : .backend
    }

    /// The user's last connection on this node closed.
    mutating func userLeft(_ user: String) -> (InterestChange, EventLoopPromise<Void>?) {
        var interest = InterestChange(unsubscribe: [.user(user)])
        var waiting: EventLoopPromise<Void>?
        switch roomsOfUser.removeValue(forKey: user) {
        case .known(let rooms)?:
            if !ownJoins.isEmpty { for room in rooms { ownJoins.remove(UserRoom(user: user, room: room)) } }
            for room in rooms where remove(user, from: room) { interest.unsubscribe.append(.room(room)) }
        case .loading(_, let ready)?:
            waiting = ready
        case nil:
            break
        }
        return (interest, waiting)
    }

    /// A membership changed in the roster. `grantsChanged` says that the rooms the user joined
    /// themselves changed: the user's connections must check them against their tokens again.
    mutating func apply(_ change: MembershipChange) -> (interest: InterestChange, grantsChanged: Bool) {
        switch roomsOfUser[change.user] {
        case nil:
            return (InterestChange(), false)  // no connection here: nothing to track
        case .loading(var pending, let ready)?:
            pending.append(change)
            roomsOfUser[change.user] = .loading(pending: pending, ready: ready)
            return (InterestChange(), false)
        case .known(var rooms)?:
            if change.isMember {
                let inserted = rooms.insert(change.room).inserted
                var grantsChanged = false
                if change.grant == .backend {
                    grantsChanged = ownJoins.remove(UserRoom(user: change.user, room: change.room)) != nil
                } else if inserted {
                    // A user's own join never downgrades a membership the backend granted.
                    ownJoins.insert(UserRoom(user: change.user, room: change.room))
                    grantsChanged = true
                }
                guard inserted else { return (InterestChange(), grantsChanged) }
                roomsOfUser[change.user] = .known(rooms)
                let interest = insert(change.user, into: change.room) ? InterestChange(subscribe: [.room(change.room)]) : InterestChange()
                return (interest, grantsChanged)
            } else {
                guard rooms.remove(change.room) != nil else { return (InterestChange(), false) }
                roomsOfUser[change.user] = .known(rooms)
                let grantsChanged = ownJoins.remove(UserRoom(user: change.user, room: change.room)) != nil
                let interest = remove(change.user, from: change.room) ? InterestChange(unsubscribe: [.room(change.room)]) : InterestChange()
                return (interest, grantsChanged)
            }
        }
    }

    func isMember(user: String, room: String) -> Bool {
        localMembers[room]?.contains(user) ?? false
    }

    /// Adds a local member; `true` when the room had none here before.
    private mutating func insert(_ user: String, into room: String) -> Bool {
        let wasEmpty = localMembers[room] == nil
        localMembers[room, default: []].insert(user)
        return wasEmpty
    }

    /// Removes a local member; `true` when the room has none here any more.
    private mutating func remove(_ user: String, from room: String) -> Bool {
        guard localMembers[room]?.remove(user) != nil else { return false }
        guard localMembers[room]?.isEmpty == true else { return false }
        localMembers[room] = nil
        return true
    }
}
