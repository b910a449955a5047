import Foundation
import HeraldRedisClient
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

@Suite("Sentinel URLs and announcements (no servers)")
struct RedisSentinelURLTests {
    @Test func aSentinelURLNamesTheSentinelsTheMasterAndTheMastersLogin() throws {
        let url = try RedisURL(parsing: "redis+sentinel://app:p%40ss@10.0.0.1:26379,[::1]:26380,s3/mymaster/2")
        #expect(
            url.sentinel
                == RedisSentinelAddress(
                    sentinels: [.init(host: "10.0.0.1", port: 26379), .init(host: "::1", port: 26380), .init(host: "s3", port: 26379)], masterName: "mymaster"))
        #expect(url.user == "app" && url.password == "p@ss" && url.database == 2)
        #expect(url.description == "redis+sentinel://app:***@10.0.0.1:26379,::1:26380,s3:26379/mymaster/2", "the password is never shown")
        #expect(url.location.contains("master mymaster"))
        let master = url.server(host: "10.0.0.9", port: 6380)
        #expect(master.sentinel == nil && master.host == "10.0.0.9" && master.port == 6380 && master.password == "p@ss" && master.database == 2)
        #expect(try RedisURL(parsing: "redis+sentinel://s1/m").sentinel?.sentinels == [.init(host: "s1", port: 26379)])
    }

    @Test(arguments: [
        "redis+sentinel://s1:26379", "redis+sentinel://s1:26379/", "redis+sentinel://s1,,s2/m", "redis+sentinel://s1:0/m",
        "redis+sentinel://s1/m/x", "redis+sentinel://s1/m/1/2", "redis+sentinel://s1/m%20n", "rediss+sentinel://s1/m",
        "redis+sentinel://" + Array(repeating: "s", count: 17).joined(separator: ",") + "/m",
    ])
    func aMalformedSentinelURLIsRefusedWithWhatToWrite(_ text: String) {
        #expect(throws: RedisError.self) { try RedisURL(parsing: text) }
    }

    @Test func onlyASwitchOfThisMasterToAnotherAddressCounts() {
        func message(_ text: String) -> RESPValue {
            .push([.bulkString(ByteBuffer(string: "message")), .bulkString(ByteBuffer(string: "+switch-master")), .bulkString(ByteBuffer(string: text))])
        }
        let here = RedisSentinelAddress.Server(host: "127.0.0.1", port: 7000)
        #expect(RedisSentinel.isSwitch(message("m 127.0.0.1 7000 127.0.0.1 7001"), of: "m", awayFrom: here))
        #expect(!RedisSentinel.isSwitch(message("other 127.0.0.1 7000 127.0.0.1 7001"), of: "m", awayFrom: here))
        #expect(!RedisSentinel.isSwitch(message("m 127.0.0.1 7001 127.0.0.1 7000"), of: "m", awayFrom: here), "a switch to where we are")
        #expect(!RedisSentinel.isSwitch(message("m 127.0.0.1"), of: "m", awayFrom: here))
        #expect(
            !RedisSentinel.isSwitch(
                .push([.bulkString(ByteBuffer(string: "subscribe")), .bulkString(ByteBuffer(string: "+switch-master")), .integer(1)]), of: "m", awayFrom: here))
    }

    @Test func aSentinelsAnswerIsCheckedBeforeItIsUsed() {
        func reply(_ host: String, _ port: String) -> RESPValue { .array([.bulkString(ByteBuffer(string: host)), .bulkString(ByteBuffer(string: port))]) }
        #expect(RedisSentinel.address(in: reply("10.0.0.2", "6379")) == .init(host: "10.0.0.2", port: 6379))
        #expect(RedisSentinel.address(in: reply("10.0.0.2", "0")) == nil)
        #expect(RedisSentinel.address(in: reply("10.0.0.2", "70000")) == nil)
        #expect(RedisSentinel.address(in: reply("", "6379")) == nil)
        #expect(RedisSentinel.address(in: reply("bad host", "6379")) == nil)
        #expect(RedisSentinel.address(in: reply(String(repeating: "h", count: 300), "6379")) == nil)
        #expect(RedisSentinel.address(in: .null) == nil)
        #expect(RedisSentinel.address(in: .array([.bulkString(ByteBuffer(string: "h"))])) == nil)
    }
}

