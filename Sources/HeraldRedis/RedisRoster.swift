public import Herald
import HeraldRedisClient
public import HeraldWire
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// The `Roster` of a cluster sharing one Redis: memberships in Redis sets, presence in one
/// expiring hash per node, changes announced on the user's channel.
///
/// A join or leave is one Lua script that checks the limits, changes the sets and publishes the
/// change on the user's channel in one atomic step, so every node hears the changes of one
/// user in the order they were stored. It then waits (bounded by its `confirmationTimeout`)
/// until every node holding the user's connections confirmed it applied the change. Its
/// connections are the ``RedisBackplane``'s, shared with ``RedisBroker``; it handles the
/// membership notices and the confirmations the backplane routes to it.
///
/// Presence: each node counts its connections per user in `{prefix}:presence:{node}`, and
/// keeps its entry in `{prefix}:nodes` alive with a heartbeat. A node that dies without saying
/// goodbye stops counting as online after `presenceTTL`. The scripts use keys they are not
/// passed, so this roster needs a single Redis (or a primary with replicas), not Redis Cluster.
public final class RedisRoster: Roster, Service {
    private let backplane: RedisBackplane
    /// Membership changes waiting for the nodes holding the user's connections to confirm them.
    private let acks: MembershipAcks
    private let sink: any DeliverySink
    private let limits: HubConfiguration
    private let logger: Logger
    /// How long a node's presence outlives its last heartbeat.
    public let presenceTTL: Duration
    private var layout: RedisLayout { backplane.layout }
    private var client: RedisClient { backplane.client }
    private var nodeID: String { backplane.configuration.nodeID }
    /// A presence change did not reach Redis: the next heartbeat rewrites the node's presence.
    private let presenceStale: PresenceFlag
    private let scriptsPreloaded = Atomic<Bool>(false)
    /// The value of the data set's instance key when this node last heartbeated.
    private let knownInstance = Mutex<String?>(nil)
    /// The live nodes the last presence read found: their hashes are the keys the next one
    /// declares (``evaluateOverLiveNodes(_:keyOf:users:)``).
    private let liveNodes = Mutex<[String]>([])
    /// Rooms of users whose first connection is being set up, read in batches.
    private let roomReads: BatchedReader<[String: MembershipGrant]>
    /// This node's presence changes, sent in batches.
    private let presenceChanges: DeltaBatcher

    /// - Parameters:
    ///   - backplane: the node's Redis connections and key layout, shared with the broker.
    ///   - limits: rooms per user, members per room and rooms, checked in the membership scripts.
    ///   - presenceTTL: how long a node that stopped heartbeating still counts its users online.
    ///   - confirmationTimeout: how long a membership change waits for the nodes holding the
    ///     user's connections to confirm they applied it.
    ///   - sink: this node's hub, told of every membership change of its users.
    ///   - logger: where the roster logs.
    public init(
        backplane: RedisBackplane,
        limits: HubConfiguration,
        presenceTTL: Duration = .seconds(10),
        confirmationTimeout: TimeAmount = .seconds(2),
        notifying sink: any DeliverySink,
        logger: Logger
    ) {
        self.backplane = backplane
        self.limits = limits
        self.presenceTTL = presenceTTL
        self.sink = sink
        self.logger = logger
        let acks = MembershipAcks(timeout: confirmationTimeout)
        self.acks = acks
        let client = backplane.client
        let layout = backplane.layout
        let presenceKey = layout.presenceKey(backplane.configuration.nodeID)
        let presenceVersionKeys = layout.presenceVersionKeys
        let presenceInfoKey = layout.presenceInfoKey(backplane.configuration.nodeID)
        backplane.route(
            notices: { user, payload in
                let text = String(buffer: payload)
                if let order = DisconnectNotice(payload: text) {
                    Task {
                        await sink.disconnect(user: user, code: order.code, reason: order.reason)
                        _ = client.submit(RESPCommand("PUBLISH", layout.nodeChannel(order.origin), order.token))
                    }
                    return
                }
                guard let notice = MembershipNotice(user: user, payload: text) else {
                    logger.warning("malformed membership notice ignored", metadata: ["user": "\(user)"])
                    return
                }
                sink.membershipChanged(notice.change).whenComplete { _ in
                    // Confirm even when the subscription failed: the change is applied here;
                    // the origin must not wait for a node that cannot do better.
                    _ = client.submit(RESPCommand("PUBLISH", layout.nodeChannel(notice.origin), notice.token))
                }
            },
            nodeMessages: { payload in acks.confirmed(String(buffer: payload)) }
        )
        let ttl = ByteBuffer(string: String(presenceTTL.components.seconds))
        let stale = PresenceFlag()
        self.presenceStale = stale
        self.roomReads = BatchedReader { users in
            let keys = users.flatMap { [layout.roomsOfKey($0), layout.ownJoinsKey($0)] }
            return client.evaluate(Self.roomsOfScript, keys: keys, arguments: [ByteBuffer]())
                .flatMapThrowing { reply in
                    guard case .array(let lists?) = reply, lists.count == 2 * users.count else {
                        throw RedisError.unexpectedReply("Redis answered the rooms script with \(reply)")
                    }
                    func strings(_ list: RESPValue) throws -> [String] {
                        switch list {
                        case .array(let items?), .set(let items): return items.compactMap(\.string)
                        default: throw RedisError.unexpectedReply("Redis answered the rooms script with \(list)")
                        }
                    }
                    return try stride(from: 0, to: lists.count, by: 2).map { index in
                        let own = Set(try strings(lists[index + 1]))
                        var memberships: [String: MembershipGrant] = [:]
                        for room in try strings(lists[index]) { memberships[room] = own.contains(room) ? .user : .backend }
                        return memberships
                    }
                }
        }
        self.presenceChanges = DeltaBatcher { deltas in
            var keys = [presenceKey, presenceInfoKey] + presenceVersionKeys
            var arguments = [ttl]
            keys.reserveCapacity(keys.count + deltas.count)
            arguments.reserveCapacity(1 + 2 * deltas.count)
            for (user, delta) in deltas {
                keys.append(layout.roomsOfKey(user))
                arguments += [ByteBuffer(string: user), ByteBuffer(string: String(delta))]
            }
            return client.evaluate(Self.presenceScript, keys: keys, arguments: arguments).map { _ in }.recover {
                error in
                // The next heartbeat rewrites the node's presence from the hub's counts.
                stale.value.store(true, ordering: .relaxed)
                logger.debug("presence not recorded", metadata: ["users": "\(deltas.count)", "error": "\(error)"])
            }
        }
    }

