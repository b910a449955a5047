public import Herald
import HeraldRedisClient
import HeraldWire
public import Logging
public import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The `Broker` for a cluster of Herald nodes sharing one Redis: the seed's design.
///
/// A publish is one script call: it assigns the channel's next offset, appends the frame to the
/// channel's history and `PUBLISH`es it to the target's channel (``RedisLayout``) with a
/// `#OFFSET EPOCH INDEX` header line, in one atomic step; every node subscribed to the channel
/// stamps the position into the frame once and hands the same bytes to its hub. The frame is
/// opaque to Redis: no script builds or edits JSON. A broadcast costs one Redis message per node,
/// not per connection. A node subscribes to a room's or a user's channel only while it has local
/// interest (the hub says when, through ``changeInterest(_:on:)``).
///
/// Pub/sub is best-effort: while a node is disconnected from Redis it misses what is published
/// meanwhile; when it is back it heals every channel from its history (or counts what was lost),
/// and publishes fail at once instead of queueing meanwhile. The connections are the
/// ``RedisBackplane``'s, shared with ``RedisRoster``.
public final class RedisBroker: Broker {
    public struct Configuration: Sendable {
        /// History kept per room and user channel (a Redis Stream each).
        public var history = HistoryConfiguration()

        public init() {}
    }

    public let configuration: Configuration
    public let backplane: RedisBackplane
    public var layout: RedisLayout { backplane.layout }
    var client: RedisClient { backplane.client }
    let streams: StreamTracker
    private let logger: Logger
    private let counters = BrokerStatistics()
    /// Cleared while the pub/sub connection is lost, set again once every channel is resubscribed.
    private let subscribed = SubscriptionFlag()
    private let interest = Mutex<PendingInterest>(PendingInterest())
    private let redisAcknowledgements: RedisAcknowledgementStore
    public var acknowledgements: any AcknowledgementStore { redisAcknowledgements }
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>
    /// Signalled after each pub/sub reconnect: heal every channel from its history.
    private let healing: AsyncStream<Void>.Continuation
    private let heals: AsyncStream<Void>

    /// Channel changes not yet sent to Redis: the last wish per channel wins, so a burst of
    /// connects and disconnects costs one SUBSCRIBE and one UNSUBSCRIBE. Bounded by the
    /// number of distinct channels the node has had interest in since the last batch.
    struct PendingInterest {
        var wanted: [String: Bool] = [:]
        var waiters: [EventLoopPromise<Void>] = []
    }

