import DequeModule
public import NIOCore
import NIOPosix
import Synchronization

/// A message from a channel this subscriber listens to.
public struct RedisMessage: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// From `SUBSCRIBE`.
        case channel
        /// From `PSUBSCRIBE`; `pattern` says which pattern matched.
        case pattern
        /// From `SSUBSCRIBE` (sharded pub/sub, Redis 7).
        case shard
    }

    public var kind: Kind
    public var pattern: String?
    public var channel: String
    public var payload: ByteBuffer

    public init(kind: Kind, pattern: String?, channel: String, payload: ByteBuffer) {
        self.kind = kind
        self.pattern = pattern
        self.channel = channel
        self.payload = payload
    }
}

/// A dedicated pub/sub connection (RESP3) that stays subscribed: subscriptions are confirmed
/// by pushes, messages arrive as pushes and go to `onMessage` (on the connection's event loop,
/// in order). Commands and pushes are never confused: this connection sends nothing but
/// (un)subscriptions.
///
/// The subscriber remembers what it is subscribed to. While it ``run()``s, a lost connection
/// is re-established with capped exponential backoff and jitter, every remembered channel,
/// pattern and shard channel is subscribed again, and `onReconnect` is told (`onDisconnect`
/// was told when the connection was lost; messages published
/// during the gap were missed: pub/sub is not a queue).
public final class RedisSubscriber: Sendable {
    public let url: RedisURL
    private let group: any EventLoopGroup
    private let onMessage: @Sendable (RedisMessage) -> Void
    private let onReconnect: @Sendable () -> Void
    private let onDisconnect: @Sendable () -> Void
    private let onShardChannelDropped: @Sendable (String) -> Void
    private let confirmations = Confirmations()
    private let state = Mutex<State>(State())
    /// Reconnection delays: the first, and the cap.
    public var backoff: (first: Duration, cap: Duration) { (.milliseconds(50), .seconds(2)) }

    struct State {
        var connection: RedisConnection?
        var channels: Set<String> = []
        var patterns: Set<String> = []
        var shardChannels: Set<String> = []
        var reconnects = 0
        /// Subscriptions asked for while disconnected: answered once the reconnect subscribed
        /// everything again, so "subscribed" always means Redis confirmed it.
        var awaitingReconnect: [Confirmations.Batch] = []
    }

    public init(
        url: RedisURL,
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onMessage: @escaping @Sendable (RedisMessage) -> Void,
        onReconnect: @escaping @Sendable () -> Void = {},
        onDisconnect: @escaping @Sendable () -> Void = {},
        onShardChannelDropped: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.url = url
        self.group = group
        self.onMessage = onMessage
        self.onReconnect = onReconnect
        self.onDisconnect = onDisconnect
        self.onShardChannelDropped = onShardChannelDropped
    }

    /// Connects (once) without the reconnect loop; for callers that drive ``run()`` later or
    /// only need one connection. Throws when Redis cannot be reached.
    public func connect() async throws {
        let connection = try await open()
        state.withLock { $0.connection = connection }
    }

    /// Keeps the subscriber connected until the task is cancelled.
    public func run() async {
        var keeper = ConnectionKeeper(
            backoff: Backoff(first: backoff.first, cap: backoff.cap),
            current: { [self] in state.withLock { $0.connection } },
            connect: { [self] in
                let connection = try await open()
                let interest = state.withLock { state -> State in
                    state.connection = connection
                    return state
                }
                do {
                    try await resubscribe(interest, on: connection)
                } catch {
                    // Not every channel confirmed: drop this connection and start over, or the
                    // keeper would keep it as if resubscribed, and never report the reconnect
                    // (channels would stay suspended).
                    state.withLock { if $0.connection === connection { $0.connection = nil } }
                    await connection.close()
                    throw error
                }
            },
            lost: { [self] lost in
                state.withLock { if $0.connection === lost { $0.connection = nil } }
                // Confirmations cannot come any more: fail them now, not at their timeout.
                // (The reconnect subscribes everything remembered anyway.)
                confirmations.failAll()
                onDisconnect()
            },
            reconnected: { [self] in
                let waiting = state.withLock { state in
                    state.reconnects += 1
                    defer { state.awaitingReconnect = [] }
                    return state.awaitingReconnect
                }
                for batch in waiting { batch.answer(nil) }
                onReconnect()
            }
        )
        if let sentinel = url.sentinel {
            keeper.watch = { [group] connection in await RedisSentinel.watch(connection, through: sentinel, on: group) }
        }
        await keeper.run()
    }

