public import HeraldWire
public import Logging
public import NIOCore
public import ServiceLifecycle
import Synchronization

/// The node's registry of local connections, its copy of their users' rooms, and the fan-out
/// from the broker to local sockets.
///
/// - Connections are kept per event loop (`LoopShard`), indexed by user.
/// - Room membership lives in the ``Roster`` (shared by the cluster); the hub keeps the rooms
///   of the users connected here (`LocalInterest`), updated by the roster's change
///   notifications, and tells the ``Broker`` which channels this node needs.
/// - ``deliver(_:)`` (called by the broker) hands the encoded frame to each event loop that
///   has connections with one `execute`: the cost of a delivery to 10,000 connections is one
///   hop per loop, not a task per recipient.
///
/// The hub is a `Service`: while it runs, every loop pings its connections each heartbeat.
/// Wire it with ``attach(broker:roster:)`` before the first connection.
public final class Hub: DeliverySink, Service, Sendable {
    public let configuration: HubConfiguration
    public let statistics = HubStatistics()
    /// Where the node's metrics go (``HeraldMetrics/disabled`` unless the node exports them).
    public let metrics: HeraldMetrics
    let logger: Logger
    /// The loops connections live on (the transport's group).
    public let eventLoopGroup: any EventLoopGroup
    private let shards: [LoopShard]
    private let shardByLoop: [ObjectIdentifier: LoopShard]
    private let framing: @Sendable (ByteBuffer) -> ByteBuffer
    private let state: Mutex<NodeState>
    private let cluster = Mutex<Cluster?>(nil)
    /// Connections on this node that asked for presence events.
    private let presenceListeners = Atomic<Int>(0)

    struct NodeState {
        var total = 0
        var connectionsOfUser: [String: Int] = [:]
        var interest = LocalInterest()
    }

    struct Cluster {
        var broker: any Broker
        var roster: any Roster
    }

    /// - Parameters:
    ///   - configuration: limits and heartbeat.
    ///   - eventLoopGroup: the loops the transport accepts connections on.
    ///   - framing: wraps a delivery frame for the transport (for WebSocket: the frame header),
    ///     applied once per message before fan-out, so every recipient gets the same bytes.
    ///   - logger: where the hub logs.
    ///   - metrics: where the node's metrics go.
    public init(
        configuration: HubConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup,
        logger: Logger = Logger(label: "herald.hub"),
        metrics: HeraldMetrics = .disabled,
        framing: @escaping @Sendable (ByteBuffer) -> ByteBuffer = { $0 }
    ) {
        self.configuration = configuration
        self.metrics = metrics
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
        self.state = Mutex(NodeState())
    }

    /// Wires the hub to its broker and roster (which were built with the hub as their sink).
    public func attach(broker: any Broker, roster: any Roster) {
        cluster.withLock { $0 = Cluster(broker: broker, roster: roster) }
    }

    /// A hub with the in-process broker and roster: one node on its own.
    public static func standalone(
        configuration: HubConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup,
        logger: Logger = Logger(label: "herald.hub"),
        framing: @escaping @Sendable (ByteBuffer) -> ByteBuffer = { $0 }
    ) -> (hub: Hub, broker: LocalBroker, roster: LocalRoster) {
        let hub = Hub(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger, framing: framing)
        let broker = LocalBroker(deliveringTo: hub)
        let roster = LocalRoster(limits: configuration, notifying: hub)
        hub.attach(broker: broker, roster: roster)
        return (hub, broker, roster)
    }

    private var wiring: Cluster {
        guard let cluster = cluster.withLock({ $0 }) else {
            preconditionFailure("Hub.attach(broker:roster:) must be called before the hub is used")
        }
        return cluster
    }

    // MARK: - Connections

