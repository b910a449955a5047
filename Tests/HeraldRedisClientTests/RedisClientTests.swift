import HeraldRedisClient
import HeraldTestSupport
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Redis client: reconnection, fail-fast, command timeout, scripts", .serialized)
struct RedisClientTests {
    @Test func failsFastWhileRedisIsDownAndReconnectsWhenItIsBack() async throws {
        var server = try await RedisServerProcess()
        let port = server.port
        let reconnects = Atomic<Int>(0)
        var configuration = RedisClient.Configuration()
        // A command that waited for a reply or a timeout would wait a minute: the bounds below
        // (far shorter) show that none waited.
        configuration.commandTimeout = .seconds(60)
        let client = RedisClient(url: RedisURL(port: port), configuration: configuration) { reconnects.add(1, ordering: .relaxed) }
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }
        #expect(try await client.send(RESPCommand("PING")) == .simpleString("PONG"))

        server.stop()
        try await waitUntil("the client notices") { !client.isConnected }
        // Nothing queues while disconnected: every command fails at once, with where and why.
        let started = ContinuousClock.now
        var failures = 0
        for _ in 0..<20 {
            do { try await client.send(RESPCommand("PING")) } catch is RedisError { failures += 1 }
        }
        #expect(failures == 20)
        #expect(ContinuousClock.now - started < .seconds(20))
        do {
            try await client.send(RESPCommand("PING"))
        } catch let error as RedisError {
            guard case .transport(let message) = error else { throw error }
            #expect(message.contains("not connected to Redis at 127.0.0.1:\(port)"))
        }