    /// Times the connection was re-established after a loss.
    public var reconnectCount: Int { state.withLock { $0.reconnects } }

    public func subscribe(_ channels: [String]) async throws { try await change("SUBSCRIBE", channels, \.channels, adding: true) }
    public func unsubscribe(_ channels: [String]) async throws { try await change("UNSUBSCRIBE", channels, \.channels, adding: false) }
    public func psubscribe(_ patterns: [String]) async throws { try await change("PSUBSCRIBE", patterns, \.patterns, adding: true) }
    public func punsubscribe(_ patterns: [String]) async throws { try await change("PUNSUBSCRIBE", patterns, \.patterns, adding: false) }
    public func ssubscribe(_ channels: [String]) async throws { try await change("SSUBSCRIBE", channels, \.shardChannels, adding: true) }
    public func sunsubscribe(_ channels: [String]) async throws { try await change("SUNSUBSCRIBE", channels, \.shardChannels, adding: false) }

    /// Records the interest (kept across reconnects), then tells Redis if connected.
    private func change(_ command: String, _ names: [String], _ interest: WritableKeyPath<State, Set<String>>, adding: Bool) async throws {
        state.withLock { state in
            if adding { state[keyPath: interest].formUnion(names) } else { state[keyPath: interest].subtract(names) }
        }
        try await run(command, names)
    }

    /// Forgets shard channels without telling Redis (they are not subscribed here: a
    /// subscription that failed), so that a reconnect does not subscribe them again.
    public func forget(shardChannels channels: [String]) {
        state.withLock { $0.shardChannels.subtract(channels) }
    }

    /// Whether the subscriber is connected right now.
    public var isConnected: Bool { state.withLock { $0.connection?.isActive ?? false } }

    public func close() async {
        let (connection, waiting) = state.withLock { state in
            defer { state.awaitingReconnect = [] }
            return (state.connection, state.awaitingReconnect)
        }
        if let connection { await connection.close() }
        confirmations.failAll()
        for batch in waiting { batch.answer(RedisError.transport("the subscriber was closed")) }
    }

    private func open() async throws -> RedisConnection {
        let onMessage = self.onMessage
        let confirmations = self.confirmations
        // A shard channel Redis unsubscribed on its own (its slot moved away, the server became
        // a replica) is forgotten here and handed to the owner, who knows where it lives now.
        let dropped: @Sendable (String) -> Void = { [weak self] channel in
            guard let self, state.withLock({ $0.shardChannels.remove(channel) }) != nil else { return }
            onShardChannelDropped(channel)
        }
        // An error answering a subscription: `MOVED SLOT …` (a shard channel sent to a server
        // that does not serve its slot) drops that slot's shard channels, which the owner places
        // again; any other fails what waits (it is tried again by the caller).
        let refused: @Sendable (String) -> Void = { [weak self] message in
            guard let self else { return }
            let error = RedisError.reply(message)
            let parts = message.split(separator: " ")
            guard parts.first == "MOVED" || parts.first == "ASK", parts.count == 3, let slot = Int(parts[1]) else {
                confirmations.failAll(error)
                return
            }
            let moved = state.withLock { state -> [String] in
                let moved = state.shardChannels.filter { RedisCluster.slot(of: $0) == slot }
                state.shardChannels.subtract(moved)
                return Array(moved)
            }
            // The owner hears first: when the subscription's caller learns it failed, the
            // channel is already handed back.
            for channel in moved { onShardChannelDropped(channel) }
            confirmations.fail(kind: "ssubscribe", names: moved, error)
        }
        let connection = try await RedisConnection.connect(to: url, on: group) { push in
            Self.route(push, onMessage: onMessage, confirmations: confirmations, dropped: dropped, refused: refused)
        }
        guard connection.protocolVersion == 3 else {
            await connection.close()
            throw RedisError.unexpectedReply("the subscriber needs RESP3 (Redis 6 or later): this server answered HELLO 3 with an error")
        }
        return connection
    }