    /// Admits a connection. Call on the connection's event loop.
    ///
    /// The returned future completes once the broker delivers the user's channel and rooms to
    /// this node (at once with the local broker); send the client its welcome then. It fails
    /// with ``HubError`` when the roster could not be read: close the connection.
    /// - Throws: ``HubError`` when the node or the user is at its connection limit (close with 4029).
    public func register(_ connection: any ClientConnection) throws(HubError) -> EventLoopFuture<Void> {
        connection.eventLoop.assertInEventLoop()
        let shard = shard(for: connection.eventLoop)
        let limits = configuration
        let cluster = wiring
        let user = connection.user
        let loop = connection.eventLoop
        enum Admission {
            case refused(HubError)
            case first(EventLoopPromise<Void>, EventLoopFuture<Void>)
            case waiting(EventLoopFuture<Void>?)
        }
        let admission: Admission = state.withLock { state in
            guard state.total < limits.maxConnections else { return .refused(.serverFull(limit: limits.maxConnections)) }
            let current = state.connectionsOfUser[user, default: 0]
            guard current < limits.maxConnectionsPerUser else {
                return .refused(HubError(reason: .userFull(user: user, limit: limits.maxConnectionsPerUser)))
            }
            state.total += 1
            state.connectionsOfUser[user] = current + 1
            // Later connections wait for the first one's rooms; after a failed load, load again.
            if current > 0, state.interest.isTracking(user) { return .waiting(state.interest.readiness(of: user)) }
            let ready = loop.makePromise(of: Void.self)
            let change = state.interest.userArrived(user, ready: ready)
            return .first(ready, cluster.broker.changeInterest(change, on: loop))
        }
        let ready: EventLoopFuture<Void>
        switch admission {
        case .refused(let refusal):
            statistics.connectionsRefused.add(1, ordering: .relaxed)
            throw refusal
        case .waiting(let readiness):
            ready = readiness ?? loop.makeSucceededVoidFuture()
        case .first(let promise, let userChannel):
            ready = promise.futureResult
            loadRooms(of: user, cluster: cluster, userChannel: userChannel, on: loop)
        }
        shard.add(connection)
        // The user's own joins known so far (none while loading: the load reviews again).
        shard.review(connection, joinedByUser: state.withLock { $0.interest.roomsJoinedByUser(user) })
        cluster.roster.presenceChanged(user: user, delta: 1)
        if connection.wantsPresenceEvents { presenceListeners.add(1, ordering: .relaxed) }
        statistics.connectionsOpened.add(1, ordering: .relaxed)
        return ready
    }

    /// Asks the roster for the rooms of a user whose first connection just arrived, then
    /// subscribes the rooms this node did not need yet.
    private func loadRooms(of user: String, cluster: Cluster, userChannel: EventLoopFuture<Void>, on loop: any EventLoop) {
        let roster = cluster.roster
        roster.memberships(of: user, on: loop).whenComplete { [self] result in
            switch result {
            case .success(let memberships):
                let loaded = state.withLock { state in
                    state.interest.roomsLoaded(user, memberships: memberships).map { change, ready in
                        if !state.interest.roomsJoinedByUser(user).isEmpty { scheduleReview(of: user) }
                        return (ready, change.isEmpty ? loop.makeSucceededVoidFuture() : cluster.broker.changeInterest(change, on: loop))
                    }
                }
                guard let (ready, roomChannels) = loaded else { return }
                userChannel.and(roomChannels).map { _ in }.cascade(to: ready)
            case .failure(let error):
                state.withLock { $0.interest.roomsFailed(user) }?.fail(error)
            }
        }
    }

    /// Removes a connection from every index. Call on the connection's event loop, once.
    public func unregister(_ connection: any ClientConnection) {
        connection.eventLoop.assertInEventLoop()
        let cluster = wiring
        let user = connection.user
        shard(for: connection.eventLoop).remove(connection)
        let abandoned: EventLoopPromise<Void>? = state.withLock { state in
            state.total -= 1
            let remaining = state.connectionsOfUser[user, default: 1] - 1
            state.connectionsOfUser[user] = remaining > 0 ? remaining : nil
            guard remaining == 0 else { return nil }
            let (change, waiting) = state.interest.userLeft(user)
            _ = cluster.broker.changeInterest(change, on: connection.eventLoop)
            return waiting
        }
        abandoned?.fail(HubError(reason: .unavailable("the connection closed before its channels were ready")))
        cluster.roster.presenceChanged(user: user, delta: -1)
        if connection.wantsPresenceEvents { presenceListeners.subtract(1, ordering: .relaxed) }
    }