        server = try await RedisServerProcess(port: port)
        defer { server.stop() }
        try await waitUntil("the client reconnects") { (try? await client.send(RESPCommand("PING"))) == .simpleString("PONG") }
        #expect(reconnects.load(ordering: .relaxed) == 1)
        #expect(client.reconnectCount == 1)
    }

    @Test func aPausedRedisIsDetectedByTheCommandTimeout() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        var configuration = RedisClient.Configuration()
        configuration.commandTimeout = .milliseconds(300)
        let client = RedisClient(url: RedisURL(port: server.port), configuration: configuration)
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }

        kill(server.pid, SIGSTOP)
        let started = ContinuousClock.now
        do {
            try await client.send(RESPCommand("PING"))
            Issue.record("a paused Redis answered")
        } catch let error as RedisError {
            guard case .transport(let message) = error else { throw error }
            #expect(message.contains("did not answer within 300 ms"))
        }
        #expect(ContinuousClock.now - started < .seconds(20))  // paused for good: only the timeout ends the wait
        // The stalled connection was dropped: the next commands fail without waiting again.
        await #expect(throws: RedisError.self) { try await client.send(RESPCommand("PING")) }

        kill(server.pid, SIGCONT)
        try await waitUntil("the client reconnects after SIGCONT") { (try? await client.send(RESPCommand("PING"))) == .simpleString("PONG") }
    }

    /// A Redis busy with a long queue but answering one command after another is alive: the
    /// watchdog only drops a connection on which Redis was *silent* for the timeout, not one
    /// whose oldest command waited that long (in a connect storm, the queue is long).
    @Test func aBusyRedisThatKeepsAnsweringKeepsItsConnection() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        // The margins are wide so a loaded machine cannot fake a silence: Redis answers about
        // every 80 ms, the watchdog needs 1 s of silence, and the queue grows to about 2 s.
        var configuration = RedisClient.Configuration()
        configuration.commandTimeout = .seconds(1)
        let client = RedisClient(url: RedisURL(port: server.port), configuration: configuration)
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }
        // A script that keeps Redis busy for about 80 ms, calibrated on this machine (the
        // slowest of three probes, so a lucky fast probe cannot make the scripts too long).
        let busy = "local n = 0 for i = 1, tonumber(ARGV[1]) do n = n + i end return 1"
        let probe = 1_000_000
        var slowest = Duration.zero
        for _ in 0..<3 {
            let started = ContinuousClock.now
            _ = try await client.send(RESPCommand("EVAL", busy, "0", String(probe)))
            slowest = max(slowest, ContinuousClock.now - started)
        }
        let seconds = Double(slowest.components.seconds) + Double(slowest.components.attoseconds) / 1e18
        let iterations = max(1000, Int(Double(probe) * 0.08 / max(seconds, 1e-6)))
        // Padded past Redis's 16 KB read: it reads, runs and answers them one at a time (a
        // burst of small commands is read at once, run, and answered together).
        let padding = String(repeating: "p", count: 20_000)
        // One sent every 40 ms for 2.4 s: Redis falls further and further behind (the last
        // waits well over the 1 s timeout), but answers every 80 ms or so.
        let replies = try await withThrowingTaskGroup(of: RESPValue.self) { group in
            for _ in 0..<60 {
                group.addTask { try await client.send(RESPCommand("EVAL", busy, "0", String(iterations), padding)) }
                try await Task.sleep(for: .milliseconds(40))
            }
            var replies: [RESPValue] = []
            for try await reply in group { replies.append(reply) }
            return replies
        }
        #expect(replies == Array(repeating: .integer(1), count: 60))
        #expect(client.reconnectCount == 0)
    }

    @Test func scriptsRunBySHAAndSurviveAFlushedScriptCache() async throws {
        let server = try await RedisServerProcess()
        defer { server.stop() }
        let client = RedisClient(url: RedisURL(port: server.port))
        try await client.connect()
        let script = RedisScript("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
        #expect(script.sha1.count == 40)
        let first = try await client.evaluate(script, keys: ["counter"], arguments: ["a"])
        #expect(first == .array([.bulkString(ByteBuffer(string: "counter")), .bulkString(ByteBuffer(string: "a")), .integer(1)]))
        // EVAL cached it under our SHA: the server agrees on the digest.
        #expect(try await client.send(RESPCommand("SCRIPT", "EXISTS", script.sha1)) == .array([.integer(1)]))
        try await client.send(RESPCommand("SCRIPT", "FLUSH"))
        let second = try await client.evaluate(script, keys: ["counter"], arguments: ["b"])
        #expect(second == .array([.bulkString(ByteBuffer(string: "counter")), .bulkString(ByteBuffer(string: "b")), .integer(2)]))
        await client.close()
    }

    @Test func preloadedScriptsAreLoadedOnEveryConnectionBeforeItIsUsed() async throws {
        var server = try await RedisServerProcess()
        let port = server.port
        let client = RedisClient(url: RedisURL(port: port))
        let script = RedisScript("return 'preloaded'")
        await client.preload([script])
        try await client.connect()
        let running = Task { await client.run() }
        defer { running.cancel() }
        #expect(try await client.send(RESPCommand("SCRIPT", "EXISTS", script.sha1)) == .array([.integer(1)]))

        // Restarted with an empty script cache: the script is there again before any command
        // could run EVALSHA on the new connection.
        server.stop()
        try await waitUntil("the client notices") { !client.isConnected }
        server = try await RedisServerProcess(port: port)
        defer { server.stop() }
        try await waitUntil("the client reconnects") { client.isConnected }
        #expect(try await client.send(RESPCommand("SCRIPT", "EXISTS", script.sha1)) == .array([.integer(1)]))
    }

    @Test func backoffGrowsToItsCapWithJitter() {
        var backoff = Backoff(first: .milliseconds(100), cap: .milliseconds(400))
        let delays = (0..<6).map { _ in backoff.next() }
        let caps: [Duration] = [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(400), .milliseconds(400), .milliseconds(400)]
        for (delay, cap) in zip(delays, caps) { #expect(delay > .zero && delay <= cap) }
        backoff.reset()
        #expect(backoff.next() <= .milliseconds(100))
    }
}
