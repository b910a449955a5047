import DequeModule
public import NIOCore
import NIOPosix
public import Synchronization

/// One connection to a Redis server, with any number of commands in flight (pipelining):
/// replies are matched to commands in order. RESP3 (`HELLO 3`) when the server speaks it,
/// RESP2 otherwise; `AUTH` and `SELECT` from the URL.
///
/// RESP3 pushes (pub/sub messages) never complete a command: they go to `onPush`.
public final class RedisConnection: Sendable {
    public let url: RedisURL
    /// 3 after a successful `HELLO 3`, else 2.
    public let protocolVersion: Int
    private let channel: any Channel
    /// What the connection's owner learnt about it or did on it (the server's name, the
    /// cluster slots it prepared), kept as long as the connection.
    public let notes = ConnectionNotes()

    private init(url: RedisURL, protocolVersion: Int, channel: any Channel) {
        self.url = url
        self.protocolVersion = protocolVersion
        self.channel = channel
    }

    /// Connects, negotiates the protocol, logs in and selects the database. With a Sentinel URL,
    /// connects to the master the sentinels name (``RedisSentinel``); the connection's `url` is
    /// then the master's.
    /// - Parameters:
    ///   - url: where Redis is, with credentials and database.
    ///   - group: the event loops the connection runs on.
    ///   - connectTimeout: how long the TCP connect may take.
    ///   - commandTimeout: a reply slower than this closes the connection and fails every
    ///     command in flight (a paused or overloaded server must not hold callers, or their
    ///     memory, forever). `nil` waits without bound (for blocking commands).
    ///   - onPush: receives out-of-band RESP3 pushes, on the connection's event loop.
    public static func connect(
        to url: RedisURL,
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: TimeAmount = .seconds(5),
        commandTimeout: TimeAmount? = .seconds(5),
        onPush: @escaping @Sendable (RESPValue) -> Void = { _ in }
    ) async throws -> RedisConnection {
        if let cluster = url.cluster {
            return try await RedisCluster.connectToMaster(
                url, in: cluster, on: group, connectTimeout: connectTimeout, commandTimeout: commandTimeout, onPush: onPush)
        }
        if let sentinel = url.sentinel {
            return try await RedisSentinel.connectToMaster(
                url, through: sentinel, on: group, connectTimeout: connectTimeout, commandTimeout: commandTimeout, onPush: onPush)
        }
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(connectTimeout)
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let progress = ReadProgress()
                        try channel.pipeline.syncOperations.addHandler(ReadProgressHandler(progress))
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                        try channel.pipeline.syncOperations.addHandler(
                            RedisCommandHandler(commandTimeout: commandTimeout, progress: progress, onPush: onPush))
                    }
                }
                .connect(host: url.host, port: url.port).get()
        } catch {
            throw RedisError.transport("cannot connect to Redis at \(url.host):\(url.port): \(error)")
        }
        var hello = ["HELLO", "3"]
        if let password = url.password { hello += ["AUTH", url.user ?? "default", password] }
        let probe = RedisConnection(url: url, protocolVersion: 2, channel: channel)
        var version = 3
        do {
            _ = try await probe.send(RESPCommand(arguments: hello.map { ByteBuffer(string: $0) }))
        } catch RedisError.server(let code, let message) where code == "NOPROTO" || message.contains("unknown command") {
            // A server before Redis 6: stay on RESP2 and log in the old way.
            version = 2
            if let password = url.password {
                let auth = url.user.map { ["AUTH", $0, password] } ?? ["AUTH", password]
                do {
                    _ = try await probe.send(RESPCommand(arguments: auth.map { ByteBuffer(string: $0) }))
                } catch {
                    try? await channel.close()
                    throw error
                }
            }
        } catch {
            try? await channel.close()
            throw error
        }
        let connection = RedisConnection(url: url, protocolVersion: version, channel: channel)
        if url.database != 0 {
            do {
                _ = try await connection.send(RESPCommand("SELECT", String(url.database)))
            } catch {
                try? await channel.close()
                throw RedisError.invalidConfiguration("cannot select database \(url.database): \(error)")
            }
        }
        return connection
    }

    /// Connects to `master`, named master by a sentinel or a cluster node, and checks with
    /// `ROLE` that it is one (whoever named it may not have noticed a failover yet).
    /// - Parameter namedBy: who named it, for the error (`Sentinel named HOST:PORT the master M`).
    static func connect(
        toMaster master: RedisURL,
        on group: any EventLoopGroup,
        connectTimeout: TimeAmount,
        commandTimeout: TimeAmount?,
        onPush: @escaping @Sendable (RESPValue) -> Void,
        namedBy: String
    ) async throws -> RedisConnection {
        let connection = try await connect(to: master, on: group, connectTimeout: connectTimeout, commandTimeout: commandTimeout, onPush: onPush)
        do {
            let role = try await connection.send(RESPCommand("ROLE"))
            guard case .array(let parts?) = role, parts.first?.string == "master" else {
                throw RedisError.transport("\(namedBy), but it is not a master (ROLE: \(role)); asking again")
            }
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    /// Sends one command and waits for its reply. Error replies throw ``RedisError``.
    /// Fails at once when the connection is gone.
    @discardableResult
    public func send(_ command: RESPCommand) async throws -> RESPValue {
        try await submit(command).get()
    }

    /// Sends one command; the future holds its reply (error replies fail it with ``RedisError``).
    /// For callers on an event loop that must not create a task per command.
    public func submit(_ command: RESPCommand) -> EventLoopFuture<RESPValue> {
        let reply = ReplySlot(channel.eventLoop.makePromise(of: RESPValue.self))
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(RedisCommandHandler.Request(command: command, reply: reply), promise: written)
        // A closed channel never reaches the handler: the failed write is then the only answer.
        written.futureResult.whenFailure { _ in reply.fail(RedisError.transport("the connection to Redis is closed")) }
        return reply.future
    }

    /// Sends several commands with one write and one flush (a pipeline); each future holds its
    /// reply, in order.
    public func submit(pipeline commands: [RESPCommand]) -> [EventLoopFuture<RESPValue>] {
        submit(pipeline: commands, preparedBy: nil).replies
    }

    /// As ``submit(pipeline:)``, with the commands `prepare` returns sent first, in the same
    /// write. `prepare` runs on the connection's event loop, where every write of the connection
    /// is made: what it decides (a slot not yet prepared on this connection) holds for the write
    /// that follows, whichever thread sent what. `preparation` fails when one of its commands did.
    public func submit(
        pipeline commands: [RESPCommand], preparedBy prepare: (@Sendable (RedisConnection) -> [RESPCommand])?
    ) -> (preparation: EventLoopFuture<Void>, replies: [EventLoopFuture<RESPValue>]) {
        let loop = channel.eventLoop
        let replies = commands.map { _ in ReplySlot(loop.makePromise(of: RESPValue.self)) }
        let prepared = loop.makePromise(of: Void.self)
        let channel = self.channel
        let send: @Sendable () -> Void = { [self] in
            let preparation = prepare?(self) ?? []
            var preparationReplies: [EventLoopFuture<RESPValue>] = []
            for command in preparation {
                let reply = ReplySlot(loop.makePromise(of: RESPValue.self))
                preparationReplies.append(reply.future)
                let written = loop.makePromise(of: Void.self)
                channel.write(RedisCommandHandler.Request(command: command, reply: reply), promise: written)
                written.futureResult.whenFailure { _ in reply.fail(RedisError.transport("the connection to Redis is closed")) }
            }
            EventLoopFuture.andAllSucceed(preparationReplies, on: loop).cascade(to: prepared)
            for (command, reply) in zip(commands, replies) {
                let written = loop.makePromise(of: Void.self)
                channel.write(RedisCommandHandler.Request(command: command, reply: reply), promise: written)
                written.futureResult.whenFailure { _ in reply.fail(RedisError.transport("the connection to Redis is closed")) }
            }
            channel.flush()
        }
        // Inline when already on the loop, as `submit(_:)` writes: a single command sent after
        // the pipeline must not overtake it.
        if loop.inEventLoop { send() } else { loop.execute(send) }
        return (prepared.futureResult, replies.map(\.future))
    }

    /// Sends a command whose answer comes as RESP3 pushes (SUBSCRIBE and its kin), not as a reply.
    func sendExpectingPushes(_ command: RESPCommand) async throws {
        try await channel.writeAndFlush(RedisCommandHandler.Request(command: command, reply: nil)).get()
    }

    /// Whether the TCP connection is still up.
    public var isActive: Bool { channel.isActive }

    public func close() async {
        try? await channel.close()
    }

    /// Completes when the connection closes, for whatever reason.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
}

/// Matches replies to pipelined commands, in order; hands pushes to `onPush`.
final class RedisCommandHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = RESPValue
    typealias OutboundIn = Request
    typealias OutboundOut = ByteBuffer

    struct Request {
        var command: RESPCommand
        /// `nil` for commands answered by pushes only.
        var reply: ReplySlot?
    }

    private let onPush: @Sendable (RESPValue) -> Void
    private let commandTimeout: TimeAmount?
    /// Commands awaiting replies, in order, with when each was sent.
    private var waiting = Deque<(reply: ReplySlot, sent: NIODeadline)>()
    private var isClosed = false
    /// Whether a command answered by pushes (not a reply) was sent: an error reply then may
    /// answer it.
    private var sentPushCommands = false
    /// Why the connection was dropped by us, for the commands it fails.
    private var closeReason: RedisError?
    private var watchdog: RepeatedTask?
    /// Bytes read so far (a large reply still arriving is progress, not silence); the watchdog
    /// notes when the count last moved.
    private let progress: ReadProgress
    private var bytesAtLastTick = 0
    private var lastProgress = NIODeadline.now()
    private var lastTick = NIODeadline.now()

    init(commandTimeout: TimeAmount?, progress: ReadProgress = ReadProgress(), onPush: @escaping @Sendable (RESPValue) -> Void) {
        self.commandTimeout = commandTimeout
        self.progress = progress
        self.onPush = onPush
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let timeout = commandTimeout else { return }
        // One timer per connection, not per command. A connection is dropped only when Redis
        // has been *silent* for the timeout while commands wait: a busy Redis that still
        // answers (a storm of connects) keeps its connection, however long the queue. And only
        // when this loop itself is on time: a loop that was behind (a large fan-out, an
        // overloaded machine) may not have read replies that arrived in time, so it judges
        // nothing until it has caught up.
        let period = TimeAmount.nanoseconds(max(timeout.nanoseconds / 4, 10_000_000))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        watchdog = context.eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { [self] _ in
            let now = NIODeadline.now()
            let behind = now - lastTick > period * 2
            lastTick = now
            if progress.bytes != bytesAtLastTick {
                bytesAtLastTick = progress.bytes
                lastProgress = now
            }
            guard let oldest = waiting.first else {
                lastProgress = now
                return
            }
            // Bytes trickling in keep a connection, but not past a hard bound per command.
            let stalled = now - max(lastProgress, oldest.sent) > timeout
            let overdue = now - oldest.sent > max(timeout * 30, .seconds(30))
            guard !behind, stalled || overdue else { return }
            closeReason = RedisError.transport(
                "Redis did not answer within \(timeout.nanoseconds / 1_000_000) ms; the connection was dropped (a command already sent may still be applied when Redis recovers)"
            )
            loopBound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        watchdog?.cancel()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        guard !isClosed else {
            request.reply?.fail(RedisError.transport("the connection to Redis is closed"))
            promise?.fail(RedisError.transport("the connection to Redis is closed"))
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        request.command.encode(into: &buffer)
        if let reply = request.reply { waiting.append((reply, .now())) } else { sentPushCommands = true }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        if case .push = value {
            onPush(value)
            return
        }
        guard let promise = waiting.popFirst()?.reply else {
            // An error answering a command that expects pushes (`SSUBSCRIBE` sent where its slot
            // is not served: `MOVED`) goes to `onPush`, which knows what was asked.
            if sentPushCommands, case .simpleError = value {
                onPush(value)
                return
            }
            // A reply no command asked for: the stream is out of step; do not guess.
            context.close(promise: nil)
            return
        }
        switch value {
        case .simpleError(let message): promise.fail(RedisError.reply(message))
        case .bulkError(let message): promise.fail(RedisError.reply(String(buffer: message)))
        default: promise.succeed(value)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        isClosed = true
        watchdog?.cancel()
        let error = closeReason ?? RedisError.transport("the connection to Redis was lost before the reply")
        while let pending = waiting.popFirst() { pending.reply.fail(error) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// How many bytes a connection has read, counted before decoding (shared by the two handlers
/// of one channel, on its event loop).
final class ReadProgress {
    var bytes = 0
}

/// Counts the bytes read from Redis, so that the command timeout tells a large reply still
/// arriving from a server that went silent.
final class ReadProgressHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let progress: ReadProgress

    init(_ progress: ReadProgress) {
        self.progress = progress
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        progress.bytes &+= unwrapInboundIn(data).readableBytes
        context.fireChannelRead(data)
    }
}

/// A reply promise that tolerates being answered twice (a failed write and a lost connection
/// can both report the same command): the first answer wins.
final class ReplySlot: Sendable {
    private let promise: EventLoopPromise<RESPValue>
    private let answered = Atomic<Bool>(false)

    init(_ promise: EventLoopPromise<RESPValue>) {
        self.promise = promise
    }

    var future: EventLoopFuture<RESPValue> { promise.futureResult }

    func succeed(_ value: RESPValue) {
        if answered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged { promise.succeed(value) }
    }

    func fail(_ error: any Error) {
        if answered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged { promise.fail(error) }
    }
}

/// Facts an owner attaches to one connection: they die with it, so a reconnect starts clean.
public final class ConnectionNotes: Sendable {
    /// Named values (such as the server's identity, found once per connection).
    public let values = Mutex<[String: String]>([:])
    /// Cluster slots the owner already prepared on this connection (``RedisClusterClient``).
    public let preparedSlots = Mutex<Set<Int>>([])

    public init() {}
}
