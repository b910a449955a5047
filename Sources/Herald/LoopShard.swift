import HeraldWire
import NIOCore

/// The connections of one event loop, and the fan-out to them.
///
/// All state is confined to ``eventLoop``: the hub reaches a shard with one `execute` per
/// message, never with a lock, and the shard writes to each of its connections in turn
/// without waiting for any of them (a write only queues bytes; a connection over its limit
/// cuts itself off). Flushes are coalesced: every connection written to during one
/// event-loop turn is flushed once, at the end of the turn's queued work.
final class LoopShard: @unchecked Sendable {
    let eventLoop: any EventLoop
    /// user → that user's connections on this loop (usually one or a few).
    private var byUser: [String: [any ClientConnection]] = [:]
    private var pendingFlush: [any ClientConnection] = []
    /// Connections replaying a channel's history: their live deliveries of it wait here.
    private var holds: [ObjectIdentifier: DeliveryHold] = [:]
    /// Rooms a connection must not receive although its user is a member (its token no longer
    /// allows a room the user joined themselves). Usually empty: then the fan-out checks nothing.
    private var excluded: [ObjectIdentifier: Set<String>] = [:]
    private var flushScheduled = false
    private var heartbeatTicks = 0
    private var lastHeartbeatTick: NIODeadline?
    /// Heartbeat ticks that ran late and judged nobody (the loop was behind).
    private(set) var heartbeatsDeferred = 0
    private(set) var connectionCount = 0

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Bytes queued for this loop's connections that their sockets have not taken yet.
    func queuedOutboundBytes() -> Int {
        eventLoop.assertInEventLoop()
        var total = 0
        for connections in byUser.values {
            for connection in connections { total += connection.queuedOutboundBytes }
        }
        return total
    }

    func add(_ connection: any ClientConnection) {
        eventLoop.preconditionInEventLoop()
        byUser[connection.user, default: []].append(connection)
        connectionCount += 1
    }

    func remove(_ connection: any ClientConnection) {
        eventLoop.preconditionInEventLoop()
        guard var list = byUser[connection.user], let index = list.firstIndex(where: { $0 === connection }) else { return }
        list.remove(at: index)
        byUser[connection.user] = list.isEmpty ? nil : list
        excluded[ObjectIdentifier(connection)] = nil
        connectionCount -= 1
    }

    /// Asks the connection which of `joinedByUser` it must not receive, and applies it from the
    /// next delivery on.
    func review(_ connection: any ClientConnection, joinedByUser: Set<String>) {
        eventLoop.preconditionInEventLoop()
        // A connection closed meanwhile (a refresh that completed after it) leaves no entry.
        guard byUser[connection.user]?.contains(where: { $0 === connection }) == true else { return }
        let rooms = connection.excludedRooms(among: joinedByUser)
        excluded[ObjectIdentifier(connection)] = rooms.isEmpty ? nil : rooms
    }

    /// Reviews every connection of `user` on this loop.
    func review(user: String, joinedByUser: Set<String>) {
        for connection in byUser[user] ?? [] { review(connection, joinedByUser: joinedByUser) }
    }

    /// Writes `frame` to the target's local connections. `members` is the room's member
    /// snapshot for a room target.
    func deliver(_ frame: ByteBuffer, to target: DeliveryTarget, members: Set<String>?, position: StreamPosition? = nil) -> Int {
        eventLoop.preconditionInEventLoop()
        if !holds.isEmpty, let position {
            return deliverHolding(frame, to: target, members: members, position: position)
        }
        var written = 0
        switch target {
        case .all:
            for list in byUser.values {
                for connection in list { written += write(frame, to: connection) }
            }
        case .user(let user):
            for connection in byUser[user] ?? [] { written += write(frame, to: connection) }
        case .room(let room):
            guard let members else { break }
            if !excluded.isEmpty { return deliverExcluding(frame, to: room, members: members) }
            // Walk the smaller side: the room's members or this loop's users.
            if members.count <= byUser.count {
                for user in members {
                    for connection in byUser[user] ?? [] { written += write(frame, to: connection) }
                }
            } else {
                for (user, list) in byUser where members.contains(user) {
                    for connection in list { written += write(frame, to: connection) }
                }
            }
        }
        return written
    }

    /// Writes a presence event to the room's members' connections that asked for presence
    /// events and may receive the room.
    func deliverPresenceEvent(_ frame: ByteBuffer, toRoom room: String, members: Set<String>) -> Int {
        eventLoop.preconditionInEventLoop()
        var written = 0
        func deliver(to connections: [any ClientConnection]) {
            for connection in connections where connection.wantsPresenceEvents && excluded[ObjectIdentifier(connection)]?.contains(room) != true {
                written += write(frame, to: connection)
            }
        }
        // Walk the smaller side: the room's members or this loop's users.
        if members.count <= byUser.count {
            for user in members { deliver(to: byUser[user] ?? []) }
        } else {
            for (user, connections) in byUser where members.contains(user) { deliver(to: connections) }
        }
        return written
    }