/// The client and subscriber against a real Sentinel deployment (a master, a replica, three
/// sentinels), the master killed with SIGKILL.
/// Run alone with the other failover suites (`HERALD_FAILOVER_TESTS=1`).
@Suite(
    "Sentinel failover against real redis-server processes", .serialized, .timeLimit(.minutes(2)),
    .enabled(if: ProcessInfo.processInfo.environment["HERALD_FAILOVER_TESTS"] == "1"))
struct RedisSentinelFailoverTests {
    @Test func theClientAndTheSubscriberFollowTheMasterToItsReplica() async throws {
        let setup = try await RedisSentinelSetup()
        defer { setup.stop() }
        let url = try RedisURL(parsing: setup.url)
        var configuration = RedisClient.Configuration()
        configuration.commandTimeout = .seconds(1)
        let client = RedisClient(url: url, configuration: configuration)
        try await client.connect()
        let log = MessageLog()
        let subscriber = RedisSubscriber(url: url) { log.append($0) }
        try await subscriber.connect()
        try await subscriber.subscribe(["news"])
        let running = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await client.run() }
                group.addTask { await subscriber.run() }
            }
        }
        defer { running.cancel() }

        #expect(try await client.send(RESPCommand("SET", "k", "before")) == .simpleString("OK"))
        #expect(try await client.send(RESPCommand("PUBLISH", "news", "one")) == .integer(1))
        #expect(redisCLI(port: setup.master.port, ["GET", "k"]) == "before", "the sentinels named the master")

        try await setup.killMasterAndAwaitFailover()
        try await waitUntil("the client writes to the promoted replica", within: 20) {
            (try? await client.send(RESPCommand("SET", "k", "after"))) == .simpleString("OK")
        }
        #expect(redisCLI(port: setup.replica.port, ["GET", "k"]) == "after")
        #expect(client.reconnectCount >= 1)
        try await waitUntil("the subscriber listens on the promoted replica", within: 20) {
            (try? await client.send(RESPCommand("PUBLISH", "news", "two"))) == .integer(1)
        }
        try await log.waitForCount(2)
        #expect(log.all.map { String(buffer: $0.payload) } == ["one", "two"])
        await client.close()
        await subscriber.close()
    }

    @Test func aMasterTurnedReplicaIsLeftEvenWhenItStaysUp() async throws {
        let setup = try await RedisSentinelSetup()
        defer { setup.stop() }
        let client = RedisClient(url: try RedisURL(parsing: setup.url))
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }
        #expect(try await client.send(RESPCommand("SET", "k", "1")) == .simpleString("OK"))
        // A failover the sentinels are told to make: the old master stays up and becomes a replica.
        _ = redisCLI(port: setup.sentinels[0].port, ["SENTINEL", "FAILOVER", RedisSentinelSetup.masterName])
        try await waitUntil("the sentinels name the replica", within: 30) { setup.masterPort() == setup.replica.port }
        // Until the old master is demoted, both are masters (Sentinel's window, in which writes to
        // the old one are lost): the client must end up writing to the new one.
        try await waitUntil("the client writes to the new master", within: 20) {
            (try? await client.send(RESPCommand("SET", "k", "2"))) == .simpleString("OK") && redisCLI(port: setup.replica.port, ["GET", "k"]) == "2"
        }
        #expect(redisCLI(port: setup.replica.port, ["ROLE"]).hasPrefix("master"))
        await client.close()
    }

    @Test func noSentinelAnsweringIsAClearError() async throws {
        let port = try RedisServerProcess.freePort()
        let url = try RedisURL(parsing: "redis+sentinel://127.0.0.1:\(port)/nowhere")
        await #expect {
            _ = try await RedisConnection.connect(to: url, connectTimeout: .milliseconds(500))
        } throws: { error in
            "\(error)".contains("no sentinel named the master nowhere") && "\(error)".contains("127.0.0.1:\(port)")
        }
        let setup = try await RedisSentinelSetup(readyForFailover: false)
        defer { setup.stop() }
        let unknown = try RedisURL(parsing: "redis+sentinel://127.0.0.1:\(setup.sentinels[0].port)/unknown")
        await #expect {
            _ = try await RedisConnection.connect(to: unknown)
        } throws: { error in
            "\(error)".contains("watches no master of that name")
        }
    }
}

