import Herald
import HeraldRedis
import HeraldRedisClient
import HeraldTestSupport
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A node's hub as the roster sees it, with connection counts the test sets.
final class CountingSink: DeliverySink {
    let changes = Mutex<[MembershipChange]>([])
    let counts = Mutex<[String: Int]>([:])
    let memberships = Mutex<[String: [String: MembershipGrant]]>([:])
    /// The frames delivered, as text, in order.
    let delivered = Mutex<[String]>([])

    func deliver(_ envelope: Envelope) {
        delivered.withLock { $0.append(String(buffer: envelope.deliveredFrame)) }
    }
    func membershipChanged(_ change: MembershipChange) -> EventLoopFuture<Void> {
        changes.withLock { $0.append(change) }
        return MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
    }
    func localConnectionCounts() -> [String: Int] { counts.withLock { $0 } }
    func localMemberships() -> [String: [String: MembershipGrant]] { memberships.withLock { $0 } }
}

/// What only the Redis roster does: recover from Redis losing its data. The contract every
/// roster keeps is the conformance suite's (Tests/HeraldConformanceTests).
@Suite("Redis roster: surviving a Redis that lost its data", .serialized)
struct RedisRosterTests {
    struct Node {
        let backplane: RedisBackplane
        let broker: RedisBroker
        let roster: RedisRoster
        let sink: CountingSink

        init(_ id: String, port: Int, limits: HubConfiguration = .init()) async throws {
            sink = CountingSink()
            var configuration = RedisBackplane.Configuration(url: RedisURL(port: port), nodeID: id)
            // Not a timeout test: a full parallel run can keep one Redis busy past the 1 s default.
            configuration.client.commandTimeout = .seconds(10)
            backplane = RedisBackplane(configuration: configuration, logger: Logger(label: "test"))
            broker = RedisBroker(backplane: backplane, deliveringTo: sink, logger: Logger(label: "test"))
            roster = RedisRoster(backplane: backplane, limits: limits, presenceTTL: .seconds(3), notifying: sink, logger: Logger(label: "test"))
            await broker.connect()
            try await backplane.connect()
            await roster.heartbeat()
        }

        /// Runs the backplane and the broker (until the returned task is cancelled) with `user`'s
        /// channel subscribed, as a node holding a connection of the user.
        func runHolding(_ user: String) async throws -> Task<Void, any Error> {
            let running = Task { [backplane, broker] in
                async let connections: Void = backplane.run()
                try await broker.run()
                try await connections
            }
            try await broker.changeInterest(InterestChange(subscribe: [.user(user)]), on: MultiThreadedEventLoopGroup.singleton.any()).get()
            return running
        }
    }

    @Test func aLeaveAfterRedisLostTheMembershipStillEndsItOnEveryNode() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let node = try await Node("n1", port: server.port)
        let running = try await node.runHolding("alice")
        defer { running.cancel() }
        #expect(try await node.roster.join(user: "alice", room: "a") == true)
        let probe = try await RedisConnection.connect(to: RedisURL(port: server.port))
        try await probe.send(RESPCommand("FLUSHALL"))  // what a restart without persistence does
        await probe.close()
        // Redis has nothing to remove, but the node holding alice's connection still applies
        // the membership: the leave (a kick from the backend) must reach it.
        #expect(try await node.roster.leave(user: "alice", room: "a") == false)
        #expect(node.sink.changes.withLock { $0 }.last == MembershipChange(user: "alice", room: "a", isMember: false))
    }

    @Test func presenceIsRewrittenWhenRedisLosesIt() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let node = try await Node("n1", port: server.port)
        node.sink.counts.withLock { $0 = ["alice": 2, "bob": 1] }
        node.roster.presenceChanged(user: "alice", delta: 2)
        node.roster.presenceChanged(user: "bob", delta: 1)
        let probe = try await RedisConnection.connect(to: RedisURL(port: server.port))
        try await probe.send(RESPCommand("FLUSHALL"))  // what a restart without persistence does
        await node.roster.heartbeat()
        #expect(try await node.roster.connectionCounts(of: ["alice", "bob"]) == ["alice": 2, "bob": 1])

        // Lost again, and a connection opened before the next heartbeat puts one user back in
        // the node's hash: the heartbeat still sees Redis forgot the node, and rewrites it all.
        try await probe.send(RESPCommand("FLUSHALL"))
        node.sink.counts.withLock { $0 = ["alice": 2, "bob": 1, "carol": 1] }
        node.roster.presenceChanged(user: "carol", delta: 1)
        try await waitUntil("carol's connection recorded") {
            try await probe.send(RESPCommand("HGET", "herald:presence:n1", "carol")) == .bulkString(ByteBuffer(string: "1"))
        }
        await node.roster.heartbeat()
        #expect(try await node.roster.connectionCounts(of: ["alice", "bob", "carol"]) == ["alice": 2, "bob": 1, "carol": 1])
        await probe.close()
    }

    @Test func membershipsANodeStillAppliesAreWrittenBackWhenRedisLosesItsData() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let node = try await Node("n1", port: server.port)
        let running = try await node.runHolding("alice")
        defer { running.cancel() }
        #expect(try await node.roster.join(user: "alice", room: "a") == true)
        #expect(try await node.roster.join(user: "alice", room: "b", grant: .user) == true)
        #expect(try await node.roster.join(user: "alice", room: "c") == true)
        node.sink.memberships.withLock { $0 = ["alice": ["a": .backend, "b": .user, "c": .backend]] }
        await node.roster.heartbeat()
        // A heartbeat with the data set intact writes nothing back: a membership ended
        // elsewhere is not brought back by a node that has not heard of it yet.
        let probe = try await RedisConnection.connect(to: RedisURL(port: server.port))
        try await probe.send(RESPCommand("SREM", "herald:members:b", "alice"))
        await node.roster.heartbeat()
        #expect(try await node.roster.members(of: "b") == [])

        try await probe.send(RESPCommand("FLUSHALL"))  // what a restart without persistence does
        // The backend removes alice from c before this node noticed: the write-back must not
        // bring it back.
        #expect(try await node.roster.leave(user: "alice", room: "c") == false)
        node.sink.changes.withLock { $0.removeAll() }
        await node.roster.heartbeat()
        #expect(try await node.roster.members(of: "a") == ["alice"])
        #expect(try await node.roster.members(of: "b") == ["alice"])
        #expect(try await node.roster.members(of: "c") == [])
        #expect(try await node.roster.rooms(of: "alice") == ["a", "b"])
        #expect(
            try await node.roster.memberships(of: "alice", on: MultiThreadedEventLoopGroup.singleton.any()).get() == ["a": .backend, "b": .user],
            "who granted each is written back too")
        #expect(try await node.roster.roomCount() == 2)
        // Announced on alice's channel: her connections on other nodes, which may have loaded
        // no rooms meanwhile, apply them too.
        try await waitUntil("the written-back memberships announced") {
            Set(node.sink.changes.withLock { $0 }) == [
                MembershipChange(user: "alice", room: "a", isMember: true), MembershipChange(user: "alice", room: "b", isMember: true, grant: .user),
            ]
        }
        await probe.close()
    }

    @Test func channelNamesAndNoticesRoundTrip() {
        let layout = RedisLayout(prefix: "app1")
        #expect(layout.channel(for: .room("a.b:c")) == "app1.room.a.b:c")
        #expect(layout.channel(for: .user("bob")) == "app1.user.bob")
        #expect(layout.channel(for: .all) == "app1.all")
        #expect(layout.membersKey("lobby") == "app1:members:lobby")
    }
}
