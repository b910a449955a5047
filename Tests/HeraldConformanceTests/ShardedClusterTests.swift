import Herald
import HeraldRedis
import HeraldRedisClient
import HeraldTestSupport
import HeraldWire
import Synchronization
import Testing

/// What only the sharded cluster does (the conformance suites check it keeps every promise):
/// channels spread over every master, messages staying in their shard, and channels following
/// their slot when it moves.
@Suite("Sharded Redis Cluster: channels over every master", .serialized, .timeLimit(.minutes(2)))
struct ShardedClusterTests {
    @Test func roomsSpreadOverEveryMasterAndTheirMessagesStayInTheirShard() async throws {
        try await TestBackend.with(.cluster, nodes: 2) { backend in
            let cluster = try #require(backend.cluster)
            let rooms = (0..<48).map { DeliveryTarget.room("room-\($0)") }
            for room in rooms { try await backend.nodes[1].holds(room) }
            for (index, room) in rooms.enumerated() { try await backend.nodes[0].publish(room, "\(index)") }
            try await waitUntil("every room's message arrived on the other node") {
                rooms.allSatisfy { backend.nodes[1].sink.delivered(to: $0).count == 1 }
            }
            let masters = cluster.servers.filter { redisCLI(port: $0.port, ["ROLE"]).hasPrefix("master") }
            #expect(masters.count == 3)
            for master in masters {
                // Each master holds some of the rooms' shard channels and published with SPUBLISH;
                // no room channel is a classic channel (which every node of a cluster relays).
                let shardChannels = redisCLI(port: master.port, ["PUBSUB", "SHARDCHANNELS", "conformance.room.*"])
                #expect(!shardChannels.isEmpty, "master \(master.port) serves some rooms")
                #expect(redisCLI(port: master.port, ["PUBSUB", "CHANNELS", "conformance.room.*"]).isEmpty)
                let stats = redisCLI(port: master.port, ["INFO", "commandstats"])
                #expect(stats.contains("cmdstat_spublish:calls="), "master \(master.port) published its rooms' messages")
                // A room's keys are in its channel's slot, on that master.
                for line in shardChannels.split(separator: "\n") {
                    let channel = String(line)
                    #expect(redisCLI(port: master.port, ["EXISTS", "conformance:stream:" + channel]) == "1", "\(channel)'s position beside it")
                }
            }
        }
    }

    @Test(arguments: ["lobby", "a}b", "}x", "{x}", "#general", "x}", "ü{}"])
    func everyKeyOfAChannelIsInItsSlotWhateverItsName(_ name: String) {
        let layout = RedisLayout(shardedWithPrefix: "herald")
        for target in [DeliveryTarget.room(name), .user(name)] {
            let slot = RedisCluster.slot(of: layout.channel(for: target))
            var keys = [layout.streamKey(target), layout.historyKey(target), layout.idempotencyKey(target, "k}{"), layout.serverKeys(for: target).server]
            keys.append(layout.serverKeys(for: target).lossless)
            if case .user(let user) = target { keys += [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user)] }
            for key in keys { #expect(RedisCluster.slot(of: key) == slot, "\(key)") }
        }
        #expect(layout.channel(for: .room(name)) != layout.channel(for: .room(name + "}")))
        #expect(RedisCluster.slot(of: layout.membersKey(name)) == RedisCluster.slot(of: "{herald}"), "the roster's keys stay in the shared slot")
    }

    @Test func aRoomWhoseSlotMovesKeepsItsEpochAndItsSubscribers() async throws {
        try await TestBackend.with(.cluster, nodes: 2) { backend in
            let cluster = try #require(backend.cluster)
            let room = DeliveryTarget.room("moving")
            try await backend.nodes[1].holds(room)
            let before = try #require(try await backend.nodes[0].publish(room, "1"))
            let channel = RedisLayout(shardedWithPrefix: "conformance").channel(for: room)
            let source = try #require(cluster.shard(of: channel)).master.port
            let target = try await cluster.migrateSlot(of: channel)
            #expect(target != source)

            // Redis unsubscribed the node from the channel when its slot left the source: the
            // node subscribes it again on the target, and publishes follow the slot there.
            var after: StreamPosition?
            try await waitUntil("a publish is taken where the slot went") {
                after = try? await backend.nodes[0].publish(room, "2")
                return after != nil
            }
            #expect(after?.epoch == before.epoch, "the slot moved whole: the same epoch")
            #expect(after?.offset == before.offset + 1)
            try await waitUntil("the other node is subscribed where the slot went") {
                redisCLI(port: target, ["PUBSUB", "SHARDNUMSUB", channel]).split(separator: "\n").last == "1"
            }
            try await backend.nodes[0].publish(room, "3")
            try await waitUntil("the other node got every message once") {
                backend.nodes[1].sink.delivered(to: room).count == 3
            }
            #expect(backend.nodes[1].sink.delivered(to: room).compactMap(\.position?.offset) == [1, 2, 3].map { before.offset + $0 - 1 })
            let page = try await backend.nodes[1].broker.history(of: room, since: before.offset, limit: 10)
            #expect(page.recovery(from: before) == .recovered, "the history moved with it")
            #expect(page.entries.map(\.offset) == [before.offset + 1, before.offset + 2])
        }
    }
}

extension ShardedClusterTests {
    /// A shard channel subscribed on a master that does not serve its slot is answered `MOVED`:
    /// the subscription fails, the channel is handed back, and the connection (with its other
    /// channels) stays.
    @Test func aSubscriptionSentToTheWrongMasterFailsWithoutTheConnection() async throws {
        let cluster = try await RedisClusterSetup(readyForFailover: false)
        defer { cluster.stop() }
        let channels = (0..<40).map { "c{\($0)}" }
        let master = try #require(cluster.shard(of: channels[0])).master
        let mine = channels.filter { cluster.shard(of: $0)?.master.port == master.port }
        let elsewhere = try #require(channels.first { cluster.shard(of: $0)?.master.port != master.port })
        let dropped = Mutex<[String]>([])
        let received = Mutex<[String]>([])
        let subscriber = RedisSubscriber(
            url: RedisURL(port: master.port), onMessage: { message in received.withLock { $0.append(message.channel) } },
            onShardChannelDropped: { channel in dropped.withLock { $0.append(channel) } })
        try await subscriber.connect()
        try await subscriber.ssubscribe(mine)
        await #expect(throws: RedisError.self) { try await subscriber.ssubscribe([elsewhere]) }
        #expect(dropped.withLock { $0 } == [elsewhere])
        #expect(subscriber.isConnected, "the connection stays")
        #expect(redisCLI(port: master.port, ["SPUBLISH", mine[0], "x"]) == "1")
        try await waitUntil("the channel placed right still receives") { received.withLock { $0 } == [mine[0]] }
        await subscriber.close()
    }
}
