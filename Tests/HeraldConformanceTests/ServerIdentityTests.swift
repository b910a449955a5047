import Herald
import HeraldRedis
import HeraldRedisClient
import HeraldTestSupport
import HeraldWire
import Testing

/// The guard against offsets given twice after Redis lost its last writes (a failover, a
/// restart): a channel whose position another server wrote begins a new epoch, unless that
/// server's data moved here whole (a cluster slot migration). The other server is forged here
/// by rewriting the channel's stamp, as a promoted replica would hold it.
@Suite("Redis server identity: a new epoch after a change of server", .serialized, .timeLimit(.minutes(1)))
struct ServerIdentityTests {
    @Test func aChannelWrittenOnAnotherServerBeginsANewEpochUnlessItsDataMovedHereWhole() async throws {
        try await TestBackend.with(.redis) { backend in
            let node = backend.node
            try await node.holds(.room("r"))
            let first = try #require(try await node.publish(.room("r"), "1"))
            #expect(first.offset == 1)
            #expect(try await node.publish(.room("once"), "\"a\"", key: "k")?.offset == 1)
            #expect(try await node.publish(.room("once"), "\"a\"", key: "k") == nil, "a retry in the same epoch is a duplicate")
            let redis = try await RedisConnection.connect(to: RedisURL(port: try #require(backend.redis).port))
            let layout = RedisLayout(prefix: "conformance")
            let stream = layout.streamKey(.room("r"))
            let server = try #require(try await redis.send(RESPCommand("GET", layout.serverKey)).string)
            #expect(server.contains(":"), "run_id:master_replid, stored by the node's connection")
            #expect(try await redis.send(RESPCommand("HGET", stream, "server")).string == server)

            // Written on another server (this one may lack its last writes): a new epoch, whose
            // first message is 2 (1 stands for what may be missing), and no history of the old one.
            _ = try await redis.send(RESPCommand("HSET", stream, "server", "lost:1"))
            let afterFailover = try #require(try await node.publish(.room("r"), "2"))
            #expect(afterFailover.epoch != first.epoch && afterFailover.offset == 2)
            let page = try await node.broker.history(of: .room("r"), since: 0, limit: 10)
            #expect(page.entries.map(\.offset) == [2])
            #expect(
                page.recovery(from: StreamPosition(offset: 0, epoch: first.epoch)) == .epochChanged,
                "a client that had seen nothing is not told nothing happened")
            #expect(page.recovery(from: first) == .epochChanged)

            // A retry of a publish the lost server applied (the key came over, not the message's
            // place in the new epoch) is published in the new epoch, not dropped as a duplicate.
            _ = try await redis.send(RESPCommand("HSET", layout.streamKey(.room("once")), "server", "lost:1"))
            let retried = try #require(try await node.publish(.room("once"), "\"a\"", key: "k"), "published again, not a duplicate")
            #expect(retried.offset == 2)
            #expect(try await node.publish(.room("once"), "\"a\"", key: "k") == nil)

            // Written on a server whose data moved here whole: the epoch and offsets go on.
            _ = try await redis.send(RESPCommand("HSET", stream, "server", "moved:1"))
            _ = try await redis.send(RESPCommand("SADD", layout.losslessServersKey, "moved:1"))
            let afterMove = try #require(try await node.publish(.room("r"), "3"))
            #expect(afterMove.epoch == afterFailover.epoch && afterMove.offset == 3)
            #expect(try await redis.send(RESPCommand("HGET", stream, "server")).string == server, "stamped with this server again")

            // A read alone (a recovering client, a node healing) applies the same rule.
            _ = try await redis.send(RESPCommand("HSET", stream, "server", "lost:2"))
            let position = try await node.broker.position(of: .room("r"))
            #expect(position.epoch != afterMove.epoch && position.offset == 1)
            await redis.close()
        }
    }
}