@Suite("Redis Cluster slots, maps and URLs (no servers)")
struct RedisClusterUnitTests {
    @Test func slotsAreRedisClusterSlotsHashTagsIncluded() {
        // Each as `CLUSTER KEYSLOT` answers (Redis 7.0).
        let expected = [
            "foo": 12182, "bar": 5061, "{herald}": 2546, "{herald}:members:lobby": 2546, "{conformance}:x": 3885, "123456789": 12739,
            "{}foo": 9500, "a{}b{c}": 7353, "{user1000}.following": 3443,
        ]
        for (key, slot) in expected { #expect(RedisCluster.slot(of: key) == slot, "\(key)") }
    }

    @Test func aClusterURLListsNodesAndKeepsTheLogin() throws {
        let url = try RedisURL(parsing: "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002")
        #expect(url.cluster?.seeds == [.init(host: "10.0.0.1", port: 7000), .init(host: "10.0.0.2", port: 6379), .init(host: "::1", port: 7002)])
        #expect(url.password == "s3cret" && url.database == 0)
        #expect(url.description == "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:6379,::1:7002")
        #expect(try RedisURL(parsing: "redis+cluster://n1:7000/").cluster != nil)
        for bad in ["redis+cluster://n1:7000/1", "redis+cluster://", "redis+cluster://n1,,n2", "redis+cluster://n1:99999"] {
            #expect(throws: RedisError.self, "\(bad)") { try RedisURL(parsing: bad) }
        }
    }

    @Test func aClusterURLSaysWhetherChannelsAreSharded() throws {
        #expect(try RedisURL(parsing: "redis+cluster://n1:7000,n2").cluster?.sharded == true, "sharded by default")
        #expect(try RedisURL(parsing: "redis+cluster://n1:7000?sharding=channels").cluster?.sharded == true)
        let single = try RedisURL(parsing: "redis+cluster://u:p@n1:7000,n2?sharding=none")
        #expect(single.cluster?.sharded == false && single.password == "p")
        #expect(single.description == "redis+cluster://u:***@n1:7000,n2:6379?sharding=none")
        #expect(try RedisURL(parsing: "redis+cluster://:pa?ss@n1:7000").cluster?.sharded == true, "a ? in the password is not an option")
        for bad in ["redis+cluster://n1?sharding=all", "redis+cluster://n1?", "redis+cluster://n1?sharding=none&x=1"] {
            #expect(throws: RedisError.self, "\(bad)") { try RedisURL(parsing: bad) }
        }
    }

    @Test func everySlotHasATagThatLandsInIt() {
        for slot in 0..<RedisCluster.slotCount {
            let tag = RedisCluster.tag(ofSlot: slot)
            #expect(!tag.contains("{") && !tag.contains("}"))
            if RedisCluster.slot(of: "x:{" + tag + "}") != slot { Issue.record("slot \(slot): tag \(tag) lands elsewhere") }
        }
    }

    @Test func theSlotMapCoversEachShardsRangesAndSkipsWhatIsMalformed() {
        func text(_ value: String) -> RESPValue { .bulkString(ByteBuffer(string: value)) }
        func master(_ port: Int64) -> RESPValue {
            .map([(text("port"), .integer(port)), (text("ip"), text("10.0.0.1")), (text("role"), text("master")), (text("health"), text("online"))])
        }
        let shards = RESPValue.array([
            .map([(text("slots"), .array([.integer(0), .integer(99), .integer(200), .integer(299)])), (text("nodes"), .array([master(7000)]))]),
            .map([(text("slots"), .array([.integer(100), .integer(199)])), (text("nodes"), .array([master(7001)]))]),
            // Out of range, reversed: ignored.
            .map([(text("slots"), .array([.integer(300), .integer(99_999), .integer(500), .integer(400)])), (text("nodes"), .array([master(7002)]))]),
        ])
        let map = RedisCluster.slotMasters(in: shards)
        #expect(map?.count == RedisCluster.slotCount)
        #expect(map?[0]?.port == 7000 && map?[250]?.port == 7000 && map?[150]?.port == 7001)
        #expect(map?[300] == nil && map?[16383] == nil)
        #expect(RedisCluster.slotMasters(in: .array([])) == nil)
        #expect(RedisCluster.slotMasters(in: .simpleString("OK")) == nil)
    }

    @Test func theSlotsMasterIsReadFromShardsInEitherProtocolAndCheckedFirst() {
        func text(_ value: String) -> RESPValue { .bulkString(ByteBuffer(string: value)) }
        func node(_ port: Int64, _ role: String, health: String = "online", ip: String = "10.0.0.1", endpoint: String? = nil) -> RESPValue {
            .map([
                (text("port"), .integer(port)), (text("ip"), text(ip)), (text("endpoint"), text(endpoint ?? ip)), (text("role"), text(role)),
                (text("health"), text(health)),
            ])
        }
        let shards = RESPValue.array([
            .map([(text("slots"), .array([.integer(0), .integer(5460)])), (text("nodes"), .array([node(7001, "replica"), node(7000, "master")]))]),
            .map([(text("slots"), .array([.integer(5461), .integer(10922)])), (text("nodes"), .array([node(7010, "master", health: "fail")]))]),
            // RESP2: a list of names and values.
            .array([
                text("slots"), .array([.integer(10923), .integer(16383)]), text("nodes"),
                .array([.array([text("port"), .integer(7020), text("ip"), text("10.0.0.3"), text("endpoint"), text("?"), text("role"), text("master")])]),
            ]),
        ])
        #expect(RedisCluster.master(of: 2546, in: shards) == .init(host: "10.0.0.1", port: 7000))
        #expect(RedisCluster.master(of: 6000, in: shards) == nil, "a failed master is not used")
        #expect(RedisCluster.master(of: 16383, in: shards) == .init(host: "10.0.0.3", port: 7020), "endpoint ? falls back to ip")
        #expect(RedisCluster.masters(in: shards).count == 2)
        let hostile = RESPValue.array([
            .map([
                (text("slots"), .array([.integer(0), .integer(16383)])),
                (text("nodes"), .array([node(70000, "master"), node(7000, "master", ip: "bad host")])),
            ])
        ])
        #expect(RedisCluster.master(of: 1, in: hostile) == nil)
        #expect(RedisCluster.master(of: 1, in: .simpleString("OK")) == nil)
    }
}

/// The client on a real Redis Cluster (three masters with a replica each).
@Suite(
    "Redis Cluster against real redis-server processes", .serialized, .timeLimit(.minutes(2)),
    .enabled(if: ProcessInfo.processInfo.environment["HERALD_FAILOVER_TESTS"] == "1"))
struct RedisClusterTests {
    @Test func theClientFollowsItsSlotThroughAFailoverAndAMigration() async throws {
        let cluster = try await RedisClusterSetup()
        defer { cluster.stop() }
        var url = try RedisURL(parsing: cluster.url)
        url.cluster?.routingKey = "{app}"
        let client = RedisClient(url: url)
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }
        #expect(try await client.send(RESPCommand("SET", "{app}:k", "1")) == .simpleString("OK"))
        let first = try #require(cluster.shard(of: "{app}"))
        #expect(redisCLI(port: first.master.port, ["GET", "{app}:k"]) == "1", "connected to the slot's master")

