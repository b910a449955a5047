import CoreMetrics
public import NIOCore
import NIOPosix
import Synchronization

/// A command connection to Redis that stays up: pipelined commands, reconnection with capped
/// exponential backoff and jitter while ``run()`` runs, and no queue while disconnected.
///
/// Commands never wait for a connection: while Redis is unreachable every command fails at once
/// with ``RedisError`` (the caller decides whether to retry), so nothing piles up in memory. A
/// server that stops answering (paused, overloaded) is detected by the command timeout: the
/// connection is dropped, its commands fail, and reconnection begins.
public final class RedisClient: Sendable {
    public struct Configuration: Sendable {
        /// How long a reply may take before the connection is considered stalled and dropped.
        public var commandTimeout: TimeAmount = .seconds(1)
        public var connectTimeout: TimeAmount = .seconds(2)
        public var backoff = Backoff()
        /// Where command durations and errors are reported; `nil` measures nothing.
        public var metrics: RedisClientMetrics?

        public init() {}
    }

    public let url: RedisURL
    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let onReconnect: @Sendable () -> Void
    private let state = Mutex<State>(State())
    /// Scripts loaded (`SCRIPT LOAD`) on every new connection before it is used.
    private let preloaded = Mutex<[RedisScript]>([])
    /// Run on every new connection, after the scripts, before it is used.
    private let preparation = Mutex<[@Sendable (RedisConnection) async throws -> Void]>([])

    struct State {
        var connection: RedisConnection?
        var reconnects = 0
    }

    /// - Parameters:
    ///   - url: where Redis is, with credentials and database.
    ///   - configuration: timeouts and reconnect backoff.
    ///   - group: the event loops the connection runs on.
    ///   - onReconnect: called each time the connection is re-established after a loss.
    public init(
        url: RedisURL,
        configuration: Configuration = .init(),
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onReconnect: @escaping @Sendable () -> Void = {}
    ) {
        self.url = url
        self.configuration = configuration
        self.group = group
        self.onReconnect = onReconnect
    }

    /// Connects once; throws when Redis cannot be reached (for a clear error at start-up).
    public func connect() async throws {
        let connection = try await open()
        state.withLock { $0.connection = connection }
    }

    /// Keeps the client connected until the task is cancelled, then closes the connection.
    public func run() async {
        var keeper = ConnectionKeeper(
            backoff: configuration.backoff,
            current: { [self] in state.withLock { $0.connection } },
            connect: { [self] in
                let connection = try await open()
                state.withLock { $0.connection = connection }
            },
            lost: { [self] lost in state.withLock { if $0.connection === lost { $0.connection = nil } } },
            reconnected: { [self] in
                state.withLock { $0.reconnects += 1 }
                onReconnect()
            }
        )
        if let sentinel = url.sentinel {
            keeper.watch = { [group] connection in await RedisSentinel.watch(connection, through: sentinel, on: group) }
        }
        await keeper.run()
    }

    /// Whether a connection is up right now.
    public var isConnected: Bool { state.withLock { $0.connection?.isActive ?? false } }

    /// The connection in use, if one is up.
    public var currentConnection: RedisConnection? { state.withLock { $0.connection }.flatMap { $0.isActive ? $0 : nil } }

    /// Times the connection was re-established after a loss.
    public var reconnectCount: Int { state.withLock { $0.reconnects } }

    /// Sends a command; fails at once when disconnected.
    @discardableResult
    public func send(_ command: RESPCommand) async throws -> RESPValue {
        try await submit(command).get()
    }

    /// Sends a command without a task (for event-loop code); fails at once when disconnected.
    public func submit(_ command: RESPCommand) -> EventLoopFuture<RESPValue> {
        guard let connection = state.withLock({ $0.connection }), connection.isActive else {
            configuration.metrics?.commandErrors.increment()
            return group.any().makeFailedFuture(
                RedisError.transport("not connected to Redis at \(url.location) (reconnecting); the command was not sent")
            )
        }
        let reply = connection.submit(command)
        configuration.metrics?.observe(reply)
        if url.sentinel != nil || url.cluster != nil { giveUpIfDemoted(connection, reply) }
        return reply
    }