    private func resubscribe(_ interest: State, on connection: RedisConnection) async throws {
        try await run("SUBSCRIBE", Array(interest.channels), on: connection)
        try await run("PSUBSCRIBE", Array(interest.patterns), on: connection)
        try await run("SSUBSCRIBE", Array(interest.shardChannels), on: connection)
    }

    /// The commands that (un)subscribe `names`: one per slot for shard channels (Redis refuses
    /// a sharded subscription across slots), else one.
    static func commands(_ command: String, _ names: [String]) -> [[String]] {
        guard command == "SSUBSCRIBE" || command == "SUNSUBSCRIBE" else { return [names] }
        var bySlot: [Int: [String]] = [:]
        for name in names { bySlot[RedisCluster.slot(of: name), default: []].append(name) }
        return bySlot.keys.sorted().map { bySlot[$0]! }
    }

    /// Sends the command and waits (bounded) until Redis confirmed every name. While
    /// disconnected, a subscription waits (at most ``reconnectWait``) for the reconnect, which
    /// subscribes every remembered name; an unsubscription only forgets the name.
    private func run(_ command: String, _ names: [String], on given: RedisConnection? = nil) async throws {
        guard !names.isEmpty else { return }
        let connection: RedisConnection
        if let given {
            connection = given
        } else {
            let adding = !command.hasPrefix("UN") && !command.hasPrefix("PUN") && !command.hasPrefix("SUN")
            let current = state.withLock { state -> Route? in
                if let connection = state.connection, connection.isActive { return .send(connection) }
                guard adding else { return nil }
                // Registered under the same lock the reconnect answers under: no reconnect can
                // slip between "disconnected" and "waiting".
                let batch = Confirmations.Batch(group.any().makePromise(of: Void.self), count: 1)
                state.awaitingReconnect.append(batch)
                return .awaitReconnect(batch)
            }
            switch current {
            case nil:
                return
            case .send(let active):
                connection = active
            case .awaitReconnect(let batch):
                let timeout = group.any().scheduleTask(in: .seconds(Int64(Self.reconnectWait.components.seconds))) { [self] in
                    state.withLock { $0.awaitingReconnect.removeAll { $0 === batch } }
                    batch.answer(
                        RedisError.transport(
                            "the subscriber is disconnected from Redis and did not reconnect within \(Self.reconnectWait): \(command) of \(names.count) channels not confirmed"
                        )
                    )
                }
                batch.promise.futureResult.whenComplete { _ in timeout.cancel() }
                try await batch.promise.futureResult.get()
                return
            }
        }
        let confirmed = confirmations.expect(kind: command.lowercased(), names: names)
        for batch in Self.commands(command, names) {
            try await connection.sendExpectingPushes(RESPCommand(arguments: ([command] + batch).map { ByteBuffer(string: $0) }))
        }
        try await confirmed.get()
    }

    private enum Route {
        case send(RedisConnection)
        case awaitReconnect(Confirmations.Batch)
    }

    /// How long a subscription asked for while disconnected waits for the reconnect.
    public static let reconnectWait: Duration = .seconds(10)