    public init(configuration: Configuration = .init(), backplane: RedisBackplane, deliveringTo sink: any DeliverySink, logger: Logger) {
        self.configuration = configuration
        self.backplane = backplane
        self.logger = logger
        let counters = self.counters
        let subscribed = self.subscribed
        let url = backplane.url
        let streams = StreamTracker(sink: sink)
        self.streams = streams
        self.redisAcknowledgements = RedisAcknowledgementStore(backplane: backplane)
        let (healStream, healContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (heals, healing) = (healStream, healContinuation)
        backplane.route(
            messages: { target, payload in
                Self.route(payload, to: target, sink: sink, streams: streams, logger: logger)
            },
            lost: {
                subscribed.value.store(false, ordering: .relaxed)
                streams.suspend()
            },
            lostChannels: { targets in
                // One shard of a sharded cluster: only its channels wait for healing.
                subscribed.value.store(false, ordering: .relaxed)
                streams.suspend(targets)
            },
            back: {
                subscribed.value.store(true, ordering: .relaxed)
                streams.resubscribed()
                counters.recordReconnect()
                logger.warning(
                    "Redis pub/sub connection re-established and every channel resubscribed; healing the gap from the channels' history",
                    metadata: ["redis": "\(url.location)"]
                )
                healContinuation.yield()
            }
        )
    }

    /// Loads the broker's scripts on every connection of the backplane's client, and has each
    /// new connection store which server it reached (``RedisLayout/serverKey``) before it publishes.
    public func connect() async {
        let scripts =
            [Self.publishScript, Self.shardedPublishScript, Self.broadcastOnceScript, Self.historyScript, Self.positionScript]
            + RedisAcknowledgementStore.scripts
        await client.preload(scripts)
        let (layout, url, group, logger) = (layout, backplane.url, backplane.group, logger)
        do {
            try await client.prepareEachConnection { connection in
                try await Self.claimServer(on: connection, layout: layout, url: url, group: group, logger: logger)
            }
        } catch {
            logger.warning("cannot record the Redis server's identity; reconnecting", metadata: ["error": "\(error)"])
        }
        guard let shards = backplane.shards else { return }
        // Sharded: each master's connections learn which server they reached, and claim each
        // slot (``RedisLayout/serverKeys(forSlot:)``) before their first command for it.
        await shards.preload(scripts)
        do {
            try await shards.prepareEachConnection { connection in
                do {
                    let identity = try await ServerIdentity.of(connection)
                    connection.notes.values.withLock {
                        $0["server"] = identity.name
                        $0["promoted"] = identity.wasPromoted ? "1" : "0"
                    }
                } catch let error as RedisError where error.serverCode == "NOPERM" {
                    logger.warning(
                        "this Redis user may not run INFO: Herald cannot tell a failed-over or restarted Redis from the one before, and channels will not start new epochs after one (allow +info)",
                        metadata: ["error": "\(error)"])
                }
            }
        } catch {
            logger.warning("cannot record a Redis master's identity; reconnecting", metadata: ["error": "\(error)"])
        }
        shards.setSlotPreparation { [weak shards] slot, connection in
            guard let shards else { return [] }
            return Self.claimSlot(slot, on: connection, among: shards.connections, layout: layout)
        }
    }

    /// The claim of `slot` by the server `connection` reached (``claimServerScript`` with the
    /// slot's keys), with the names of the other masters' servers this node is connected to
    /// (masters still up).
    static func claimSlot(_ slot: Int, on connection: RedisConnection, among connections: [RedisConnection], layout: RedisLayout) -> [RESPCommand] {
        let (name, promoted) = connection.notes.values.withLock { ($0["server"], $0["promoted"] == "1") }
        guard let name else { return [] }  // no INFO permission: no claims, as unsharded
        let live = connections.compactMap { other in other === connection ? nil : other.notes.values.withLock { $0["server"] } }
        let keys = layout.serverKeys(forSlot: slot)
        let arguments = ["EVAL", claimServerScript.source, "2", keys.server, keys.lossless, name, promoted ? "0" : "1"] + live
        return [RESPCommand(arguments: arguments.map { ByteBuffer(string: $0) })]
    }

    public var statistics: BrokerStatistics.Snapshot { counters.snapshot() }

    /// Whether the command connection (the one that publishes) is up right now.
    public var isConnected: Bool { backplane.isConnected }

    public var unreadiness: String? {
        if !backplane.isConnected { return "the Redis command connection is down (reconnecting)" }
        if !subscribed.value.load(ordering: .relaxed) { return "the Redis pub/sub connection is down (reconnecting and resubscribing)" }
        return nil
    }

    /// Runs until graceful shutdown: applies interest changes and heals after reconnects.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.applyInterestChanges() }
            group.addTask { await self.healAfterReconnects() }
            try? await gracefulShutdown()
            group.cancelAll()
            wake.finish()
            healing.finish()
        }
    }

    // MARK: - Publishing

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<StreamPosition?> {
        let request = publishRequest(for: envelope)
        let reply: EventLoopFuture<RESPValue>
        if let shards = backplane.shards, envelope.target != .all {
            reply = shards.submit(pipeline: [RedisClusterClient.RoutedCommand(request.command)])[0]
        } else {
            switch request.command {
            case .command(let command): reply = client.submit(command)
            case .script(let script, let keys, let arguments): reply = client.evaluate(script, keys: keys, arguments: arguments)
            }
        }
        return finish(reply, parse: request.parse, on: eventLoop)
    }

    /// Every envelope's command in one pipelined write to Redis (one round trip; sharded, one
    /// per master), each answered on its own, in order per channel: a batch's failures are the
    /// commands' own.
    public func publish(batch envelopes: [Envelope], on eventLoop: any EventLoop) -> EventLoopFuture<[Result<StreamPosition?, any Error>]> {
        let requests = envelopes.map(publishRequest(for:))
        var replies: [EventLoopFuture<RESPValue>]
        if let shards = backplane.shards {
            let channelIndices = envelopes.indices.filter { envelopes[$0].target != .all }
            let sharedIndices = envelopes.indices.filter { envelopes[$0].target == .all }
            replies = Array(repeating: eventLoop.makeSucceededFuture(.null), count: envelopes.count)
            let routed = shards.submit(pipeline: channelIndices.map { RedisClusterClient.RoutedCommand(requests[$0].command) })
            for (index, reply) in zip(channelIndices, routed) { replies[index] = reply }
            for (index, reply) in zip(sharedIndices, client.submit(pipeline: sharedIndices.map { requests[$0].command })) { replies[index] = reply }
        } else {
            replies = client.submit(pipeline: requests.map(\.command))
        }
        let published = zip(requests, replies).map { request, reply in finish(reply, parse: request.parse, on: eventLoop) }
        return EventLoopFuture.whenAllComplete(published, on: eventLoop)
    }

    /// Runs a script of `target`'s channel where its keys are.
    private func evaluate(_ script: RedisScript, for target: DeliveryTarget, keys: [String], arguments: [String]) async throws -> RESPValue {
        if let shards = backplane.shards, target != .all { return try await shards.evaluate(script, keys: keys, arguments: arguments) }
        return try await client.evaluate(script, keys: keys, arguments: arguments)
    }

    /// What publishing `envelope` sends to Redis, and how its reply becomes a position.
    private func publishRequest(for envelope: Envelope) -> (command: PipelinedCommand, parse: @Sendable (RESPValue) throws -> StreamPosition?) {
        let channelName = layout.channel(for: envelope.target)
        let channel = ByteBuffer(string: channelName)
        let history = configuration.history
        let ttl = ByteBuffer(string: String(max(1, history.ttl.components.seconds)))
        let key = ByteBuffer(string: envelope.idempotencyKey ?? "")
        let keyKey = layout.idempotencyKey(envelope.target, envelope.idempotencyKey ?? "")
        if envelope.target != .all {
            // Offset, history append and publish in one atomic step on the server.
            let server = layout.serverKeys(for: envelope.target)
            var keys = [layout.streamKey(envelope.target), layout.historyKey(envelope.target), keyKey, server.server, server.lossless]
            var arguments = [
                envelope.frame, ByteBuffer(string: envelope.positionIndex.map(String.init) ?? ""),
                ByteBuffer(string: String(history.size(for: envelope.target))), ttl, key,
            ]
            // The shard channel is a key (routed by its slot); a plain channel is not, and
            // stays out of KEYS (a Redis ACL user's key patterns need not cover it).
            if layout.sharded { keys.append(channelName) }
            if envelope.requiresAck, case .user(let user) = envelope.target {
                keys += [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user)]
                arguments += [ByteBuffer(string: String(max(1, history.ackTTL.components.seconds))), ByteBuffer(string: String(history.maxUnacknowledged))]
            } else {
                arguments += [ByteBuffer(), ByteBuffer()]
            }
            if !layout.sharded { arguments.append(channel) }
            return (
                .script(layout.sharded ? Self.shardedPublishScript : Self.publishScript, keys: keys, arguments: arguments),
                { reply in
                    guard case .array(let parts?) = reply else { return nil }  // a duplicate: `0`
                    guard parts.count == 2, case .integer(let offset) = parts[0], let epoch = parts[1].string else {
                        throw RedisError.unexpectedReply("Redis answered the publish script with \(reply)")
                    }
                    return StreamPosition(offset: offset, epoch: epoch)
                }
            )
        } else if envelope.idempotencyKey != nil {
            return (.script(Self.broadcastOnceScript, keys: [keyKey], arguments: [channel, envelope.frame, ttl]), { _ in nil })
        } else {
            return (.command(RESPCommand(arguments: [Self.publishName, channel, envelope.frame])), { _ in nil })
        }
    }

    private func finish(
        _ reply: EventLoopFuture<RESPValue>, parse: @escaping @Sendable (RESPValue) throws -> StreamPosition?, on eventLoop: any EventLoop
    ) -> EventLoopFuture<StreamPosition?> {
        let counters = self.counters
        return reply.flatMapThrowing(parse).hop(to: eventLoop).flatMapErrorThrowing { error in
            counters.recordPublishFailure()
            throw BrokerError("Redis did not take the message: \(error)")
        }
    }

    private static let publishName = ByteBuffer(string: "PUBLISH")

    /// `#OFFSET EPOCH INDEX\n` then the frame without its position: what a positioned message
    /// looks like on a channel (`INDEX` empty for a frame delivered as it is).
    static func positioned(_ payload: ByteBuffer) -> (StreamPosition, Int?, ByteBuffer)? {
        let view = payload.readableBytesView
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let header = view[(view.startIndex + 1)..<newline].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard header.count == 2 || header.count == 3, let offset = Int64(String(decoding: header[0], as: UTF8.self)) else { return nil }
        let epoch = String(decoding: header[1], as: UTF8.self)
        var index: Int?
        if header.count == 3, !header[2].isEmpty {
            guard let parsed = Int(String(decoding: header[2], as: UTF8.self)), parsed >= 0 else { return nil }
            index = parsed
        }
        let frameStart = newline + 1 - view.startIndex
        guard let frame = payload.getSlice(at: payload.readerIndex + frameStart, length: payload.readableBytes - frameStart) else { return nil }
        if let index, index > frame.readableBytes { return nil }
        return (StreamPosition(offset: offset, epoch: epoch), index, frame)
    }

    /// KEYS: the channel's stream key (a hash: epoch, offset, server), its history (a Redis
    /// Stream), the idempotency key's key, the data set's server (``RedisLayout/serverKey``),
    /// the servers whose writes are all here (``RedisLayout/losslessServersKey``); with `ack`,
    /// KEYS[6], KEYS[7]: the user's unacknowledged set and frames. ARGV: frame (without its
    /// position), position index ("" for none), history size, history TTL in seconds,
    /// idempotency key ("" for none), how long the message waits for its acknowledgement and
    /// how many may wait ("" and "" without `ack`), the channel. (``shardedPublishScript``
    /// takes its shard channel as a key instead.)
    ///
    /// A key used within the TTL in the channel's current epoch makes the publish a no-op
    /// (returns 0): its message is in this epoch's history. A key used in an earlier epoch is
    /// not: a retry after a failover (whose first try the dying master applied, and whose key
    /// but not whose message a replica may hold) must be published in the new epoch, or it
    /// would be lost silently. Otherwise assigns the
    /// next offset (a new epoch when the channel has none), keeps the frame and its index in the
    /// history (and with `ack` in the user's unacknowledged messages, as `INDEX\nFRAME`), publishes
    /// `#OFFSET EPOCH INDEX\n` and the frame, and returns {offset, epoch}. The frame is never
    /// read or changed: the node that delivers it stamps the position in. A channel whose
    /// position was written on another Redis server than the one now holding the data set
    /// starts a new epoch (``serverCheck(_:ttl:)``).
    static let publishScript = RedisScript(publishSource("PUBLISH", channel: "ARGV[8]", acknowledgements: ("KEYS[6]", "KEYS[7]")))

    /// The publish script's source, publishing with `command` on `channel`, keeping messages
    /// waiting for acknowledgements in the keys `acknowledgements` names.
    private static func publishSource(_ command: String, channel: String, acknowledgements: (set: String, frames: String)) -> String {
        let (set, frames) = acknowledgements
        return """
            \(serverCheck(4, ttl: 4))
            local epoch = redis.call('HGET', KEYS[1], 'epoch')
            local time = redis.call('TIME')
            if not epoch then
              epoch = string.format('%x%x', tonumber(time[1]), tonumber(time[2]))
              redis.call('HSET', KEYS[1], 'epoch', epoch, 'server', server)
            end
            if ARGV[5] ~= '' then
              if redis.call('GET', KEYS[3]) == epoch then return 0 end
              redis.call('SET', KEYS[3], epoch, 'EX', ARGV[4])
            end
            local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
            if tonumber(ARGV[3]) > 0 then
              redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-1', 't', time[1], 'f', ARGV[1], 'i', ARGV[2])
              redis.call('EXPIRE', KEYS[2], ARGV[4])
            end
            redis.call('EXPIRE', KEYS[1], ARGV[4])
            if ARGV[6] ~= '' then
              local member = epoch .. ':' .. offset
              local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
              redis.call('ZADD', \(set), now + tonumber(ARGV[6]) * 1000, member)
              redis.call('HSET', \(frames), member, ARGV[2] .. '\\n' .. ARGV[1])
              if redis.call('ZCARD', \(set)) > tonumber(ARGV[7]) then
                local oldest = redis.call('ZRANGE', \(set), 0, 0)[1]
                redis.call('ZREM', \(set), oldest)
                redis.call('HDEL', \(frames), oldest)
              end
              redis.call('EXPIRE', \(set), ARGV[6])
              redis.call('EXPIRE', \(frames), ARGV[6])
            end
            redis.call('\(command)', \(channel), '#' .. offset .. ' ' .. epoch .. ' ' .. ARGV[2] .. '\\n' .. ARGV[1])
            return {offset, epoch}
            """
    }

    /// The publish script with `SPUBLISH`: on a sharded cluster a channel's messages stay in
    /// its slot's shard (its keys and its shard channel share the slot). KEYS as for
    /// ``publishScript`` with the shard channel in KEYS[6] (a key here: Redis routes it by its
    /// slot) and the acknowledgement keys after it; ARGV as for ``publishScript`` without the
    /// channel.
    static let shardedPublishScript = RedisScript(publishSource("SPUBLISH", channel: "KEYS[6]", acknowledgements: ("KEYS[7]", "KEYS[8]")))

    /// KEYS: the idempotency key's key. ARGV: channel, frame, TTL in seconds. Publishes a
    /// broadcast unless the key was used within the TTL.
    static let broadcastOnceScript = RedisScript(
        """
        if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
        return redis.call('PUBLISH', ARGV[1], ARGV[2])
        """
    )

    /// KEYS: the channel's hash, its history, the data set's server, the lossless servers. ARGV: history TTL in
    /// seconds. Returns {epoch, latest offset}, giving a channel without an epoch one (made as
    /// the publish script makes it, and kept as long as a published one: the TTL).
    static let positionScript = RedisScript(
        """
        \(serverCheck(3, ttl: 1))
        local epoch = redis.call('HGET', KEYS[1], 'epoch')
        if not epoch then
          local time = redis.call('TIME')
          epoch = string.format('%x%x', tonumber(time[1]), tonumber(time[2]))
          redis.call('HSET', KEYS[1], 'epoch', epoch, 'server', server)
          redis.call('EXPIRE', KEYS[1], ARGV[1])
        end
        return {epoch, tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')}
        """
    )

    /// KEYS: the channel's hash, its history, the data set's server, the lossless servers. ARGV: first stream id
    /// wanted, count, history TTL in seconds, the reader's epoch ("" for any: with another,
    /// no entries are read). Returns {epoch, latest offset, oldest offset kept,
    /// entries}; entries older than the TTL count as gone. A channel without a stream (or whose
    /// stream was written on another server) answers an epoch of "" and offset 0.
    static let historyScript = RedisScript(
        """
        \(serverCheck(3, ttl: 3))
        local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
        local latest = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
        local now = tonumber(redis.call('TIME')[1])
        local horizon = now - tonumber(ARGV[3])
        local oldest = latest + 1
        local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)
        for _, entry in ipairs(first) do
          local t = tonumber(entry[2][2])
          if t >= horizon then
            oldest = tonumber(string.match(entry[1], '^(%d+)'))
            break
          end
        end
        local entries = {}
        if tonumber(ARGV[2]) > 0 and (ARGV[4] == nil or ARGV[4] == '' or ARGV[4] == epoch) then
          for _, entry in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])) do
            if tonumber(entry[2][2]) >= horizon then entries[#entries + 1] = entry end
          end
        end
        return {epoch, latest, oldest, entries}
        """
    )

    /// Lua that scripts reading or writing a channel's position run first, leaving the data
    /// set's server in `server`. KEYS[1] is the channel's hash, KEYS[2] its history,
    /// KEYS[`serverKey`] the data set's server (``RedisLayout/serverKey``) and the next key the
    /// servers whose writes are all here (``RedisLayout/losslessServersKey``).
    ///
    /// Redis replicates asynchronously and persists at intervals: a promoted replica, or a
    /// server restarted from its AOF or RDB file, may lack the latest publishes. Offsets assigned
    /// there again would be offsets clients and nodes already saw, carrying other messages, and
    /// they would skip them as duplicates: a silent loss. So each channel's hash records the
    /// server it was written on (the `run_id` nodes store in the server key when they connect),
    /// and a channel written on another server starts a new epoch: the loss is visible, as
    /// `epoch_changed`: its history is dropped and it gets a new epoch at once, at offset 1, so
    /// that its first message is 2. Offset 1 stands for what may have been lost: a client
    /// positioned at offset 0 of the old epoch (it had seen nothing, and may have missed what
    /// followed) is then told `epoch_changed`, not that nothing happened (both at 0). A channel written on a server whose data moved here whole (a cluster slot
    /// migrated from a master that is still up) keeps its epoch. A hash without the field
    /// (written before this check) is adopted. `ttl` is the index of the history TTL in ARGV.
    static func serverCheck(_ serverKey: Int, ttl: Int) -> String {
        """
        local server = redis.call('GET', KEYS[\(serverKey)]) or ''
        local written = redis.call('HGET', KEYS[1], 'server')
        if written and written ~= server and redis.call('SISMEMBER', KEYS[\(serverKey + 1)], written) == 0 then
          redis.call('DEL', KEYS[2])
          local now = redis.call('TIME')
          redis.call('HSET', KEYS[1], 'epoch', string.format('%x%x', tonumber(now[1]), tonumber(now[2])), 'offset', 1, 'server', server)
          redis.call('EXPIRE', KEYS[1], ARGV[\(ttl)])
        elseif written ~= server and redis.call('EXISTS', KEYS[1]) == 1 then
          redis.call('HSET', KEYS[1], 'server', server)
        end
        """
    }

    /// KEYS: the server key and the lossless servers (the shared ones, or one slot's on a
    /// sharded cluster: ``RedisLayout/serverKeys(forSlot:)``). ARGV: this server's name
    /// (``ServerIdentity``), `1` when this server may hold data moved here whole (it was never
    /// promoted, and in one slot the node found the previous server still up as a master) else
    /// `0`, then the names of masters still up. Makes this server the data set's; a previous
    /// server among the masters still up moved its data here whole (a migration) and joins the
    /// lossless servers, whose channels keep their epochs; any other (a failover, a restart) may
    /// have had writes this one lacks and empties them, so that every channel written elsewhere
    /// starts a new epoch. The set is bounded: past 64 migrations in a row it is emptied too
    /// (channels then begin new epochs, as after a failover).
    static let claimServerScript = RedisScript(
        """
        local previous = redis.call('GET', KEYS[1])
        if previous == ARGV[1] then return 0 end
        local whole = false
        if previous and ARGV[2] == '1' then
          for i = 3, #ARGV do if ARGV[i] == previous then whole = true end end
        end
        if whole and redis.call('SCARD', KEYS[2]) < 64 then
          redis.call('SADD', KEYS[2], previous)
        else
          redis.call('DEL', KEYS[2])
        end
        redis.call('SET', KEYS[1], ARGV[1])
        return 1
        """
    )

    /// Run on each new command connection before it is used: makes the server it reached the
    /// data set's (``claimServerScript``), finding out first, in a cluster, whether the server
    /// named before is a master still up (whose data then moved here whole: a slot migration).
    ///
    /// A server is named by its `run_id` (its process) and its `master_replid` (its data's
    /// history: it changes whenever the server is promoted or resynchronised from another),
    /// so a master that failed over and later came back as master with the same process is
    /// still a new server. A Redis user not allowed `INFO` (`-@dangerous`) gets no protection:
    /// the node logs it and carries on.
    static func claimServer(on connection: RedisConnection, layout: RedisLayout, url: RedisURL, group: any EventLoopGroup, logger: Logger) async throws {
        let identity: ServerIdentity
        do {
            identity = try await ServerIdentity.of(connection)
        } catch let error as RedisError where error.serverCode == "NOPERM" {
            logger.warning(
                "this Redis user may not run INFO: Herald cannot tell a failed-over or restarted Redis from the one before, and channels will not start new epochs after one (allow +info)",
                metadata: ["error": "\(error)"])
            return
        }
        let previous = try await connection.send(RESPCommand("GET", layout.serverKey)).string ?? ""
        guard previous != identity.name else { return }
        var moved = false
        // A server promoted since it started (a replica once) may lack writes of the master it
        // replaced: never count what it holds as whole.
        if url.cluster != nil, !previous.isEmpty, !identity.wasPromoted {
            moved = await isLiveMaster(named: previous, shards: try await connection.send(RESPCommand("CLUSTER", "SHARDS")), url: url, group: group)
        }
        do {
            _ = try await connection.send(
                RESPCommand("EVAL", claimServerScript.source, "2", layout.serverKey, layout.losslessServersKey, identity.name, moved ? "1" : "0", previous))
        } catch let error as RedisError where error.serverCode == "NOREPLICAS" {
            // min-replicas-to-write with no replica: every write is refused, publishes included;
            // keep the connection for reads, and claim on the next one.
            logger.warning("Redis refuses writes (NOREPLICAS): publishes fail until a replica is back", metadata: ["error": "\(error)"])
        }
    }

    /// Who a Redis server is: its process and its data's replication history.
    struct ServerIdentity {
        var runID: String
        var replicationID: String
        var previousReplicationID: String

        var name: String { runID + ":" + replicationID }
        /// Whether the server took over from a master (its replication history has a second id).
        var wasPromoted: Bool { !previousReplicationID.isEmpty && previousReplicationID.contains { $0 != "0" } }

        static func of(_ connection: RedisConnection) async throws -> ServerIdentity {
            let server = try await connection.send(RESPCommand("INFO", "server")).string ?? ""
            let replication = try await connection.send(RESPCommand("INFO", "replication")).string ?? ""
            func field(_ name: String, in text: String) -> String? {
                text.split(whereSeparator: \.isNewline).first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)) }
            }
            guard let runID = field("run_id", in: server), let replicationID = field("master_replid", in: replication),
                runID.utf8.count <= 64, replicationID.utf8.count <= 64
            else { throw RedisError.unexpectedReply("INFO has no run_id or master_replid: not a Redis server Herald can tell apart after a failover") }
            return ServerIdentity(runID: runID, replicationID: replicationID, previousReplicationID: field("master_replid2", in: replication) ?? "")
        }
    }

    /// Whether a master of the cluster (as `shards` lists them, at most 16) is `name`: asks
    /// them all at once, within 3 s.
    static func isLiveMaster(named name: String, shards: RESPValue, url: RedisURL, group: any EventLoopGroup) async -> Bool {
        let masters = Array(RedisCluster.masters(in: shards).prefix(16))
        return await withTaskGroup(of: Bool.self) { tasks in
            for address in masters {
                tasks.addTask {
                    guard
                        let connection = try? await RedisConnection.connect(
                            to: url.server(host: address.host, port: address.port), on: group, connectTimeout: .seconds(1), commandTimeout: .seconds(1))
                    else { return false }
                    let identity = try? await ServerIdentity.of(connection)
                    await connection.close()
                    return identity?.name == name
                }
            }
            tasks.addTask {
                try? await Task.sleep(for: .seconds(3))
                return false
            }
            var answered = 0
            for await found in tasks {
                answered += 1
                if found {
                    tasks.cancelAll()
                    return true
                }
                if answered == masters.count || Task.isCancelled { break }
            }
            tasks.cancelAll()
            return false
        }
    }

    // MARK: - Interest

    public func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        interest.withLock { pending in
            for target in change.subscribe { pending.wanted[layout.channel(for: target)] = true }
            for target in change.unsubscribe { pending.wanted[layout.channel(for: target)] = false }
            pending.waiters.append(promise)
        }
        wake.yield()
        return promise.futureResult
    }

    /// One batch at a time, in order: a later change never overtakes an earlier one.
    private func applyInterestChanges() async {
        for await _ in wakes {
            let batch = interest.withLock { pending in
                defer { pending = PendingInterest() }
                return pending
            }
            let subscribe = batch.wanted.filter(\.value).map(\.key)
            let unsubscribe = batch.wanted.filter { !$0.value }.map(\.key)
            // Both halves are tried: a subscription that failed must not leave the batch's
            // unsubscriptions undone (subscribed channels nobody wants, forever).
            var failure: (any Error)?
            do { try await backplane.subscribe(subscribe) } catch { failure = error }
            do {
                try await backplane.unsubscribe(unsubscribe)
                for channel in unsubscribe {
                    if case .target(let target)? = layout.destination(of: channel) { streams.forget(target) }
                }
            } catch {
                failure = failure ?? error
            }
            if let failure {
                logger.error("Redis did not confirm a subscription change", metadata: ["error": "\(failure)"])
                for waiter in batch.waiters { waiter.fail(failure) }
            } else {
                for waiter in batch.waiters { waiter.succeed() }
            }
        }
    }

    // MARK: - History

    public func history(of target: DeliveryTarget, since: Int64, limit: Int) async throws(BrokerError) -> HistoryPage {
        try await history(of: target, since: since, limit: limit, inEpoch: "")
    }

    /// Reads no entries when the channel is in another epoch than `epoch` ("" for any).
    public func history(of target: DeliveryTarget, since: Int64, limit: Int, inEpoch epoch: String) async throws(BrokerError) -> HistoryPage {
        let reply: RESPValue
        do {
            let server = layout.serverKeys(for: target)
            reply = try await evaluate(
                Self.historyScript, for: target,
                keys: [layout.streamKey(target), layout.historyKey(target), server.server, server.lossless],
                arguments: [String(since + 1) + "-0", String(max(0, limit)), String(max(1, configuration.history.ttl.components.seconds)), epoch]
            )
        } catch {
            throw BrokerError("cannot read the history from Redis: \(error)")
        }
        guard let page = Self.page(reply) else { throw BrokerError("Redis answered the history script with \(reply)") }
        return page
    }

    public func position(of target: DeliveryTarget) async throws(BrokerError) -> StreamPosition {
        let reply: RESPValue
        do {
            let server = layout.serverKeys(for: target)
            reply = try await evaluate(
                Self.positionScript, for: target, keys: [layout.streamKey(target), layout.historyKey(target), server.server, server.lossless],
                arguments: [String(max(1, configuration.history.ttl.components.seconds))])
        } catch {
            throw BrokerError("cannot read the channel's position from Redis: \(error)")
        }
        guard case .array(let parts?) = reply, parts.count == 2, let epoch = parts[0].string, case .integer(let offset) = parts[1], offset >= 0 else {
            throw BrokerError("Redis answered the position script with \(reply)")
        }
        return StreamPosition(offset: offset, epoch: epoch)
    }

    /// `{epoch, latest, oldest, {{id, {field, value, ...}}, ...}}` from the history script.
    static func page(_ reply: RESPValue) -> HistoryPage? {
        guard case .array(let parts?) = reply, parts.count == 4, let epoch = parts[0].string,
            case .integer(let latest) = parts[1], case .integer(let oldest) = parts[2], case .array(let items?) = parts[3]
        else { return nil }
        var entries: [HistoryEntry] = []
        entries.reserveCapacity(items.count)
        for item in items {
            guard case .array(let pair?) = item, pair.count == 2, let id = pair[0].string,
                let offset = Int64(id.prefix { $0 != "-" }), case .array(let fields?) = pair[1]
            else { return nil }
            var frame: ByteBuffer?
            var positionIndex: Int?
            var field = 0
            while field + 1 < fields.count {
                switch fields[field].string {
                case "f": if case .bulkString(let bytes?) = fields[field + 1] { frame = bytes }
                case "i": positionIndex = fields[field + 1].string.flatMap { Int($0) }
                default: break
                }
                field += 2
            }
            // Entries written before positions were stamped by nodes have no index: whole frames.
            guard let frame, (positionIndex ?? 0) <= frame.readableBytes else { return nil }
            entries.append(HistoryEntry(position: StreamPosition(offset: offset, epoch: epoch), body: frame, positionIndex: positionIndex))
        }
        return HistoryPage(latest: StreamPosition(offset: latest, epoch: epoch), entries: entries, oldest: oldest)
    }

    /// After each pub/sub reconnect, reads every suspended channel's history since the last
    /// message this node delivered, and delivers what it missed before carrying on live.
    private func healAfterReconnects() async {
        for await _ in heals {
            var delivered = 0
            var lost = 0
            // The pub/sub connection may be back before the command connection that reads the
            // history (after a failover each reconnects on its own schedule): wait for it, bounded.
            let deadline = ContinuousClock.now + Self.healingWait
            while !backplane.isConnected, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
            var unreadable = 0
            for (target, position, lostAt) in streams.suspended() {
                var page: HistoryPage?
                if let position {
                    let limit = max(configuration.history.size, 1)
                    for attempt in 0..<5 where page == nil {
                        page = try? await history(of: target, since: position.offset, limit: limit, inEpoch: position.epoch)
                        // A new epoch (Redis lost the channel, or it idled past its history): all
                        // of the new epoch was published during the gap; read it from its start.
                        if let current = page, current.latest.epoch != position.epoch, current.latest.offset > 0 {
                            page = try? await history(of: target, since: 0, limit: limit)
                        }
                        if page == nil, attempt < 4 { try? await Task.sleep(for: .milliseconds(200)) }
                    }
                }
                if position != nil, page == nil {
                    // What was published during the gap cannot be known: count it as lost (one
                    // message at least), never as nothing.
                    unreadable += 1
                    lost += 1
                }
                let outcome = streams.heal(target, with: page, lostAt: lostAt)
                delivered += outcome.delivered
                lost += outcome.lost
                if outcome.epochChanged {
                    logger.warning(
                        "a channel's history was lost in Redis (new epoch): what was published before the new epoch began cannot be recovered",
                        metadata: ["channel": "\(target)", "recovered": "\(outcome.delivered)"]
                    )
                }
            }
            if unreadable > 0 {
                logger.warning(
                    "could not read the history of channels to heal the pub/sub gap: messages published during the gap may be missing on this node",
                    metadata: ["channels": "\(unreadable)"]
                )
            }
            if lost > 0 { counters.recordHealingLoss(lost) }
            logger.notice("healed the pub/sub gap from history", metadata: ["recovered": "\(delivered)", "lost": "\(lost)"])
        }
    }

    /// How long healing waits for the command connection to be back before reading history.
    static let healingWait: Duration = .seconds(15)

    // MARK: - Receiving

    /// A message from a room, user or broadcast channel: positioned ones go through the stream
    /// tracker (ordering, gap detection), broadcasts straight to the hub.
    private static func route(_ payload: ByteBuffer, to target: DeliveryTarget, sink: any DeliverySink, streams: StreamTracker, logger: Logger) {
        if payload.readableBytesView.first == UInt8(ascii: "#") {
            guard let (position, index, frame) = Self.positioned(payload) else {
                logger.warning("malformed message header ignored", metadata: ["channel": "\(target)"])
                return
            }
            streams.received(Envelope(target: target, frame: frame, positionIndex: index, position: position))
            return
        }
        sink.deliver(Envelope(target: target, frame: payload))
    }
}

/// Whether the pub/sub connection has every channel subscribed (shared with the backplane's callbacks).
final class SubscriptionFlag: Sendable {
    let value = Atomic<Bool>(true)
}