    /// The rare path: some connection of this loop must not receive some room.
    private func deliverExcluding(_ frame: ByteBuffer, to room: String, members: Set<String>) -> Int {
        var written = 0
        for user in members {
            for connection in byUser[user] ?? [] where excluded[ObjectIdentifier(connection)]?.contains(room) != true {
                written += write(frame, to: connection)
            }
        }
        return written
    }

    /// The rare path: some connection of this loop is replaying history.
    private func deliverHolding(_ frame: ByteBuffer, to target: DeliveryTarget, members: Set<String>?, position: StreamPosition) -> Int {
        var recipients: [any ClientConnection] = []
        switch target {
        case .all: break
        case .user(let user): recipients = byUser[user] ?? []
        case .room:
            for user in members ?? [] { recipients += byUser[user] ?? [] }
        }
        if case .room(let room) = target, !excluded.isEmpty {
            recipients.removeAll { excluded[ObjectIdentifier($0)]?.contains(room) == true }
        }
        var written = 0
        for connection in recipients {
            if let hold = holds[ObjectIdentifier(connection)], hold.target == target {
                hold.append(position, frame)
            } else {
                written += write(frame, to: connection)
            }
        }
        return written
    }

    /// Starts holding `connection`'s live deliveries of `target`.
    func hold(_ target: DeliveryTarget, for connection: any ClientConnection, limit: Int) -> DeliveryHold {
        eventLoop.preconditionInEventLoop()
        let hold = DeliveryHold(target: target, limit: limit)
        holds[ObjectIdentifier(connection)] = hold
        return hold
    }

    /// Stops holding; the caller writes what was held.
    func release(_ hold: DeliveryHold, for connection: any ClientConnection) {
        eventLoop.preconditionInEventLoop()
        if holds[ObjectIdentifier(connection)] === hold { holds[ObjectIdentifier(connection)] = nil }
    }

    /// Pings the connections whose slice of the heartbeat interval this tick is.
    ///
    /// A tick that runs late by more than `allowedLag` finds the loop behind: pongs may sit
    /// unread in its sockets, so it closes nobody for a missing one (they are judged at their
    /// next tick on time). A node saturated by a connect storm must not cut off healthy clients
    /// for answers it has not read yet.
    func heartbeatTick(slices: Int, period: TimeAmount, allowedLag: TimeAmount) {
        eventLoop.preconditionInEventLoop()
        let now = NIODeadline.now()
        let judging = lastHeartbeatTick.map { now - $0 <= period + allowedLag } ?? true
        lastHeartbeatTick = now
        if !judging { heartbeatsDeferred &+= 1 }
        heartbeatTicks &+= 1
        let slice = heartbeatTicks % slices
        for list in byUser.values {
            for connection in list where slices == 1 || Self.slice(of: connection, slices: slices) == slice {
                connection.heartbeat(judging: judging)
            }
        }
    }

    /// A connection's slice: fixed for its lifetime, spread evenly by hashing its identity.
    private static func slice(of connection: any ClientConnection, slices: Int) -> Int {
        Int(UInt(bitPattern: ObjectIdentifier(connection).hashValue) % UInt(slices))
    }

    /// Calls `body` for every connection of this loop.
    func forEachConnection(_ body: (any ClientConnection) -> Void) {
        eventLoop.preconditionInEventLoop()
        for list in byUser.values {
            for connection in list { body(connection) }
        }
    }

    /// Calls `body` for every connection of `user` on this loop.
    func forEachConnection(of user: String, _ body: (any ClientConnection) -> Void) {
        eventLoop.preconditionInEventLoop()
        for connection in byUser[user] ?? [] { body(connection) }
    }

    func hasConnections(of user: String) -> Bool {
        byUser[user] != nil
    }

    private func write(_ frame: ByteBuffer, to connection: any ClientConnection) -> Int {
        if connection.enqueue(frame) {
            pendingFlush.append(connection)
            if !flushScheduled {
                flushScheduled = true
                // Runs after the tasks already queued on this loop: every delivery of this
                // turn shares one flush (one syscall) per connection.
                eventLoop.execute { self.flushPending() }
            }
        }
        return 1
    }

    private func flushPending() {
        flushScheduled = false
        let connections = pendingFlush
        pendingFlush.removeAll(keepingCapacity: true)
        for connection in connections { connection.flush() }
    }
}