    // MARK: - Membership

    public func join(user: String, room: String, grant: MembershipGrant) async throws(HubError) -> Bool {
        try await change(
            MembershipChange(user: user, room: room, isMember: true, grant: grant),
            script: Self.joinScript,
            limits: [String(limits.maxRoomsPerUser), String(limits.maxMembersPerRoom), String(limits.maxRooms), grant == .user ? "u" : "b"]
        )
    }

    /// Seconds a leave is remembered against a write-back of lost memberships: longer than a
    /// node can take to notice Redis lost its data (its heartbeat, or its reconnect).
    static let endedMemory = 300

    public func leave(user: String, room: String) async throws(HubError) -> Bool {
        try await change(MembershipChange(user: user, room: room, isMember: false), script: Self.leaveScript, limits: [String(Self.endedMemory)])
    }

    private func change(_ change: MembershipChange, script: RedisScript, limits extra: [String]) async throws(HubError) -> Bool {
        let (token, confirmed) = acks.expect(on: MultiThreadedEventLoopGroup.singleton.any())
        let notice = MembershipNotice(origin: nodeID, token: token, change: change).encoded()
        let reply: RESPValue
        do {
            reply = try await client.evaluate(
                script,
                keys: [
                    layout.membersKey(change.room), layout.roomsOfKey(change.user), layout.roomsKey, layout.endedKey(change.user),
                    layout.ownJoinsKey(change.user),
                ] + layout.presenceVersionKeys,
                arguments: [change.user, change.room, layout.sharded ? "" : layout.channel(for: .user(change.user)), notice] + extra
            )
        } catch {
            acks.cancel(token)
            throw HubError.unavailable("Redis: \(error)")
        }
        guard case .array(let items?) = reply, items.count == 2, case .integer(let code) = items[0], case .integer(var receivers) = items[1] else {
            acks.cancel(token)
            throw HubError.unavailable("Redis answered the membership script with \(reply)")
        }
        if receivers == -1 {
            // Stored; now announced on the user's shard channel. A failure here leaves the
            // change stored but unannounced: the caller sees the error and may repeat the call
            // (a repeated leave is announced again; nodes load a user's rooms on connect).
            do {
                receivers = try await publishOnUserChannel(change.user, notice)
            } catch {
                acks.cancel(token)
                throw error
            }
        }
        switch code {
        case 1:
            acks.expectConfirmations(Int(receivers), for: token)
            if (try? await confirmed.get()) != true {
                logger.warning(
                    "not every node confirmed a membership change in time; it is stored and will apply there shortly",
                    metadata: ["user": "\(change.user)", "room": "\(change.room)"]
                )
            }
            return true
        case 0 where receivers > 0:
            // A leave Redis had nothing to remove for, announced all the same: nodes may still
            // apply the membership (Redis restarted without persistence and forgot it).
            acks.expectConfirmations(Int(receivers), for: token)
            _ = try? await confirmed.get()
            return false
        case 0:
            acks.cancel(token)
            return false
        case -1:
            acks.cancel(token)
            throw HubError.userRoomLimit(user: change.user, limit: limits.maxRoomsPerUser)
        case -2:
            acks.cancel(token)
            throw HubError.roomFull(room: change.room, limit: limits.maxMembersPerRoom)
        default:
            acks.cancel(token)
            throw HubError.roomLimit(limit: limits.maxRooms)
        }
    }