    private static func route(
        _ push: RESPValue, onMessage: @Sendable (RedisMessage) -> Void, confirmations: Confirmations, dropped: @Sendable (String) -> Void,
        refused: @Sendable (String) -> Void
    ) {
        if case .simpleError(let message) = push {
            refused(message)
            return
        }
        guard case .push(let items) = push, let kind = items.first?.string else { return }
        switch (kind, items.count) {
        case ("message", 3):
            if let channel = items[1].string, case .bulkString(let payload?) = items[2] {
                onMessage(RedisMessage(kind: .channel, pattern: nil, channel: channel, payload: payload))
            }
        case ("smessage", 3):
            if let channel = items[1].string, case .bulkString(let payload?) = items[2] {
                onMessage(RedisMessage(kind: .shard, pattern: nil, channel: channel, payload: payload))
            }
        case ("pmessage", 4):
            if let channel = items[2].string, case .bulkString(let payload?) = items[3] {
                onMessage(RedisMessage(kind: .pattern, pattern: items[1].string, channel: channel, payload: payload))
            }
        case ("sunsubscribe", _):
            guard items.count >= 2, let name = items[1].string else { return }
            if !confirmations.confirm(kind: kind, name: name) { dropped(name) }
        case ("subscribe", _), ("unsubscribe", _), ("psubscribe", _), ("punsubscribe", _), ("ssubscribe", _):
            if items.count >= 2 { confirmations.confirm(kind: kind, name: items[1].string) }
        default:
            break
        }
    }
}

/// Subscriptions waiting for Redis's confirmation pushes, matched by kind and name in order.
/// One wait per command (however many names it carries), with one timer: a command whose
/// names are not all confirmed within 10 s fails.
final class Confirmations: Sendable {
    private let waiting = Mutex<[String: Deque<Batch>]>([:])
    private let loop = MultiThreadedEventLoopGroup.singleton.any()

    /// The names of one command still unconfirmed, answered once (by Redis, the timeout, or a close).
    final class Batch: Sendable {
        let promise: EventLoopPromise<Void>
        /// Guarded by the ``Confirmations`` lock.
        nonisolated(unsafe) var remaining: Int
        private let answered = Atomic<Bool>(false)

        init(_ promise: EventLoopPromise<Void>, count: Int) {
            self.promise = promise
            self.remaining = count
        }

        func answer(_ error: (any Error)?) {
            guard answered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            if let error { promise.fail(error) } else { promise.succeed() }
        }
    }

    func expect(kind: String, names: [String]) -> EventLoopFuture<Void> {
        let batch = Batch(loop.makePromise(of: Void.self), count: names.count)
        let keys = names.map { kind + " " + $0 }
        waiting.withLock { state in
            for key in keys { state[key, default: []].append(batch) }
        }
        let timeout = loop.scheduleTask(in: .seconds(10)) { [self] in
            // Leave the queues too: a stale entry would swallow the next confirmation of a name.
            waiting.withLock { state in
                for key in keys {
                    state[key]?.removeAll { $0 === batch }
                    if state[key]?.isEmpty == true { state[key] = nil }
                }
            }
            batch.answer(RedisError.transport("Redis did not confirm \(kind) of \(names.count) channels within 10 s"))
        }
        batch.promise.futureResult.whenComplete { _ in timeout.cancel() }
        return batch.promise.futureResult
    }

    /// Returns whether a command was waiting for this confirmation.
    @discardableResult
    func confirm(kind: String, name: String?) -> Bool {
        guard let name else { return false }
        let (expected, completed): (Bool, Batch?) = waiting.withLock { state in
            let key = kind + " " + name
            guard let batch = state[key]?.popFirst() else { return (false, nil) }
            if state[key]?.isEmpty == true { state[key] = nil }
            batch.remaining -= 1
            return (true, batch.remaining == 0 ? batch : nil)
        }
        completed?.answer(nil)
        return expected
    }

    func failAll(_ error: RedisError = RedisError.transport("the subscriber connection closed")) {
        let all = waiting.withLock { state -> [Batch] in
            defer { state.removeAll() }
            return state.values.flatMap { $0 }
        }
        for batch in all { batch.answer(error) }
    }

    /// Fails the commands waiting for confirmations of `names`.
    func fail(kind: String, names: [String], _ error: RedisError) {
        let batches = waiting.withLock { state -> [Batch] in
            var batches: [Batch] = []
            for name in names {
                if let waiting = state.removeValue(forKey: kind + " " + name) { batches += waiting }
            }
            return batches
        }
        for batch in batches { batch.answer(error) }
    }
}
