public import Herald
import HeraldWire
public import Logging
public import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The ``Broker`` for a cluster of Herald nodes sharing one Redis: the seed's design.
///
/// A publish is one `PUBLISH` of the encoded frame to the target's channel (``RedisLayout``);
/// every node subscribed to it hands the same bytes to its hub. A broadcast costs one Redis
/// message per node, not per connection. A node subscribes to a room's or a user's channel only
/// while it has local interest (the hub says when, through ``changeInterest(_:on:)``).
///
/// Pub/sub is best-effort: while a node is disconnected from Redis it misses what is published
/// meanwhile (the reconnect is logged and counted), and publishes fail at once instead of
/// queueing. Membership and presence live in ``RedisRoster``, which shares this broker's
/// connections.
public final class RedisBroker: Broker {
    public struct Configuration: Sendable {
        public var url: RedisURL
        /// Prefix of every channel and key, so several clusters can share one Redis.
        public var prefix = "herald"
        /// This node's id (unique in the cluster).
        public var nodeID: String
        public var client = RedisClient.Configuration()
        /// How long a membership change waits for the nodes holding the user's connections to
        /// confirm they applied it.
        public var membershipConfirmationTimeout: TimeAmount = .seconds(2)
        /// History kept per room and user channel (a Redis Stream each).
        public var history = HistoryConfiguration()

        public init(url: RedisURL, nodeID: String) {
            self.url = url
            self.nodeID = nodeID
        }
    }

    public let configuration: Configuration
    public let layout: RedisLayout
    let client: RedisClient
    let subscriber: RedisSubscriber
    let acks: MembershipAcks
    let streams: StreamTracker
    private let logger: Logger
    private let counters = BrokerStatistics()
    private let interest = Mutex<PendingInterest>(PendingInterest())
    /// Unacknowledged messages of users connecting, read in batches.
    private let unacknowledgedReads: BatchedReader<[HistoryEntry]>
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>
    /// Signalled each time the command connection is back after a loss (for one consumer: the
    /// roster, which then checks at once whether Redis lost its data).
    let commandReconnects: AsyncStream<Void>
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