    /// One of the hub's event loops (the current one when called on one).
    public var anyEventLoop: any EventLoop { eventLoopGroup.any() }

    /// Connections on this node.
    public var connectionCount: Int { state.withLock { $0.total } }

    /// Users with at least one connection on this node.
    public var onlineUserCount: Int { state.withLock { $0.connectionsOfUser.count } }

    /// The user's connections on this node.
    public func connectionCount(of user: String) -> Int {
        state.withLock { $0.connectionsOfUser[user] ?? 0 }
    }

    public func localConnectionCounts() -> [String: Int] {
        state.withLock { $0.connectionsOfUser }
    }

    public func localMemberships() -> [String: [String: MembershipGrant]] {
        state.withLock { $0.interest.knownMemberships }
    }

    public func localPresenceTotals() -> PresenceTotals {
        state.withLock { PresenceTotals(connections: $0.total, users: $0.connectionsOfUser.count) }
    }

    /// Closes every connection with `code` (for example 1012 on shutdown).
    public func closeAll(_ code: CloseCode, reason: String) {
        for shard in shards {
            shard.eventLoop.execute {
                shard.forEachConnection { $0.close(code, reason: reason) }
            }
        }
    }

    /// Closes every connection of `user` on this node; returns once each was told to close.
    public func disconnect(user: String, code: CloseCode, reason: String) async {
        for shard in shards {
            try? await shard.eventLoop.submit {
                shard.forEachConnection(of: user) { $0.close(code, reason: reason) }
            }.get()
        }
    }

    /// Tells every connection of this node that the credentials `ids` were revoked (those using
    /// one close). Costs one walk over the node's connections: revocations are rare, and a
    /// reload announces all it found new at once.
    public func credentialsRevoked(_ ids: Set<String>) {
        guard !ids.isEmpty else { return }
        for shard in shards {
            shard.eventLoop.execute {
                shard.forEachConnection { $0.credentialsRevoked(ids) }
            }
        }
    }

    // MARK: - Rooms

    /// Whether `user`, connected to this node, is a member of `room` (this node's copy of the
    /// roster: answers without a round trip). `false` for users not connected here.
    public func isLocalMember(user: String, room: String) -> Bool {
        state.withLock { $0.interest.isMember(user: user, room: room) }
    }

    /// Rooms with at least one member connected to this node (the room channels it needs).
    /// Bytes queued for this node's connections that their sockets have not taken yet: each
    /// event loop sums its own connections (a walk of every connection; for metrics, not for
    /// the delivery path).
    public func queuedOutboundBytes() async -> Int {
        var total = 0
        for shard in shards {
            total += (try? await shard.eventLoop.submit { shard.queuedOutboundBytes() }.get()) ?? 0
        }
        return total
    }

    public var localRoomCount: Int { state.withLock { $0.interest.localMembers.count } }

    /// Whether some connection on this node asked for presence events.
    public var hasPresenceListeners: Bool { presenceListeners.load(ordering: .relaxed) > 0 }

    /// The rooms with at least one member connected to this node that `isIncluded` accepts.
    public func localRooms(where isIncluded: (String) -> Bool) -> Set<String> {
        state.withLock { Set($0.interest.localMembers.keys.lazy.filter(isIncluded)) }
    }

    /// Who granted `user`'s membership of `room`, as this node knows it (it knows the users
    /// connected here); `nil` when the user is not a member.
    public func grant(user: String, room: String) -> MembershipGrant? {
        state.withLock { $0.interest.grant(user: user, room: room) }
    }

    public func membershipChanged(_ change: MembershipChange) -> EventLoopFuture<Void> {
        let cluster = wiring
        let loop = anyEventLoop
        return state.withLock { state in
            let (interest, grantsChanged) = state.interest.apply(change)
            if grantsChanged { scheduleReview(of: change.user) }
            return interest.isEmpty ? loop.makeSucceededVoidFuture() : cluster.broker.changeInterest(interest, on: loop)
        }
    }

