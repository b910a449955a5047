import HeraldRedisClient
import HeraldTestSupport
import NIOCore
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
@Suite("Sentinel failover against real redis-server processes", .serialized, .timeLimit(.minutes(2)))
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
