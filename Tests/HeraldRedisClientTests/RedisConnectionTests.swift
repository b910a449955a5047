import HeraldRedisClient
import HeraldTestSupport
import NIOCore
import Testing

@Suite("Redis connection against a real redis-server")
struct RedisConnectionTests {
    @Test func helloThreeAndTypedReplies() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let redis = try await RedisConnection.connect(to: RedisURL(port: server.port))
        #expect(redis.protocolVersion == 3)
        #expect(try await redis.send(RESPCommand("SET", "k", "v")) == .simpleString("OK"))
        #expect(try await redis.send(RESPCommand("GET", "k")).string == "v")
        #expect(try await redis.send(RESPCommand("GET", "missing")) == .null)  // RESP3 null
        try await redis.send(RESPCommand("HSET", "h", "f", "1"))
        guard case .map(let pairs) = try await redis.send(RESPCommand("HGETALL", "h")) else {
            Issue.record("HGETALL under RESP3 should be a map")
            return
        }
        #expect(pairs.count == 1 && pairs[0].key.string == "f" && pairs[0].value.string == "1")
        await #expect(throws: RedisError.self) { try await redis.send(RESPCommand("NOSUCHCOMMAND")) }
        #expect(try await redis.send(RESPCommand("PING")) == .simpleString("PONG"))  // still usable after an error
        await redis.close()
    }

    @Test func pipelinedRepliesMatchTheirCommands() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let redis = try await RedisConnection.connect(to: RedisURL(port: server.port))
        let results = try await withThrowingTaskGroup(of: (Int, RESPValue).self) { group in
            for n in 0..<2000 {
                group.addTask { (n, try await redis.send(RESPCommand("ECHO", "value-\(n)"))) }
            }
            var results: [Int: String] = [:]
            for try await (n, value) in group { results[n] = value.string }
            return results
        }
        #expect(results.count == 2000)
        #expect(results.allSatisfy { $0.value == "value-\($0.key)" })
        await redis.close()
    }

    @Test func authAndSelectFromTheURL() async throws {
        let server = try await RedisServerProcess(arguments: ["--requirepass", "s3cret"])
        defer { server.stop() }
        await #expect(throws: RedisError.self) { _ = try await RedisConnection.connect(to: RedisURL(port: server.port)) }
        let url = try RedisURL(parsing: "redis://:s3cret@127.0.0.1:\(server.port)/2")
        let redis = try await RedisConnection.connect(to: url)
        try await redis.send(RESPCommand("SET", "in-two", "x"))
        let other = try await RedisConnection.connect(to: try RedisURL(parsing: "redis://:s3cret@127.0.0.1:\(server.port)/0"))
        #expect(try await other.send(RESPCommand("GET", "in-two")) == .null)
        await redis.close()
        await other.close()
    }

    @Test func pendingCommandsFailFastWhenRedisDies() async throws {
        let server = try await RedisServerProcess()
        let redis = try await RedisConnection.connect(to: RedisURL(port: server.port))
        server.stop()
        // Bounded: the kill reaches the client as EOF within milliseconds.
        let deadline = ContinuousClock.now + .seconds(5)
        while redis.isActive, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!redis.isActive)
        await #expect(throws: RedisError.self) { try await redis.send(RESPCommand("PING")) }
    }

    @Test func urlsAreParsedAndTLSIsRefusedClearly() throws {
        let url = try RedisURL(parsing: "redis://user:p%40ss@example.local:6380/3")
        #expect(url == RedisURL(host: "example.local", port: 6380, user: "user", password: "p@ss", database: 3))
        #expect(try RedisURL(parsing: "redis://localhost") == RedisURL(host: "localhost"))
        #expect(throws: RedisError.self) { try RedisURL(parsing: "rediss://localhost") }
        #expect(throws: RedisError.self) { try RedisURL(parsing: "http://localhost") }
        #expect(throws: RedisError.self) { try RedisURL(parsing: "redis://localhost:99999") }
        #expect(!String(describing: url).contains("p@ss"))
    }
}