    /// Announced on the user's channel, which exactly the nodes holding the user's connections
    /// subscribe; returns once they confirmed (bounded by the confirmation timeout).
    public func disconnect(user: String, code: CloseCode, reason: String) async throws(HubError) {
        let (token, confirmed) = acks.expect(on: MultiThreadedEventLoopGroup.singleton.any())
        let notice = DisconnectNotice(origin: nodeID, token: token, code: code, reason: reason).encoded()
        let receivers: Int64
        do {
            receivers = try await publishOnUserChannel(user, notice)
        } catch {
            acks.cancel(token)
            throw error
        }
        guard receivers > 0 else {
            acks.cancel(token)
            return
        }
        acks.expectConfirmations(Int(receivers), for: token)
        if (try? await confirmed.get()) != true {
            logger.warning("not every node confirmed closing a user's connections in time", metadata: ["user": "\(user)"])
        }
    }

    /// Publishes `notice` on `user`'s channel (`SPUBLISH` where the channel lives, on a sharded
    /// cluster); returns how many nodes got it.
    private func publishOnUserChannel(_ user: String, _ notice: String) async throws(HubError) -> Int64 {
        let channel = layout.channel(for: .user(user))
        var reply: RESPValue?
        do {
            if let shards = backplane.shards {
                // Sharded, the change is already stored (a separate step): an announcement that
                // fails leaves open connections elsewhere without it, so it is tried up to three
                // times, through a failover's first moments (a notice applied twice is harmless).
                for attempt in 0..<3 where reply == nil {
                    do {
                        reply = try await shards.send(RESPCommand("SPUBLISH", channel, notice), routedBy: channel)
                    } catch {
                        if attempt == 2 { throw error }
                        try? await Task.sleep(for: .milliseconds(attempt == 0 ? 100 : 400))
                    }
                }
            } else {
                reply = try await client.send(RESPCommand("PUBLISH", channel, notice))
            }
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        guard let reply else { throw HubError.unavailable("Redis did not answer PUBLISH") }
        guard case .integer(let receivers) = reply else { throw HubError.unavailable("Redis answered PUBLISH with \(reply)") }
        return receivers
    }

    public func members(of room: String) async throws(HubError) -> Set<String> {
        try await stringSet(RESPCommand("SMEMBERS", layout.membersKey(room)))
    }

    public func rooms(of user: String) async throws(HubError) -> Set<String> {
        try await stringSet(RESPCommand("SMEMBERS", layout.roomsOfKey(user)))
    }

    /// Batched: every user whose first connection arrives while a read is at Redis is read
    /// with the next one, in one script call.
    public func memberships(of user: String, on loop: any EventLoop) -> EventLoopFuture<[String: MembershipGrant]> {
        roomReads.value(of: user, on: loop).flatMapErrorThrowing { error in
            throw error as? HubError ?? HubError.unavailable("Redis: \(error)")
        }
    }

    public func roomCount() async throws(HubError) -> Int {
        let reply = try await send(RESPCommand("SCARD", layout.roomsKey))
        guard case .integer(let count) = reply else { throw HubError.unavailable("Redis answered SCARD with \(reply)") }
        return Int(count)
    }

    // MARK: - Presence

    public func connectionCounts(of users: [String]) async throws(HubError) -> [String: Int] {
        guard !users.isEmpty else { return [:] }
        let reply: RESPValue
        do {
            reply = try await evaluateOverLiveNodes(Self.countScript, keyOf: layout.presenceKey, users: users)
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        guard case .array(let counts?) = reply, counts.count == users.count else {
            throw HubError.unavailable("Redis answered the presence script with \(reply)")
        }
        var result: [String: Int] = [:]
        for (user, count) in zip(users, counts) {
            if case .integer(let value) = count { result[user, default: 0] += Int(value) }
        }
        return result
    }

    /// Runs `script` (``countScript`` or ``infoScript``) over the live nodes' hashes, each
    /// declared as a key: the script is given the nodes the last read found live and answers
    /// with the live ones instead when they differ (a node came or went), and is run again
    /// with those. Returns the script's answer for `users`.
    private func evaluateOverLiveNodes(_ script: RedisScript, keyOf: (String) -> String, users: [String]) async throws -> RESPValue {
        var candidates = liveNodes.withLock { $0 }
        for _ in 0..<3 {
            let reply = try await client.evaluate(
                script, keys: [layout.nodesKey] + candidates.map(keyOf), arguments: [String(candidates.count)] + candidates + users)
            guard case .array(let parts?) = reply, parts.count == 2, case .integer(let complete) = parts[0] else {
                throw RedisError.unexpectedReply("Redis answered the presence script with \(reply)")
            }
            if complete == 1 { return parts[1] }
            guard case .array(let live?) = parts[1] else { throw RedisError.unexpectedReply("Redis answered the presence script with \(reply)") }
            candidates = live.compactMap(\.string)
            liveNodes.withLock { [candidates] in $0 = candidates }
        }
        throw RedisError.unexpectedReply("the live nodes changed during three presence reads in a row; try again")
    }

    /// Batched: changes made while a batch is at Redis leave together with the next one (a
    /// connect and a disconnect of one user in between cancel out).
    public func presenceChanged(user: String, delta: Int) {
        presenceChanges.add(delta, for: user)
    }

    /// Heartbeats the node's presence until graceful shutdown, then removes it. Besides every
    /// third of the presence TTL, it heartbeats as soon as the broker's command connection is
    /// back after a loss: if Redis lost its data, what this node holds is written back at once.
    public func run() async throws {
        let interval = presenceTTL / 3
        let (ticks, tick) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    tick.yield()
                    try? await Task.sleep(for: interval)
                }
            }
            group.addTask { [backplane] in
                for await _ in backplane.commandReconnects { tick.yield() }
            }
            await cancelWhenGracefulShutdown {
                for await _ in ticks { await self.heartbeat() }
            }
            group.cancelAll()
        }
        _ = try? await client.evaluate(
            Self.goodbyeScript,
            keys: [layout.nodesKey, layout.nodeTotalsKey, layout.presenceKey(nodeID), layout.presenceInfoKey(nodeID)] + layout.presenceVersionKeys,
            arguments: [nodeID]
        )
    }

    /// Written at once (not batched: a connect with info is the rare case), with the presence
    /// TTL so a node that dies leaves nothing behind.
    public func presenceInfoChanged(user: String, info: String) {
        let key = layout.presenceInfoKey(nodeID)
        _ = client.submit(RESPCommand("HSET", key, user, info))
        _ = client.submit(RESPCommand("EXPIRE", key, String(presenceTTL.components.seconds)))
    }

    public func presenceInfo(of users: [String]) async throws(HubError) -> [String: String] {
        guard !users.isEmpty else { return [:] }
        let reply: RESPValue
        do {
            reply = try await evaluateOverLiveNodes(Self.infoScript, keyOf: layout.presenceInfoKey, users: users)
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        guard case .array(let items?) = reply, items.count == users.count else {
            throw HubError.unavailable("Redis answered the presence info script with \(reply)")
        }
        var found: [String: String] = [:]
        for (user, item) in zip(users, items) {
            // Hostile until checked: only a JSON object is spliced into frames.
            if let info = item.string, info.first == "{", (try? RawJSON(validating: info)) != nil { found[user] = info }
        }
        return found
    }

    /// One script call: the rooms whose presence changed since `version`, from the change log
    /// the membership and presence scripts keep (only those rooms are read again), or "any
    /// room" when a node expired, came back or left, when the log lost entries that old, or for
    /// a version of another data set (the instance is part of the version, so a counter Redis
    /// lost and counted up again never matches one seen before). A node that died is noticed
    /// when another node's heartbeat expires it (a third of the presence TTL at most after).
    public func presenceChanges(since version: String?) async throws(HubError) -> PresenceChanges {
        let known = version.flatMap { version -> (instance: Substring, counter: Int64)? in
            guard let colon = version.lastIndex(of: ":"), let counter = Int64(version[version.index(after: colon)...]) else { return nil }
            return (version[..<colon], counter)
        }
        let reply: RESPValue
        do {
            reply = try await client.evaluate(
                Self.presenceChangesScript, keys: [layout.instanceKey] + layout.presenceVersionKeys, arguments: [String(known?.counter ?? -1)])
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        guard case .array(let parts?) = reply, parts.count >= 3, case .integer(let counter) = parts[1], case .integer(let precise) = parts[2] else {
            throw HubError.unavailable("Redis answered the presence changes script with \(reply)")
        }
        // No instance yet (before the first heartbeat): nothing to compare with.
        guard let instance = parts[0].string else { return PresenceChanges(version: "", rooms: nil) }
        let current = instance + ":" + String(counter)
        guard precise == 1, known?.instance == Substring(instance), parts.count == 4 else { return PresenceChanges(version: current, rooms: nil) }
        switch parts[3] {
        case .array(let rooms?), .set(let rooms): return PresenceChanges(version: current, rooms: Set(rooms.compactMap(\.string)))
        default: throw HubError.unavailable("Redis answered the presence changes script with \(reply)")
        }
    }

    /// Marks the node alive; when Redis lost the node's presence (restarted without
    /// persistence), writes it again from the hub's counts.
    public func heartbeat() async {
        if !scriptsPreloaded.exchange(true, ordering: .relaxed) {
            await client.preload([
                Self.joinScript, Self.leaveScript, Self.presenceScript, Self.roomsOfScript, Self.heartbeatScript, Self.rewriteScript,
                Self.presenceChangesScript,
            ])
        }
        do {
            let ttl = String(presenceTTL.components.seconds)
            let totals = sink.localPresenceTotals()
            let reply = try await client.evaluate(
                Self.heartbeatScript,
                keys: [
                    layout.nodesKey, layout.presenceKey(nodeID), layout.nodeTotalsKey, layout.instanceKey, layout.presenceInfoKey(nodeID),
                ] + layout.presenceVersionKeys,
                // A new value each time: a node that finds the key gone must not set it back to
                // the value it knew, or it would not notice.
                arguments: [nodeID, ttl, "\(totals.connections) \(totals.users)", String(UInt64.random(in: 1...UInt64.max), radix: 36)]
            )
            let stale = presenceStale.value.exchange(false, ordering: .relaxed)
            guard case .array(let parts?) = reply, parts.count == 3, let instance = parts[2].string else {
                throw RedisError.unexpectedReply("Redis answered the heartbeat script with \(reply)")
            }
            // The node was missing from the registry: Redis lost it (restarted without
            // persistence) or it expired, and its presence hash with it, even if connections
            // counted since the reconnect put a few users back in it.
            let registryLost = parts[0] == .integer(1) || parts[1] == .integer(0)
            let previous = knownInstance.withLock { $0 }
            // Remembered only once what Redis lost is written back: a failed write-back is
            // tried again at the next heartbeat.
            var current = previous == nil || previous == instance
            if !current { current = await restoreMemberships() }
            if current { knownInstance.withLock { $0 = instance } }
            guard stale || registryLost else { return }
            let counts = sink.localConnectionCounts()
            guard stale || !counts.isEmpty else { return }
            var arguments = [ttl]
            for (user, count) in counts { arguments += [user, String(count)] }
            _ = try await client.evaluate(Self.rewriteScript, keys: [layout.presenceKey(nodeID)] + layout.presenceVersionKeys, arguments: arguments)
            logger.notice("presence rewritten after Redis lost it", metadata: ["users": "\(counts.count)"])
        } catch {
            presenceStale.value.store(true, ordering: .relaxed)
            logger.warning("presence heartbeat failed", metadata: ["error": "\(error)"])
        }
    }

    public func clusterTotals() async throws(HubError) -> ClusterTotals? {
        let reply: RESPValue
        do {
            reply = try await client.evaluate(Self.totalsScript, keys: [layout.nodesKey, layout.nodeTotalsKey], arguments: [])
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        guard case .array(let parts?) = reply, parts.count == 3, case .integer(let nodes) = parts[0],
            case .integer(let connections) = parts[1], case .integer(let users) = parts[2]
        else { throw HubError.unavailable("Redis answered the totals script with \(reply)") }
        return ClusterTotals(nodes: Int(nodes), presence: PresenceTotals(connections: Int(connections), users: Int(users)))
    }

    /// Redis lost its data set (restarted without persistence, or flushed) while this node's
    /// users kept their connections, and this node kept applying their rooms: write those
    /// memberships back, and announce them on the users' channels (a connection that opened on
    /// another node meanwhile loaded no rooms), so that the roster, presence queries and every
    /// node agree with what the users receive. Memberships of users no node holds are lost
    /// (clients re-join after their welcome); those ended since (a leave or a kick, remembered
    /// for ``endedMemory`` seconds) are not brought back. Written in batches; limits are not
    /// checked (they held before). Returns whether everything was written.
    func restoreMemberships() async -> Bool {
        let memberships = sink.localMemberships()
        guard !memberships.isEmpty else { return true }
        var keys: [String] = [layout.roomsKey] + layout.presenceVersionKeys
        let fixedKeys = keys.count
        var arguments: [String] = [layout.sharded ? "" : layout.channel(for: .user(""))]
        let fixed = arguments.count
        var restored = 0
        func flush() async throws {
            guard arguments.count > fixed else { return }
            let reply = try await client.evaluate(Self.restoreScript, keys: keys, arguments: arguments)
            if case .integer(let count) = reply { restored += Int(count) }
            if case .array(let parts?) = reply, parts.count == 2, case .integer(let count) = parts[0], case .array(let pending?) = parts[1] {
                // Sharded: the script left the announcements to us (user, notice pairs).
                restored += Int(count)
                for index in stride(from: 0, to: pending.count - 1, by: 2) {
                    guard let user = pending[index].string, let notice = pending[index + 1].string else { continue }
                    _ = try await publishOnUserChannel(user, notice)
                }
            }
            keys.removeSubrange(fixedKeys...)
            arguments.removeSubrange(fixed...)
        }
        do {
            for (user, rooms) in memberships {
                arguments += [user, String(rooms.count)]
                for (room, grant) in rooms {
                    // No confirmation is awaited: the token matches no waiting change.
                    let change = MembershipChange(user: user, room: room, isMember: true, grant: grant)
                    arguments += [room, MembershipNotice(origin: nodeID, token: "restore", change: change).encoded(), grant == .user ? "u" : "b"]
                    keys += [layout.membersKey(room), layout.roomsOfKey(user), layout.endedKey(user), layout.ownJoinsKey(user)]
                }
                if arguments.count >= 3000 { try await flush() }
            }
            try await flush()
            logger.notice("memberships written back after Redis lost them", metadata: ["users": "\(memberships.count)", "memberships": "\(restored)"])
            return true
        } catch {
            logger.warning("memberships not written back after Redis lost them; trying again at the next heartbeat", metadata: ["error": "\(error)"])
            return false
        }
    }

    private func send(_ command: RESPCommand) async throws(HubError) -> RESPValue {
        do {
            return try await client.send(command)
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
    }

    private func stringSet(_ command: RESPCommand) async throws(HubError) -> Set<String> {
        let reply = try await send(command)
        switch reply {
        case .set(let items), .array(let items?): return Set(items.compactMap(\.string))
        default: throw HubError.unavailable("Redis answered \(command.arguments.first.map { String(buffer: $0) } ?? "") with \(reply)")
        }
    }

    // MARK: - Scripts

    /// Publishes the notice (ARGV[4]) on the user's channel (ARGV[3]) and returns how many
    /// nodes got it; with no channel (a sharded cluster: the user's shard channel is in another
    /// slot than the roster's keys) returns -1, and the roster publishes it next.
    static let announce = """
        local function announce()
          if ARGV[3] == '' then return -1 end
          return redis.call('PUBLISH', ARGV[3], ARGV[4])
        end

        """

    /// KEYS: members, rooms-of, rooms, the user's recently ended memberships, the user's own
    /// joins, then the presence version keys (``RedisLayout/presenceVersionKeys``: the version
    /// is raised on every change). ARGV: user, room, user channel, notice, max rooms per user, max members per room,
    /// max rooms, grant (`u` the user, `b` the backend). Returns {1, receivers} when joined (or
    /// when the backend's grant replaced the user's own), {0, 0} when already a member (not
    /// announced: clients re-join after every welcome, and nodes already apply it), {-1|-2|-3,
    /// 0} for the limit hit.
    static let joinScript = RedisScript(
        changedRooms(versionKey: 6) + announce + """
            if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
              if ARGV[8] == 'b' and redis.call('SREM', KEYS[5], ARGV[2]) == 1 then return {1, announce()} end
              return {0, 0}
            end
            redis.call('HDEL', KEYS[4], ARGV[2])
            if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then return {-1, 0} end
            local members = redis.call('SCARD', KEYS[1])
            if members >= tonumber(ARGV[6]) then return {-2, 0} end
            if members == 0 and redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {-3, 0} end
            redis.call('SADD', KEYS[1], ARGV[1])
            redis.call('SADD', KEYS[2], ARGV[2])
            redis.call('SADD', KEYS[3], ARGV[2])
            if ARGV[8] == 'u' then redis.call('SADD', KEYS[5], ARGV[2]) end
            changed(redis.call('INCR', KEYS[6]), {ARGV[2]})
            return {1, announce()}
            """
    )

    /// KEYS as for the join; ARGV: user, room, user channel, notice, seconds an ended membership
    /// is remembered. Returns {1, receivers} when left, {0, receivers} when not a member. A leave
    /// Redis had nothing to remove for is announced all the same: after Redis lost its sets (a
    /// restart without persistence) nodes still apply the membership, and a leave or a kick
    /// must still end it there. Every leave is remembered for a while, so that a node writing
    /// back what Redis lost (``restoreScript``) does not bring it back.
    static let leaveScript = RedisScript(
        changedRooms(versionKey: 6) + announce + """
            redis.call('HSET', KEYS[4], ARGV[2], 1)
            redis.call('EXPIRE', KEYS[4], ARGV[5])
            if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return {0, announce()} end
            redis.call('SREM', KEYS[2], ARGV[2])
            redis.call('SREM', KEYS[5], ARGV[2])
            if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
            changed(redis.call('INCR', KEYS[6]), {ARGV[2]})
            return {1, announce()}
            """
    )

    /// KEYS: the node's presence hash, the node's presence info, the presence version keys
    /// (``RedisLayout/presenceVersionKeys``), then each user's rooms-of key, in ARGV's order.
    /// ARGV: ttl seconds, then user, delta pairs. When a user came online or went offline on
    /// this node, raises the version and logs the user's rooms as changed; forgets the info of
    /// users gone from it.
    static let presenceScript = RedisScript(
        changedRooms(versionKey: 3) + """
            local crossed = {}
            for i = 2, #ARGV, 2 do
              local count = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
              if count <= 0 then
                redis.call('HDEL', KEYS[1], ARGV[i])
                redis.call('HDEL', KEYS[2], ARGV[i])
                crossed[#crossed + 1] = 6 + i / 2
              elseif count == tonumber(ARGV[i + 1]) then
                crossed[#crossed + 1] = 6 + i / 2
              end
            end
            if #crossed > 0 then
              local version = redis.call('INCR', KEYS[3])
              for _, key in ipairs(crossed) do changed(version, redis.call('SMEMBERS', KEYS[key])) end
            end
            if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
            return 1
            """
    )

    /// Rooms whose presence changed, by the version that changed them, are logged in a sorted
    /// set beside the version counter (``RedisLayout/presenceChangeLogKey``), kept to the last
    /// ``changeLogSize``; the floor key holds the version below which the log lost entries, and
    /// the any-change key the last version at which any room may have changed (a node expired,
    /// came back or left, or Redis lost presence). This is the Lua `changed(version, rooms)` of
    /// the scripts that log; KEYS[`versionKey`] and the three after it are
    /// ``RedisLayout/presenceVersionKeys``.
    static func changedRooms(versionKey: Int) -> String {
        """
        local function changed(version, rooms)
          for _, room in ipairs(rooms) do redis.call('ZADD', KEYS[\(versionKey + 1)], version, room) end
          if redis.call('ZCARD', KEYS[\(versionKey + 1)]) > \(changeLogSize) then
            redis.call('ZREMRANGEBYRANK', KEYS[\(versionKey + 1)], 0, -\(changeLogSize) - 1)
            local first = redis.call('ZRANGE', KEYS[\(versionKey + 1)], 0, 0, 'WITHSCORES')
            redis.call('SET', KEYS[\(versionKey + 2)], tonumber(first[2]) - 1)
          end
        end

        """
    }

    static let changeLogSize = 10_000

    /// KEYS: the instance key, the presence version keys (``RedisLayout/presenceVersionKeys``).
    /// ARGV: the version the caller saw (-1: none of this data set). Returns {instance (nil before the first heartbeat), version, then 1
    /// and the rooms changed since when the log can tell, else 0}.
    static let presenceChangesScript = RedisScript(
        """
        local instance = redis.call('GET', KEYS[1])
        local version = tonumber(redis.call('GET', KEYS[2]) or '0')
        local since = tonumber(ARGV[1])
        local all = tonumber(redis.call('GET', KEYS[5]) or '0')
        local floor = tonumber(redis.call('GET', KEYS[4]) or '0')
        if not instance or since < 0 or since > version or all > since or since < floor then return {instance, version, 0} end
        return {instance, version, 1, redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')}
        """
    )

    /// KEYS: nodes, node totals, the node's presence hash and info hash, the presence version
    /// keys (``RedisLayout/presenceVersionKeys``). ARGV: node id. A graceful exit in one step: the node's users go offline, and the nodes
    /// sending presence events hear of it.
    static let goodbyeScript = RedisScript(
        """
        redis.call('ZREM', KEYS[1], ARGV[1])
        redis.call('HDEL', KEYS[2], ARGV[1])
        redis.call('DEL', KEYS[3], KEYS[4])
        redis.call('SET', KEYS[8], redis.call('INCR', KEYS[5]))
        return 1
        """
    )

    /// KEYS: each user's rooms-of and own-joins keys, in pairs. Returns each user's rooms and
    /// own joins, in order.
    static let roomsOfScript = RedisScript(
        """
        local out = {}
        for i = 1, #KEYS do out[i] = redis.call('SMEMBERS', KEYS[i]) end
        return out
        """
    )

    /// KEYS: nodes, the node's presence hash, node totals, the instance key, the node's
    /// presence info (kept alive with its presence), the presence version keys
    /// (``RedisLayout/presenceVersionKeys``: raised when a node expired or (re)appeared). ARGV: node id, ttl
    /// seconds, the node's "CONNECTIONS USERS", an instance value to set if there is none. Uses
    /// the server's clock, so nodes' clocks need not agree. Forgets expired nodes. Returns {1
    /// when the node was not registered (Redis lost it, or it expired) else 0, the number of
    /// users in the node's hash, the instance value}.
    static let heartbeatScript = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
        for _, node in ipairs(dead) do redis.call('HDEL', KEYS[3], node) end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]) * 1000, ARGV[1])
        if #dead > 0 or added == 1 then redis.call('SET', KEYS[9], redis.call('INCR', KEYS[6])) end
        redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
        redis.call('EXPIRE', KEYS[2], ARGV[2])
        redis.call('EXPIRE', KEYS[5], ARGV[2])
        local instance = redis.call('GET', KEYS[4])
        if not instance then
          instance = ARGV[4]
          redis.call('SET', KEYS[4], instance)
        end
        return {added, redis.call('HLEN', KEYS[2]), instance}
        """
    )

    /// KEYS: nodes, node totals. Returns {live nodes, connections, users} summed over the live
    /// nodes' last reports.
    static let totalsScript = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
        local connections, users = 0, 0
        for _, node in ipairs(nodes) do
          local report = redis.call('HGET', KEYS[2], node)
          if report then
            local c, u = string.match(report, '^(%d+) (%d+)$')
            connections = connections + (tonumber(c) or 0)
            users = users + (tonumber(u) or 0)
          end
        end
        return {#nodes, connections, users}
        """
    )

    /// KEYS: rooms, the presence version keys (``RedisLayout/presenceVersionKeys``: raised
    /// when something was written), then for each membership in ARGV's order: the room's
    /// members, the user's rooms-of, ended and own-joins keys. ARGV: the user channel prefix
    /// ("" on a sharded cluster, whose user channels are in other slots: the roster announces),
    /// then for each user: user, number of rooms, then room, join notice and grant (`u` the
    /// user, `b` the backend) for each. Skips memberships ended recently; announces each one
    /// written. Returns how many.
    static let restoreScript = RedisScript(
        """
        local restored = 0
        local pending = {}
        local i = 2
        local k = 6
        while i <= #ARGV do
          local user, count = ARGV[i], tonumber(ARGV[i + 1])
          for j = i + 2, i + 1 + 3 * count, 3 do
            local room = ARGV[j]
            if redis.call('HEXISTS', KEYS[k + 2], room) == 0 then
              local added = redis.call('SADD', KEYS[k], user)
              redis.call('SADD', KEYS[k + 1], room)
              redis.call('SADD', KEYS[1], room)
              -- The user's own join, unless a membership is already back (never downgraded).
              if added == 1 and ARGV[j + 2] == 'u' then redis.call('SADD', KEYS[k + 3], room) end
              if ARGV[1] == '' then
                pending[#pending + 1] = user
                pending[#pending + 1] = ARGV[j + 1]
              else
                redis.call('PUBLISH', ARGV[1] .. user, ARGV[j + 1])
              end
              restored = restored + 1
            end
            k = k + 4
          end
          i = i + 2 + 3 * count
        end
        if restored > 0 then redis.call('SET', KEYS[5], redis.call('INCR', KEYS[2])) end
        if ARGV[1] == '' then return {restored, pending} end
        return restored
        """
    )

    /// KEYS: the node's presence hash, the presence version keys
    /// (``RedisLayout/presenceVersionKeys``). ARGV: ttl seconds, then user, count pairs.
    static let rewriteScript = RedisScript(
        """
        redis.call('SET', KEYS[5], redis.call('INCR', KEYS[2]))
        redis.call('DEL', KEYS[1])
        for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
        redis.call('EXPIRE', KEYS[1], ARGV[1])
        return 1
        """
    )

    /// Lua the scripts reading the live nodes' hashes run first. KEYS: nodes, then the hash of
    /// each node given. ARGV: how many nodes are given, the nodes, then users. Leaves in `keys`
    /// the indices in KEYS of the live nodes' hashes, and in `given` the count; answers {0,
    /// live nodes} when a live node was not given (its hash is not declared).
    static let liveNodeKeys = """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
        local given = tonumber(ARGV[1])
        local keyOf = {}
        for c = 1, given do keyOf[ARGV[1 + c]] = 1 + c end
        local keys = {}
        for _, node in ipairs(nodes) do
          if not keyOf[node] then return {0, nodes} end
          keys[#keys + 1] = keyOf[node]
        end

        """

    /// KEYS and ARGV as for ``liveNodeKeys``, with the nodes' presence info hashes. Returns {1,
    /// each user's info from the first live node that has it (false when none has)}.
    static let infoScript = RedisScript(
        liveNodeKeys + """
            local found = {}
            for i = given + 2, #ARGV do
              local info = false
              for _, k in ipairs(keys) do
                info = redis.call('HGET', KEYS[k], ARGV[i])
                if info then break end
              end
              found[#found + 1] = info
            end
            return {1, found}
            """
    )

    /// KEYS and ARGV as for ``liveNodeKeys``, with the nodes' presence hashes. Returns {1,
    /// each user's connections on the live nodes}.
    static let countScript = RedisScript(
        liveNodeKeys + """
            local counts = {}
            for i = given + 2, #ARGV do
              local total = 0
              for _, k in ipairs(keys) do
                total = total + (tonumber(redis.call('HGET', KEYS[k], ARGV[i])) or 0)
              end
              counts[#counts + 1] = total
            end
            return {1, counts}
            """
    )
}

/// Set when a presence change did not reach Redis (a class: the batcher's closure shares it).
final class PresenceFlag: Sendable {
    let value = Atomic<Bool>(false)
}
