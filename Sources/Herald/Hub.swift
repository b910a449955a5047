public import Logging
public import HeraldWire
public import NIOCore
public import ServiceLifecycle
import Synchronization

/// The node's registry of local connections and rooms, and the fan-out from the broker to
/// local sockets.
///
/// - Connections are kept per event loop (``LoopShard``), indexed by user.
/// - Rooms (room → user ids) are shared by all loops behind one lock, held only to read a
///   member snapshot or change a membership, never while writing to sockets.
/// - ``deliver(_:)`` (called by the broker) hands the encoded frame to each event loop that
///   has connections with one `execute`: the cost of a delivery to 10,000 connections is one
///   hop per loop, not a task per recipient.
///
/// The hub is a `Service`: while it runs, every loop pings its connections each heartbeat.
public final class Hub: DeliverySink, Service, Sendable {
    public let configuration: HubConfiguration
    public let statistics = HubStatistics()
    let logger: Logger
    /// The loops connections live on (the transport's group).
    public let eventLoopGroup: any EventLoopGroup
    private let shards: [LoopShard]
    private let shardByLoop: [ObjectIdentifier: LoopShard]
    private let framing: @Sendable (ByteBuffer) -> ByteBuffer
    private let rooms: Mutex<RoomRegistry>
    private let online: Mutex<OnlineUsers>

    struct OnlineUsers {
        var total = 0
        var connectionsOfUser: [String: Int] = [:]
    }

    /// - Parameters:
    ///   - eventLoopGroup: the loops the transport accepts connections on.
    ///   - framing: wraps a delivery frame for the transport (for WebSocket: the frame header),
    ///     applied once per message before fan-out, so every recipient gets the same bytes.
    public init(
        configuration: HubConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup,
        logger: Logger = Logger(label: "herald.hub"),
        framing: @escaping @Sendable (ByteBuffer) -> ByteBuffer = { $0 }
    ) {
        self.configuration = configuration
        self.framing = framing
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
        var shards: [LoopShard] = []
        var byLoop: [ObjectIdentifier: LoopShard] = [:]
        for loop in eventLoopGroup.makeIterator() {
            let shard = LoopShard(eventLoop: loop)
            shards.append(shard)
            byLoop[ObjectIdentifier(loop)] = shard
        }
        self.shards = shards
        self.shardByLoop = byLoop
        self.rooms = Mutex(RoomRegistry(limits: configuration))
        self.online = Mutex(OnlineUsers())
    }

    // MARK: - Connections

    /// Admits a connection. Call on the connection's event loop.
    /// - Throws: ``HubError`` when the node or the user is at its connection limit (close with 4029).
    public func register(_ connection: any ClientConnection) throws(HubError) {
        let shard = shard(for: connection.eventLoop)
        let limits = configuration
        let refusal: HubError? = online.withLock { state in
            guard state.total < limits.maxConnections else { return .serverFull(limit: limits.maxConnections) }
            let current = state.connectionsOfUser[connection.user, default: 0]
            guard current < limits.maxConnectionsPerUser else {
                return HubError(reason: .userFull(user: connection.user, limit: limits.maxConnectionsPerUser))
            }
            state.total += 1
            state.connectionsOfUser[connection.user] = current + 1
            return nil
        }
        if let refusal {
            statistics.connectionsRefused.add(1, ordering: .relaxed)
            throw refusal
        }
        shard.add(connection)
        statistics.connectionsOpened.add(1, ordering: .relaxed)
    }

    /// Removes a connection from every index. Call on the connection's event loop, once.
    public func unregister(_ connection: any ClientConnection) {
        shard(for: connection.eventLoop).remove(connection)
        online.withLock { state in
            state.total -= 1
            let remaining = state.connectionsOfUser[connection.user, default: 1] - 1
            state.connectionsOfUser[connection.user] = remaining > 0 ? remaining : nil
        }
    }

    /// One of the hub's event loops (the current one when called on one).
    public var anyEventLoop: any EventLoop { eventLoopGroup.any() }

    /// Connections on this node.
    public var connectionCount: Int { online.withLock { $0.total } }

    /// Users with at least one connection on this node.
    public var onlineUserCount: Int { online.withLock { $0.connectionsOfUser.count } }

    /// The user's connections on this node.
    public func connectionCount(of user: String) -> Int {
        online.withLock { $0.connectionsOfUser[user] ?? 0 }
    }

    /// Closes every connection with `code` (for example 1012 on shutdown).
    public func closeAll(_ code: CloseCode, reason: String) {
        for shard in shards {
            shard.eventLoop.execute {
                shard.forEachConnection { $0.close(code, reason: reason) }
            }
        }
    }

    // MARK: - Rooms

    /// Makes `user` (all of the user's connections) a member of `room`.
    /// Returns `false` when the user already was one.
    @discardableResult
    public func join(user: String, room: String) throws(HubError) -> Bool {
        try rooms.withLock { registry throws(HubError) in try registry.join(user: user, room: room) }
    }

    /// Ends the membership. Returns `false` when the user was not a member.
    @discardableResult
    public func leave(user: String, room: String) -> Bool {
        rooms.withLock { $0.leave(user: user, room: room) }
    }

    public func isMember(user: String, room: String) -> Bool {
        rooms.withLock { $0.isMember(user: user, room: room) }
    }

    public func members(of room: String) -> Set<String> {
        rooms.withLock { $0.members(of: room) }
    }

    public func rooms(of user: String) -> Set<String> {
        rooms.withLock { $0.rooms(of: user) }
    }

    public var roomCount: Int { rooms.withLock { $0.roomCount } }

    /// The members of `room` that have a connection on this node.
    public func onlineMembers(of room: String) -> Set<String> {
        let members = self.members(of: room)
        return online.withLock { state in members.filter { state.connectionsOfUser[$0] != nil } }
    }

    // MARK: - Delivery

    /// Delivers an envelope from the broker to the local connections it targets.
    ///
    /// Never blocks and never waits for a recipient: the frame goes to each event loop that has
    /// connections with one `execute` (run inline when already on that loop).
    public func deliver(_ envelope: Envelope) {
        statistics.messagesDelivered.add(1, ordering: .relaxed)
        var members: Set<String>?
        if case .room(let room) = envelope.target {
            let snapshot = self.members(of: room)
            if snapshot.isEmpty { return }
            members = snapshot
        }
        let frame = framing(envelope.frame)
        let target = envelope.target
        let statistics = self.statistics
        for shard in shards {
            if shard.eventLoop.inEventLoop {
                let written = shard.deliver(frame, to: target, members: members)
                statistics.framesWritten.add(written, ordering: .relaxed)
            } else {
                shard.eventLoop.execute { [members] in
                    let written = shard.deliver(frame, to: target, members: members)
                    statistics.framesWritten.add(written, ordering: .relaxed)
                }
            }
        }
    }

    // MARK: - Service

    /// Runs the heartbeat on every loop until graceful shutdown or cancellation.
    public func run() async throws {
        let interval = configuration.heartbeat
        let tasks = shards.map { shard in
            shard.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                shard.forEachConnection { $0.heartbeat() }
            }
        }
        try? await gracefulShutdown()
        for task in tasks { task.cancel() }
    }

    private func shard(for loop: any EventLoop) -> LoopShard {
        guard let shard = shardByLoop[ObjectIdentifier(loop)] else {
            preconditionFailure("connection on an event loop outside the hub's EventLoopGroup")
        }
        return shard
    }
}