    public init(configuration: Configuration, deliveringTo sink: any DeliverySink, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.logger = logger
        let layout = RedisLayout(prefix: configuration.prefix)
        self.layout = layout
        let acks = MembershipAcks(timeout: configuration.membershipConfirmationTimeout)
        self.acks = acks
        let counters = self.counters
        let url = configuration.url
        let streams = StreamTracker(sink: sink)
        self.streams = streams
        let (healStream, healContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let healSignal = healContinuation
        let (reconnects, reconnected) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.commandReconnects = reconnects
        self.client = RedisClient(url: url, configuration: configuration.client, on: group) {
            logger.notice("Redis command connection re-established", metadata: ["redis": "\(url.host):\(url.port)"])
            reconnected.yield()
        }
        let client = self.client
        self.subscriber = RedisSubscriber(
            url: url,
            on: group,
            onMessage: { message in
                Self.route(message, layout: layout, sink: sink, streams: streams, acks: acks, client: client, logger: logger)
            },
            onReconnect: {
                counters.recordReconnect()
                logger.warning(
                    "Redis pub/sub connection re-established and every channel resubscribed; healing the gap from the channels' history",
                    metadata: ["redis": "\(url.host):\(url.port)"]
                )
                healSignal.yield()
            },
            onDisconnect: { streams.suspend() }
        )
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (heals, healing) = (healStream, healContinuation)
        let prefixes = [ByteBuffer(string: layout.unacknowledgedKey("")), ByteBuffer(string: layout.unacknowledgedFramesKey(""))]
        self.unacknowledgedReads = BatchedReader { users in
            client.evaluate(Self.unacknowledgedOfUsersScript, keys: [], arguments: prefixes + users.map { ByteBuffer(string: $0) })
                .flatMapThrowing { reply in
                    guard case .array(let lists?) = reply, lists.count == users.count else {
                        throw RedisError("Redis answered the unacknowledged script with \(reply)")
                    }
                    return try lists.map { list in
                        guard case .array(let items?) = list else { throw RedisError("Redis answered the unacknowledged script with \(list)") }
                        return Self.unacknowledgedEntries(items)
                    }
                }
        }
    }

    /// Connects both connections and subscribes the broadcast and node channels.
    /// - Throws: ``RedisError`` when Redis cannot be reached, with where it was looked for.
    public func connect() async throws {
        await client.preload([Self.publishScript, Self.broadcastOnceScript, Self.historyScript, Self.unacknowledgedScript, Self.unacknowledgedOfUsersScript, Self.acknowledgeScript])
        try await client.connect()
        try await subscriber.connect()
        try await subscriber.subscribe([layout.broadcastChannel, layout.nodeChannel(configuration.nodeID)])
    }

    public var statistics: BrokerStatistics.Snapshot { counters.snapshot() }

    /// Whether the command connection (the one that publishes) is up right now.
    public var isConnected: Bool { client.isConnected }

    /// Runs until graceful shutdown: keeps both connections up and applies interest changes.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.subscriber.run() }
            group.addTask { await self.applyInterestChanges() }
            group.addTask { await self.healAfterReconnects() }
            try? await gracefulShutdown()
            group.cancelAll()
            wake.finish()
            healing.finish()
        }
    }

    // MARK: - Publishing

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let channel = ByteBuffer(string: layout.channel(for: envelope.target))
        let reply: EventLoopFuture<RESPValue>
        let history = configuration.history
        let ttl = ByteBuffer(string: String(max(1, history.ttl.components.seconds)))
        let key = ByteBuffer(string: envelope.idempotencyKey ?? "")
        let keyKey = layout.idempotencyKey(envelope.target, envelope.idempotencyKey ?? "")
        if envelope.positionIndex != nil {
            // Offset, history append and publish in one atomic step on the server.
            var keys = [layout.streamKey(envelope.target), layout.historyKey(envelope.target), keyKey]
            var arguments = [channel, envelope.head, envelope.tail, ByteBuffer(string: String(history.size(for: envelope.target))), ttl, key]
            if envelope.requiresAck, case .user(let user) = envelope.target {
                keys += [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user)]
                arguments += [ByteBuffer(string: String(max(1, history.ackTTL.components.seconds))), ByteBuffer(string: String(history.maxUnacknowledged))]
            }
            reply = client.evaluate(Self.publishScript, keys: keys, arguments: arguments)
        } else if envelope.idempotencyKey != nil {
            reply = client.evaluate(Self.broadcastOnceScript, keys: [keyKey], arguments: [channel, envelope.frame, ttl])
        } else {
            reply = client.submit(RESPCommand(arguments: [Self.publishName, channel, envelope.frame]))
        }
        let counters = self.counters
        return reply.hop(to: eventLoop).flatMapErrorThrowing { error in
            counters.recordPublishFailure()
            throw BrokerError("Redis did not take the message: \(error)")
        }.map { _ in }
    }

    private static let publishName = ByteBuffer(string: "PUBLISH")

    /// `#OFFSET EPOCH\n` then the frame: what a positioned message looks like on a channel.
    static func positioned(_ payload: ByteBuffer) -> (StreamPosition, ByteBuffer)? {
        let view = payload.readableBytesView
        guard let space = view.firstIndex(of: UInt8(ascii: " ")), let newline = view.firstIndex(of: UInt8(ascii: "\n")), space < newline,
            let offset = Int64(String(decoding: view[(view.startIndex + 1)..<space], as: UTF8.self))
        else { return nil }
        let epoch = String(decoding: view[(space + 1)..<newline], as: UTF8.self)
        let frameStart = newline + 1 - view.startIndex
        guard let frame = payload.getSlice(at: payload.readerIndex + frameStart, length: payload.readableBytes - frameStart) else { return nil }
        return (StreamPosition(offset: offset, epoch: epoch), frame)
    }

    /// KEYS: the channel's stream key (a hash: epoch, offset), its history (a Redis Stream).
    /// With `ack`, KEYS[4], KEYS[5]: the user's unacknowledged set and frames; ARGV[7], ARGV[8]:
    /// how long the message waits for its acknowledgement, and how many may wait.
    /// KEYS[3]: the idempotency key's key. ARGV: channel, frame head, frame tail, history size,
    /// history TTL in seconds, idempotency key ("" for none): a key used within the TTL makes
    /// the publish a no-op (returns 0). Otherwise assigns the
    /// next offset (a new epoch when the channel has none), appends the positioned frame to the
    /// history, publishes it with a `#OFFSET EPOCH` header line; returns the offset.
    static let publishScript = RedisScript(
        """
        if ARGV[6] ~= '' and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then return 0 end
        local epoch = redis.call('HGET', KEYS[1], 'epoch')
        local time = redis.call('TIME')
        if not epoch then
          epoch = string.format('%x%x', tonumber(time[1]), tonumber(time[2]))
          redis.call('HSET', KEYS[1], 'epoch', epoch)
        end
        local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
        local frame = ARGV[2] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"' .. ARGV[3]
        if tonumber(ARGV[4]) > 0 then
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], offset .. '-1', 't', time[1], 'f', frame)
          redis.call('EXPIRE', KEYS[2], ARGV[5])
        end
        redis.call('EXPIRE', KEYS[1], ARGV[5])
        if ARGV[7] then
          local member = epoch .. ':' .. offset
          local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
          redis.call('ZADD', KEYS[4], now + tonumber(ARGV[7]) * 1000, member)
          redis.call('HSET', KEYS[5], member, frame)
          if redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[8]) then
            local oldest = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
            redis.call('ZREM', KEYS[4], oldest)
            redis.call('HDEL', KEYS[5], oldest)
          end
          redis.call('EXPIRE', KEYS[4], ARGV[7])
          redis.call('EXPIRE', KEYS[5], ARGV[7])
        end
        redis.call('PUBLISH', ARGV[1], '#' .. offset .. ' ' .. epoch .. '\\n' .. frame)
        return offset
        """
    )

    /// KEYS: the idempotency key's key. ARGV: channel, frame, TTL in seconds. Publishes a
    /// broadcast unless the key was used within the TTL.
    static let broadcastOnceScript = RedisScript(
        """
        if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
        return redis.call('PUBLISH', ARGV[1], ARGV[2])
        """
    )

    /// KEYS as for publishing. ARGV: first stream id wanted, count, history TTL in seconds.
    /// Returns {epoch, latest offset, oldest offset kept, entries}; entries older than the TTL
    /// count as gone. A channel without a stream answers an epoch of "" and offset 0.
    static let historyScript = RedisScript(
        """
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
        if tonumber(ARGV[2]) > 0 then
          for _, entry in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])) do
            if tonumber(entry[2][2]) >= horizon then entries[#entries + 1] = entry end
          end
        end
        return {epoch, latest, oldest, entries}
        """
    )

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
            do {
                try await subscriber.subscribe(subscribe)
                try await subscriber.unsubscribe(unsubscribe)
                for waiter in batch.waiters { waiter.succeed() }
            for channel in unsubscribe {
                if case .target(let target)? = layout.destination(of: channel) { streams.forget(target) }
            }
            } catch {
                logger.error("Redis did not confirm a subscription change", metadata: ["error": "\(error)"])
                for waiter in batch.waiters { waiter.fail(error) }
            }
        }
    }

    // MARK: - Acknowledgements

    public func unacknowledged(for user: String) async throws(BrokerError) -> [HistoryEntry] {
        let reply: RESPValue
        do {
            reply = try await client.evaluate(Self.unacknowledgedScript, keys: [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user)], arguments: [])
        } catch {
            throw BrokerError("cannot read unacknowledged messages from Redis: \(error)")
        }
        guard case .array(let items?) = reply else { throw BrokerError("Redis answered the unacknowledged script with \(reply)") }
        return Self.unacknowledgedEntries(items)
    }

    /// Batched: every user connecting while a read is at Redis is read with the next one.
    public func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]> {
        unacknowledgedReads.value(of: user, on: loop).flatMapErrorThrowing { error in
            throw BrokerError("cannot read unacknowledged messages from Redis: \(error)")
        }
    }

    /// `{{EPOCH:OFFSET, frame}, ...}` as the unacknowledged scripts answer it.
    static func unacknowledgedEntries(_ items: [RESPValue]) -> [HistoryEntry] {
        items.compactMap { item in
            guard case .array(let pair?) = item, pair.count == 2, let member = pair[0].string,
                let offset = member.split(separator: ":").last.flatMap({ Int64($0) }), case .bulkString(let frame?) = pair[1]
            else { return nil }
            return HistoryEntry(offset: offset, frame: frame)
        }
    }

    public func acknowledge(user: String, offset: Int64, epoch: String?) async throws(BrokerError) {
        do {
            _ = try await client.evaluate(
                Self.acknowledgeScript,
                keys: [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user), layout.streamKey(.user(user))],
                arguments: [String(offset), epoch ?? ""]
            )
        } catch {
            throw BrokerError("cannot record the acknowledgement in Redis: \(error)")
        }
    }

    /// KEYS: the user's unacknowledged set and frames. Drops expired ones; returns
    /// {{EPOCH:OFFSET, frame}, ...}, oldest first.
    static let unacknowledgedScript = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do redis.call('HDEL', KEYS[2], member) end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local out = {}
        for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
          local frame = redis.call('HGET', KEYS[2], member)
          if frame then out[#out + 1] = {member, frame} end
        end
        return out
        """
    )

    /// ARGV: the unacknowledged set and frames key prefixes, then users. Answers
    /// ``unacknowledgedScript`` for each user, in order (the keys are not declared: the broker's
    /// roster needs a single Redis anyway). Users with nothing waiting cost one ZCARD.
    static let unacknowledgedOfUsersScript = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local lists = {}
        for i = 3, #ARGV do
          local set, frames = ARGV[1] .. ARGV[i], ARGV[2] .. ARGV[i]
          local out = {}
          if redis.call('ZCARD', set) > 0 then
            for _, member in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', now)) do redis.call('HDEL', frames, member) end
            redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
            for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
              local frame = redis.call('HGET', frames, member)
              if frame then out[#out + 1] = {member, frame} end
            end
          end
          lists[#lists + 1] = out
        end
        return lists
        """
    )

    /// KEYS: the user's unacknowledged set and frames, the user channel's stream key. ARGV:
    /// offset, epoch ("" for the channel's current one).
    static let acknowledgeScript = RedisScript(
        """
        local epoch = ARGV[2]
        if epoch == '' then epoch = redis.call('HGET', KEYS[3], 'epoch') or '' end
        local member = epoch .. ':' .. ARGV[1]
        redis.call('HDEL', KEYS[2], member)
        return redis.call('ZREM', KEYS[1], member)
        """
    )

    // MARK: - History

    public func history(of target: DeliveryTarget, since: Int64, limit: Int) async throws(BrokerError) -> HistoryPage {
        let reply: RESPValue
        do {
            reply = try await client.evaluate(
                Self.historyScript,
                keys: [layout.streamKey(target), layout.historyKey(target)],
                arguments: [String(since + 1) + "-0", String(max(0, limit)), String(max(1, configuration.history.ttl.components.seconds))]
            )
        } catch {
            throw BrokerError("cannot read the history from Redis: \(error)")
        }
        guard let page = Self.page(reply) else { throw BrokerError("Redis answered the history script with \(reply)") }
        return page
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
            var index = 0
            while index + 1 < fields.count {
                if fields[index].string == "f", case .bulkString(let bytes?) = fields[index + 1] { frame = bytes }
                index += 2
            }
            guard let frame else { return nil }
            entries.append(HistoryEntry(offset: offset, frame: frame))
        }
        return HistoryPage(latest: StreamPosition(offset: latest, epoch: epoch), entries: entries, oldest: oldest)
    }

    /// After each pub/sub reconnect, reads every suspended channel's history since the last
    /// message this node delivered, and delivers what it missed before carrying on live.
    private func healAfterReconnects() async {
        for await _ in heals {
            var delivered = 0
            var lost = 0
            for (target, position) in streams.suspended() {
                var page: HistoryPage?
                if let position {
                    let limit = max(configuration.history.size, 1)
                    for attempt in 0..<5 where page == nil {
                        page = try? await history(of: target, since: position.offset, limit: limit)
                        // A new epoch (Redis lost the channel, or it idled past its history): all
                        // of the new epoch was published during the gap; read it from its start.
                        if let current = page, current.latest.epoch != position.epoch, current.latest.offset > 0 {
                            page = try? await history(of: target, since: 0, limit: limit)
                        }
                        if page == nil, attempt < 4 { try? await Task.sleep(for: .milliseconds(200)) }
                    }
                }
                let outcome = streams.heal(target, with: page)
                delivered += outcome.delivered
                lost += outcome.lost
                if outcome.epochChanged {
                    logger.warning(
                        "a channel's history was lost in Redis (new epoch): what was published before the new epoch began cannot be recovered",
                        metadata: ["channel": "\(target)", "recovered": "\(outcome.delivered)"]
                    )
                }
            }
            if lost > 0 { counters.recordHealingLoss(lost) }
            logger.notice("healed the pub/sub gap from history", metadata: ["recovered": "\(delivered)", "lost": "\(lost)"])
        }
    }

    // MARK: - Receiving

    private static func route(
        _ message: RedisMessage,
        layout: RedisLayout,
        sink: any DeliverySink,
        streams: StreamTracker,
        acks: MembershipAcks,
        client: RedisClient,
        logger: Logger
    ) {
        switch layout.destination(of: message.channel) {
        case .target(let target)?:
            if case .user(let user) = target, message.payload.readableBytesView.first == UInt8(ascii: "!") {
                guard let notice = MembershipNotice(user: user, payload: String(buffer: message.payload)) else {
                    logger.warning("malformed membership notice ignored", metadata: ["channel": "\(message.channel)"])
                    return
                }
                sink.membershipChanged(notice.change).whenComplete { _ in
                    // Confirm even when the subscription failed: the change is applied here;
                    // the origin must not wait for a node that cannot do better.
                    _ = client.submit(RESPCommand("PUBLISH", layout.nodeChannel(notice.origin), notice.token))
                }
                return
            }
            if message.payload.readableBytesView.first == UInt8(ascii: "#") {
                guard let (position, frame) = Self.positioned(message.payload) else {
                    logger.warning("malformed message header ignored", metadata: ["channel": "\(message.channel)"])
                    return
                }
                streams.received(Envelope(target: target, frame: frame, position: position))
                return
            }
            sink.deliver(Envelope(target: target, frame: message.payload))
        case .node?:
            acks.confirmed(String(buffer: message.payload))
        case nil:
            break
        }
    }
}
