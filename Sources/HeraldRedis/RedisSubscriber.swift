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

/// A dedicated pub/sub connection (RESP3): subscriptions are confirmed by pushes, messages
/// arrive as pushes and go to `onMessage`, on the connection's event loop, in order. Commands
/// and pushes are never confused: this connection sends nothing but (un)subscriptions.
public final class RedisSubscriber: Sendable {
    private let connection: RedisConnection
    private let confirmations: Confirmations

    private init(connection: RedisConnection, confirmations: Confirmations) {
        self.connection = connection
        self.confirmations = confirmations
    }

    public static func connect(
        to url: RedisURL,
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onMessage: @escaping @Sendable (RedisMessage) -> Void
    ) async throws -> RedisSubscriber {
        let confirmations = Confirmations()
        let connection = try await RedisConnection.connect(to: url, on: group) { push in
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
            case ("subscribe", _), ("unsubscribe", _), ("psubscribe", _), ("punsubscribe", _), ("ssubscribe", _), ("sunsubscribe", _):
                if items.count >= 2 { confirmations.confirm(kind: kind, name: items[1].string) }
            default:
                break
            }
        }
        guard connection.protocolVersion == 3 else {
            await connection.close()
            throw RedisError("the subscriber needs RESP3 (Redis 6 or later): this server answered HELLO 3 with an error")
        }
        return RedisSubscriber(connection: connection, confirmations: confirmations)
    }

    public func subscribe(_ channels: [String]) async throws { try await run("SUBSCRIBE", channels) }
    public func unsubscribe(_ channels: [String]) async throws { try await run("UNSUBSCRIBE", channels) }
    public func psubscribe(_ patterns: [String]) async throws { try await run("PSUBSCRIBE", patterns) }
    public func punsubscribe(_ patterns: [String]) async throws { try await run("PUNSUBSCRIBE", patterns) }
    public func ssubscribe(_ channels: [String]) async throws { try await run("SSUBSCRIBE", channels) }
    public func sunsubscribe(_ channels: [String]) async throws { try await run("SUNSUBSCRIBE", channels) }

    public var isActive: Bool { connection.isActive }
    public var closeFuture: EventLoopFuture<Void> { connection.closeFuture }

    public func close() async {
        await connection.close()
        confirmations.failAll()
    }

    /// Sends the command and waits (bounded) until Redis confirmed every name.
    private func run(_ command: String, _ names: [String]) async throws {
        guard !names.isEmpty else { return }
        let kind = command.lowercased()
        let waits = names.map { confirmations.expect(kind: kind, name: $0) }
        try await connection.sendExpectingPushes(RESPCommand(arguments: ([command] + names).map { ByteBuffer(string: $0) }))
        for wait in waits {
            try await wait.get()
        }
    }
}

/// Subscriptions waiting for Redis's confirmation push, matched by kind and name in order.
/// Each wait is bounded: an unconfirmed subscription fails after 10 s.
final class Confirmations: Sendable {
    private let waiting = Mutex<[String: [Confirmation]]>([:])
    private let loop = MultiThreadedEventLoopGroup.singleton.any()

    /// One awaited confirmation, answered once (by Redis, the timeout, or a close).
    final class Confirmation: Sendable {
        let promise: EventLoopPromise<Void>
        private let answered = Atomic<Bool>(false)

        init(_ promise: EventLoopPromise<Void>) { self.promise = promise }

        func answer(_ error: (any Error)?) {
            guard answered.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            if let error { promise.fail(error) } else { promise.succeed() }
        }
    }

    func expect(kind: String, name: String) -> EventLoopFuture<Void> {
        let confirmation = Confirmation(loop.makePromise(of: Void.self))
        waiting.withLock { $0[kind + " " + name, default: []].append(confirmation) }
        let timeout = loop.scheduleTask(in: .seconds(10)) {
            confirmation.answer(RedisError("Redis did not confirm \(kind) \(name) within 10 s"))
        }
        confirmation.promise.futureResult.whenComplete { _ in timeout.cancel() }
        return confirmation.promise.futureResult
    }

    func confirm(kind: String, name: String?) {
        guard let name else { return }
        let confirmation: Confirmation? = waiting.withLock { state in
            let key = kind + " " + name
            guard var list = state[key], !list.isEmpty else { return nil }
            let first = list.removeFirst()
            state[key] = list.isEmpty ? nil : list
            return first
        }
        confirmation?.answer(nil)
    }

    func failAll() {
        let all = waiting.withLock { state -> [Confirmation] in
            defer { state.removeAll() }
            return state.values.flatMap { $0 }
        }
        for confirmation in all { confirmation.answer(RedisError("the subscriber connection closed")) }
    }
}