    /// Asks `connection` again which of its user's own rooms it must not receive (its token
    /// changed). Call on the connection's event loop; applies from the next delivery on.
    public func review(_ connection: any ClientConnection) {
        connection.eventLoop.assertInEventLoop()
        let joined = state.withLock { $0.interest.roomsJoinedByUser(connection.user) }
        shard(for: connection.eventLoop).review(connection, joinedByUser: joined)
    }

    /// Queues a review of the user's connections on every loop. Called under the state lock:
    /// a delivery whose member snapshot already holds the change is queued after the review,
    /// so no connection receives a room its token does not allow.
    private func scheduleReview(of user: String) {
        for shard in shards {
            shard.eventLoop.execute { [self] in
                let joined = state.withLock { $0.interest.roomsJoinedByUser(user) }
                shard.review(user: user, joinedByUser: joined)
            }
        }
    }

    // MARK: - Delivery

    /// Delivers an envelope from the broker to the local connections it targets.
    ///
    /// Never blocks and never waits for a recipient: the frame goes to each event loop with one
    /// `execute`.
    public func deliver(_ envelope: Envelope) {
        statistics.messagesDelivered.add(1, ordering: .relaxed)
        if metrics.isEnabled { metrics.recordPublishLatency(ofMessage: envelope.frame) }
        var members: Set<String>?
        if case .room(let room) = envelope.target {
            guard let snapshot = state.withLock({ $0.interest.localMembers[room] }) else { return }
            members = snapshot
        }
        // Stamped with its position once per message on this node, framed once: every recipient
        // gets the same bytes.
        let frame = framing(envelope.deliveredFrame)
        let target = envelope.target
        let position = envelope.position
        let statistics = self.statistics
        // Always through the loop's task queue, even from the loop itself: delivering inline
        // would overtake deliveries other threads queued a moment before, and a channel's
        // messages must reach each connection in the order the broker handed them over.
        for shard in shards {
            shard.eventLoop.execute { [members] in
                let written = shard.deliver(frame, to: target, members: members, position: position)
                statistics.recordWritten(written, to: target)
            }
        }
    }

    /// Writes a presence event to the room's members connected here that asked for presence
    /// events (framed once, the same bytes to each, through each loop's queue like a delivery).
    public func deliverPresenceEvent(_ frame: ByteBuffer, toRoom room: String) {
        guard let members = state.withLock({ $0.interest.localMembers[room] }) else { return }
        let framed = framing(frame)
        let statistics = self.statistics
        for shard in shards {
            shard.eventLoop.execute {
                let written = shard.deliverPresenceEvent(framed, toRoom: room, members: members)
                statistics.framesWritten.add(written, ordering: .relaxed)
                statistics.presenceFramesWritten.add(written, ordering: .relaxed)
            }
        }
    }

    // MARK: - Recovery

    /// Holds `connection`'s live deliveries of `target` until ``release(_:for:)``, while it
    /// replays history. Call on the connection's event loop.
    public func hold(_ target: DeliveryTarget, for connection: any ClientConnection, limit: Int = 10_000) -> DeliveryHold {
        shard(for: connection.eventLoop).hold(target, for: connection, limit: limit)
    }

    /// Ends a hold; write `hold.held` (past what history gave) to the connection next. Call on
    /// the connection's event loop.
    public func release(_ hold: DeliveryHold, for connection: any ClientConnection) {
        shard(for: connection.eventLoop).release(hold, for: connection)
    }

    /// A frame as the transport sends it (for history replayed to one connection).
    public func framed(_ frame: ByteBuffer) -> ByteBuffer { framing(frame) }

    // MARK: - Service

    /// Runs the heartbeat on every loop until graceful shutdown or cancellation.
    ///
    /// Every connection is pinged once per interval, but not all at once: the interval is cut
    /// into up to 25 slices and each connection pings in its own (pinging 10,000 connections
    /// in one go held a loop's deliveries back for tens of milliseconds).
    public func run() async throws {
        let interval = configuration.heartbeat
        let slices = max(1, min(25, Int(interval.nanoseconds / 100_000_000)))
        let tick = TimeAmount.nanoseconds(interval.nanoseconds / Int64(slices))
        let tasks = shards.map { shard in
            shard.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
                shard.heartbeatTick(slices: slices, period: tick, allowedLag: max(tick, .seconds(1)))
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