    /// With Sentinel: a `READONLY` refusal means the server was made a replica (a failover the
    /// watch has not heard of yet); in a cluster, `MOVED` too means that the slot is served
    /// elsewhere: close the connection, so the reconnect asks where the master is.
    private func giveUpIfDemoted(_ connection: RedisConnection, _ reply: EventLoopFuture<RESPValue>) {
        reply.whenFailure { error in
            guard let code = (error as? RedisError)?.serverCode, RedisCluster.redirections.contains(code) else { return }
            Task { await connection.close() }
        }
    }

    /// Sends `commands` in one write (a pipeline: one round trip for all of them); each future
    /// holds its reply, in order. A script is run with `EVALSHA` and sent again with `EVAL`
    /// when the server does not have it. Fails every command at once when disconnected.
    public func submit(pipeline commands: [PipelinedCommand]) -> [EventLoopFuture<RESPValue>] {
        submit(pipeline: commands, preparedBy: nil).replies
    }

    /// As ``submit(pipeline:)``, with the commands `prepare` returns for the connection used sent
    /// first, in the same write, decided on the connection's event loop
    /// (``RedisConnection/submit(pipeline:preparedBy:)``): for work a connection needs once per
    /// something, such as a cluster slot (``RedisClusterClient``).
    public func submit(
        pipeline commands: [PipelinedCommand], preparedBy prepare: (@Sendable (RedisConnection) -> [RESPCommand])?
    ) -> (preparation: EventLoopFuture<Void>, replies: [EventLoopFuture<RESPValue>]) {
        guard !commands.isEmpty else { return (group.any().makeSucceededVoidFuture(), []) }
        guard let connection = state.withLock({ $0.connection }), connection.isActive else {
            let error = RedisError.transport("not connected to Redis at \(url.location) (reconnecting); the commands were not sent")
            configuration.metrics?.commandErrors.increment(by: commands.count)
            return (group.any().makeFailedFuture(error), commands.map { _ in group.any().makeFailedFuture(error) })
        }
        let (preparation, replies) = connection.submit(pipeline: commands.map(\.sentFirst), preparedBy: prepare)
        let answered = zip(commands, replies).map { command, reply in
            configuration.metrics?.observe(reply)
            if url.sentinel != nil || url.cluster != nil { giveUpIfDemoted(connection, reply) }
            guard case .script(let script, let keys, let arguments) = command else { return reply }
            return reply.flatMapError { error in
                guard let redisError = error as? RedisError, redisError.serverCode == "NOSCRIPT" else {
                    return self.group.any().makeFailedFuture(error)
                }
                return self.submit(PipelinedCommand.scriptSource(script, keys: keys, arguments: arguments))
            }
        }
        return (preparation, answered)
    }

    /// Loads `scripts` on every connection from now on (and on the current one, if any) before
    /// commands use it. `evaluate` falls back to `EVAL` on `NOSCRIPT` anyway; what preloading
    /// adds is order: after Redis restarted, a pipelined `EVALSHA` answered `NOSCRIPT` and sent
    /// again as `EVAL` could otherwise run after one sent later, which another client's `EVAL`
    /// had meanwhile made succeed (two publishes to one channel would get their offsets swapped).
    public func preload(_ scripts: [RedisScript]) async {
        preloaded.withLock { known in
            for script in scripts where !known.contains(script) { known.append(script) }
        }
        if let connection = state.withLock({ $0.connection }) {
            for script in scripts { _ = try? await connection.send(RESPCommand("SCRIPT", "LOAD", script.source)) }
        }
    }

