import HeraldRedisClient
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

/// Messages a subscriber received, awaitable with a bound.
final class MessageLog: Sendable {
    private let messages = Mutex<[RedisMessage]>([])

    func append(_ message: RedisMessage) { messages.withLock { $0.append(message) } }
    var all: [RedisMessage] { messages.withLock { $0 } }

    func waitForCount(_ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while all.count < count, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }
}

@Suite("Redis subscriber against a real redis-server")
struct RedisSubscriberTests {
    @Test func channelPatternAndShardedSubscriptions() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let url = RedisURL(port: server.port)
        let log = MessageLog()
        let subscriber = RedisSubscriber(url: url) { log.append($0) }
        try await subscriber.connect()
        let publisher = try await RedisConnection.connect(to: url)

        try await subscriber.subscribe(["herald.room.a", "herald.room.b"])
        try await subscriber.psubscribe(["herald.user.*"])
        try await subscriber.ssubscribe(["herald.shard.x"])
        let channels = try await publisher.send(RESPCommand("PUBSUB", "CHANNELS", "herald.*"))
        guard case .array(let names?) = channels else {
            Issue.record("PUBSUB CHANNELS: \(channels)")
            return
        }
        #expect(Set(names.compactMap(\.string)) == ["herald.room.a", "herald.room.b"])

        // PUBLISH answers with the number of receivers: the subscription is live when it returns 1.
        #expect(try await publisher.send(RESPCommand("PUBLISH", "herald.room.a", "one")) == .integer(1))
        #expect(try await publisher.send(RESPCommand("PUBLISH", "herald.user.alice", "two")) == .integer(1))
        #expect(try await publisher.send(RESPCommand("SPUBLISH", "herald.shard.x", "three")) == .integer(1))
        #expect(try await publisher.send(RESPCommand("PUBLISH", "herald.room.zzz", "nobody")) == .integer(0))
        try await log.waitForCount(3)
        #expect(
            log.all == [
                RedisMessage(kind: .channel, pattern: nil, channel: "herald.room.a", payload: ByteBuffer(string: "one")),
                RedisMessage(kind: .pattern, pattern: "herald.user.*", channel: "herald.user.alice", payload: ByteBuffer(string: "two")),
                RedisMessage(kind: .shard, pattern: nil, channel: "herald.shard.x", payload: ByteBuffer(string: "three")),
            ])

        try await subscriber.unsubscribe(["herald.room.a"])
        #expect(try await publisher.send(RESPCommand("PUBLISH", "herald.room.a", "gone")) == .integer(0))
        #expect(try await publisher.send(RESPCommand("PUBLISH", "herald.room.b", "still")) == .integer(1))
        try await log.waitForCount(4)
        #expect(log.all.last?.payload == ByteBuffer(string: "still"))
        #expect(log.all.count == 4)

        await subscriber.close()
        await publisher.close()
    }

    @Test func everyMessageArrivesOnceUnderLoad() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let url = RedisURL(port: server.port)
        let log = MessageLog()
        let subscriber = RedisSubscriber(url: url) { log.append($0) }
        try await subscriber.connect()
        let publisher = try await RedisConnection.connect(to: url)
        try await subscriber.subscribe(["seq"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            // 5,000 concurrent publishes on one pipelined connection: none lost, none twice.
            for n in 0..<5000 { group.addTask { _ = try await publisher.send(RESPCommand("PUBLISH", "seq", String(n))) } }
            try await group.waitForAll()
        }
        try await log.waitForCount(5000)
        let numbers = log.all.compactMap { Int(String(buffer: $0.payload)) }
        #expect(numbers.count == 5000)
        #expect(Set(numbers).count == 5000)
        await subscriber.close()
        await publisher.close()
    }
}

@Suite("Redis subscriber across a Redis restart")
struct RedisSubscriberReconnectTests {
    @Test func reconnectsAndResubscribesAfterRedisIsKilledAndRestarted() async throws {
        var server = try await RedisServerProcess()
        let port = server.port
        let url = RedisURL(port: port)
        let log = MessageLog()
        let reconnected = Atomic<Int>(0)
        let subscriber = RedisSubscriber(url: url, onMessage: { log.append($0) }, onReconnect: { reconnected.add(1, ordering: .relaxed) })
        let running = Task { await subscriber.run() }
        defer { running.cancel() }
        // Subscribe once connected (the first connect happens in run()).
        let deadline = ContinuousClock.now + .seconds(5)
        while !subscriber.isConnected, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        try await subscriber.subscribe(["room.a"])
        try await subscriber.psubscribe(["user.*"])

        server.stop()
        server = try await RedisServerProcess(port: port)
        defer { server.stop() }
        let publisher = try await RedisConnection.connect(to: url)
        // onReconnect fires once every channel and pattern is subscribed again (bounded wait).
        let back = ContinuousClock.now + .seconds(10)
        while reconnected.load(ordering: .relaxed) == 0, ContinuousClock.now < back { try await Task.sleep(for: .milliseconds(10)) }
        #expect(reconnected.load(ordering: .relaxed) >= 1)
        // PUBLISH answers with the number of receivers: the resubscriptions are live.
        #expect(try await publisher.send(RESPCommand("PUBLISH", "room.a", "after")) == .integer(1))
        #expect(try await publisher.send(RESPCommand("PUBLISH", "user.bob", "pattern-after")) == .integer(1))
        try await log.waitForCount(2)
        #expect(log.all.map { String(buffer: $0.payload) } == ["after", "pattern-after"])
        #expect(subscriber.reconnectCount >= 1)
        await publisher.close()
        running.cancel()
        await subscriber.close()
    }

    /// A subscription asked for while Redis is away returns only once the reconnect made it
    /// real: "subscribed" means a message published right after reaches the subscriber (a
    /// node that said a user's channel was subscribed while it was not lost their messages).
    @Test func aSubscriptionMadeWhileDisconnectedReturnsOnlyOnceRedisConfirmedIt() async throws {
        var server = try await RedisServerProcess()
        let port = server.port
        let url = RedisURL(port: port)
        let log = MessageLog()
        let subscriber = RedisSubscriber(url: url, onMessage: { log.append($0) })
        try await subscriber.connect()
        let running = Task { await subscriber.run() }
        defer { running.cancel() }

        server.stop()
        let lost = ContinuousClock.now + .seconds(5)
        while subscriber.isConnected, ContinuousClock.now < lost { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!subscriber.isConnected)
        let subscribing = Task { try await subscriber.subscribe(["late"]) }
        server = try await RedisServerProcess(port: port)
        defer { server.stop() }
        try await subscribing.value
        let publisher = try await RedisConnection.connect(to: url)
        #expect(try await publisher.send(RESPCommand("PUBLISH", "late", "right after")) == .integer(1))
        try await log.waitForCount(1)
        #expect(log.all.map { String(buffer: $0.payload) } == ["right after"])
        await publisher.close()
        running.cancel()
        await subscriber.close()
    }
}