        // A manual failover: the old master stays up as a replica and answers MOVED.
        #expect(redisCLI(port: first.replica.port, ["CLUSTER", "FAILOVER"]) == "OK")
        try await waitUntil("the client writes to the promoted replica", within: 20) {
            (try? await client.send(RESPCommand("SET", "{app}:k", "2"))) == .simpleString("OK")
                && redisCLI(port: first.replica.port, ["GET", "{app}:k"]) == "2"
        }
        // The slot moves to another master: the client follows it there.
        try await cluster.waitUntilHealthy(withReplicas: false)
        let target = try await cluster.migrateSlot(of: "{app}")
        try await waitUntil("the client writes where the slot moved", within: 20) {
            (try? await client.send(RESPCommand("SET", "{app}:k", "3"))) == .simpleString("OK") && redisCLI(port: target, ["GET", "{app}:k"]) == "3"
        }
        #expect(client.reconnectCount >= 2)
        await client.close()
    }
}

extension RedisClusterTests {
    /// The sharded client and subscriber: every master serves some channels; one master is
    /// killed, and commands and subscriptions of its slots follow them to its promoted replica.
    @Test func theClusterClientAndSubscriberFollowEverySlotThroughAFailover() async throws {
        let cluster = try await RedisClusterSetup()
        defer { cluster.stop() }
        let client = RedisClusterClient(url: try RedisURL(parsing: cluster.url))
        try await client.connect()
        let received = Mutex<[String: Int]>([:])
        let lost = Mutex<Set<String>>([])
        let back = Mutex(0)
        let subscriber = RedisClusterSubscriber(
            cluster: client,
            onMessage: { message in received.withLock { $0[message.channel, default: 0] += 1 } },
            onLost: { channels in lost.withLock { $0.formUnion(channels) } },
            onBack: { back.withLock { $0 += 1 } }
        )
        let running = Task {
            async let commands: Void = client.run()
            async let subscriptions: Void = subscriber.run()
            _ = await (commands, subscriptions)
        }
        defer { running.cancel() }
        let channels = (0..<30).map { "channel{\($0)}" }
        try await subscriber.subscribe(channels)
        #expect(Set(channels.compactMap { client.master(of: RedisCluster.slot(of: $0)) }).count == 3, "every master serves some")
        for channel in channels {
            #expect(try await client.send(RESPCommand("SPUBLISH", channel, "1"), routedBy: channel) == .integer(1))
            #expect(try await client.send(RESPCommand("SET", channel + ":key", "1"), routedBy: channel) == .simpleString("OK"))
        }
        try await waitUntil("every channel's message arrived") { received.withLock { $0 } == Dictionary(uniqueKeysWithValues: channels.map { ($0, 1) }) }

        let (master, replica) = try #require(cluster.shard(of: channels[0]))
        let onKilled = Set(subscriber.placement.filter { $0.value.port == master.port }.keys)
        #expect(onKilled.contains(channels[0]) && onKilled.count < channels.count)
        try await cluster.killMasterAndAwaitFailover(servingSlotOf: channels[0])
        try await waitUntil("the map names the promoted replica and every channel is subscribed again", within: 30) {
            client.master(of: RedisCluster.slot(of: channels[0]))?.port == replica.port && subscriber.isConnected && back.withLock { $0 } >= 1
        }
        #expect(lost.withLock { $0 } == onKilled, "only the killed master's channels were reported lost")
        for channel in channels {
            #expect(try await client.send(RESPCommand("SPUBLISH", channel, "2"), routedBy: channel) == .integer(1))
            #expect(try await client.send(RESPCommand("GET", channel + ":key"), routedBy: channel) != .null)
        }
        try await waitUntil("every channel's second message arrived") { received.withLock { $0 } == Dictionary(uniqueKeysWithValues: channels.map { ($0, 2) }) }
        #expect(subscriber.placement.values.allSatisfy { $0.port != master.port })
    }

    @Test func aCommandAnsweredMovedIsSentWhereTheSlotWent() async throws {
        let cluster = try await RedisClusterSetup(readyForFailover: false)
        defer { cluster.stop() }
        let client = RedisClusterClient(url: try RedisURL(parsing: cluster.url))
        try await client.connect()
        #expect(try await client.send(RESPCommand("SET", "{moving}:k", "1"), routedBy: "{moving}") == .simpleString("OK"))
        let refreshes = client.refreshCount
        let target = try await cluster.migrateSlot(of: "{moving}")
        // Not yet told (no run loop): the old master answers MOVED, the client reads the map and
        // sends it again, once.
        #expect(try await client.send(RESPCommand("INCR", "{moving}:k"), routedBy: "{moving}") == .integer(2))
        #expect(client.master(of: RedisCluster.slot(of: "{moving}"))?.port == target)
        #expect(client.refreshCount > refreshes)
        await client.close()
    }
}