    /// Sends `commands` on every connection from now on (and on the current one, if any), after
    /// the preloaded scripts and before commands use it. A connection on which one fails is not
    /// used: it is closed and the reconnect tries again, with backoff.
    /// - Throws: the error of a command that failed on the current connection (which is closed).
    public func prepareEachConnection(with commands: [RESPCommand]) async throws {
        try await prepareEachConnection { connection in
            for command in commands { _ = try await connection.send(command) }
        }
    }

    /// Runs `preparation` on every connection from now on (and on the current one, if any),
    /// after the preloaded scripts and before commands use it; a connection on which it throws
    /// is not used (closed, and the reconnect tries again, with backoff).
    public func prepareEachConnection(_ preparation: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        self.preparation.withLock { $0.append(preparation) }
        guard let connection = state.withLock({ $0.connection }) else { return }
        try await Self.prepare(connection, with: [preparation])
    }

    private static func prepare(_ connection: RedisConnection, with preparations: [@Sendable (RedisConnection) async throws -> Void]) async throws {
        for preparation in preparations {
            do {
                try await preparation(connection)
            } catch {
                await connection.close()
                throw error
            }
        }
    }

    /// Runs `script` with `EVALSHA`, or `EVAL` when the server does not have it cached.
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [ByteBuffer]) -> EventLoopFuture<RESPValue> {
        submit(PipelinedCommand.script(script, keys: keys, arguments: arguments).sentFirst)
            .flatMapError { error in
                guard let redisError = error as? RedisError, redisError.serverCode == "NOSCRIPT" else {
                    return self.group.any().makeFailedFuture(error)
                }
                return self.submit(PipelinedCommand.scriptSource(script, keys: keys, arguments: arguments))
            }
    }

    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RESPValue {
        try await evaluate(script, keys: keys, arguments: arguments.map { ByteBuffer(string: $0) }).get()
    }

    public func close() async {
        if let connection = state.withLock({ $0.connection }) { await connection.close() }
    }

    private func open() async throws -> RedisConnection {
        let connection = try await RedisConnection.connect(
            to: url,
            on: group,
            connectTimeout: configuration.connectTimeout,
            commandTimeout: configuration.commandTimeout
        )
        // A refused load (a Redis user allowed EVALSHA but not SCRIPT LOAD: NOPERM) is no reason
        // to refuse the connection: `evaluate` still falls back to EVAL. A connection that died
        // meanwhile is noticed by the caller.
        let loads = preloaded.withLock { $0 }.map { connection.submit(RESPCommand("SCRIPT", "LOAD", $0.source)) }
        for load in loads { _ = try? await load.get() }
        try await Self.prepare(connection, with: preparation.withLock { $0 })
        return connection
    }
}

/// One command of ``RedisClient/submit(pipeline:)``.
public enum PipelinedCommand: Sendable {
    case command(RESPCommand)
    /// A script, by its SHA1 first (`EVALSHA`), its source if the server does not know it.
    case script(RedisScript, keys: [String], arguments: [ByteBuffer])

    /// What is sent first: the command, or `EVALSHA`.
    var sentFirst: RESPCommand {
        switch self {
        case .command(let command): command
        case .script(let script, let keys, let arguments):
            RESPCommand(arguments: [ByteBuffer(string: "EVALSHA"), ByteBuffer(string: script.sha1)] + Self.tail(keys, arguments))
        }
    }

    /// `EVAL` with the script's source, after `NOSCRIPT`.
    static func scriptSource(_ script: RedisScript, keys: [String], arguments: [ByteBuffer]) -> RESPCommand {
        RESPCommand(arguments: [ByteBuffer(string: "EVAL"), ByteBuffer(string: script.source)] + tail(keys, arguments))
    }

    private static func tail(_ keys: [String], _ arguments: [ByteBuffer]) -> [ByteBuffer] {
        [ByteBuffer(string: String(keys.count))] + keys.map { ByteBuffer(string: $0) } + arguments
    }
}
