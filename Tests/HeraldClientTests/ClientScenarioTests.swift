import Foundation
import HeraldTestSupport
import HeraldWire
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@testable import HeraldClient

/// The scenarios of the JavaScript client (clients/js/test), against real `herald serve`
/// processes (and a real redis-server), on ephemeral ports. They kill, restart and flood
/// servers, so they run on their own, after the other suites: beside them they would starve the
/// others' timing on a small machine
/// (`HERALD_CLIENT_SCENARIOS=1 swift test --skip-build --filter ClientScenarioTests`, as
/// scripts/test does).
@Suite("HeraldClient scenarios", .serialized, .enabled(if: ProcessInfo.processInfo.environment["HERALD_CLIENT_SCENARIOS"] == "1"))
struct ClientScenarioTests {
    @Test("1. join, publish, send, presence, and request errors", .timeLimit(.minutes(1)))
    func requests() async throws {
        let server = try await startHerald(["--jwt-secret", secret, "--api-key", apiKey])
        defer { server.stop() }
        let client = HeraldClient(url: wsURL(server), credentials: .tokenProvider { try mintToken("alice", rooms: "lobby,team-*") })
        try await withRunningClient(client) { recorder in
            let lobby = client.room("lobby")
            let lobbyMessages = lobby.messages
            #expect(try await lobby.join().recovered == nil)
            #expect(client.welcome?.user == "alice")

            try await lobby.publish(["text": "hi"])
            var iterator = lobbyMessages.makeAsyncIterator()
            let message = try #require(await iterator.next())
            #expect(try message.decode([String: String].self) == ["text": "hi"])
            #expect(message.room == "lobby")
            #expect(message.from == "alice")
            #expect(message.position != nil)
            #expect(message.timestamp.map { abs($0 - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000 } == true)

            try await client.send(to: "alice", ["text": "note to self"])
            try await recorder.wait("the user message") { $0.messages.contains { $0.scope == .user } }
            let direct = try #require(recorder.messages.first { $0.scope == .user })
            #expect(direct.data.text == #"{"text":"note to self"}"#)

            #expect(try await lobby.presence() == Presence(members: ["alice"], online: ["alice"]))

            #expect(await errorCode { try await client.room("secret").join() } == "forbidden")
            #expect(!client.room("secret").isJoined, "a refused join is not retried")
            #expect(await errorCode { _ = try await client.room("team-x").presence() } == "not_a_member")
            #expect(await errorCode { try await client.room(" bad").join() } == "bad_request")
            #expect(await errorCode { try await client.broadcast(RawJSON(validating: #""x""#)) } == "forbidden")
            #expect(client.sizes.pending == 0)
            #expect(recorder.errors.isEmpty, "\(recorder.errors)")
        }
        // run() was cancelled: the client is closed, requests fail at once, streams are finished.
        #expect(await errorCode { try await client.room("lobby").publish(1) } == "closed")
        for await _ in client.messages { Issue.record("a message after the end") }
        for await _ in client.room("lobby").messages { Issue.record("a room message after the end") }
    }

    @Test("7. presence events: state after a join, then changes, across nodes", .timeLimit(.minutes(1)))
    func presenceEvents() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let common = [
            "--redis", redis.url, "--presence-ttl", "3", "--presence-events", "lobby", "--presence-window", "200", "--jwt-secret", secret, "--api-key", apiKey,
        ]
        let nodeA = try await startHerald(common + ["--node-id", "node-a"])
        defer { nodeA.stop() }
        let nodeB = try await startHerald(common + ["--node-id", "node-b"])
        defer { nodeB.stop() }
        let alice = HeraldClient(url: wsURL(nodeA), credentials: .tokenProvider { try mintToken("alice", rooms: "lobby", info: ["name": "Alice A."]) })
        let bob = HeraldClient(url: wsURL(nodeB), credentials: .tokenProvider { try mintToken("bob", rooms: "lobby", info: ["name": "Bob B."]) })
        try await withRunningClient(alice) { recorder in
            let updates: @Sendable (Recorder) -> [PresenceUpdate] = { recorder in
                recorder.events.compactMap { if case .presence(let update) = $0 { update } else { nil } }
            }
            try await alice.room("lobby").join()
            #expect(alice.welcome?.hasPresenceEvents("lobby") == true)
            try await recorder.wait("the room's state") { !updates($0).isEmpty }
            let state = try #require(updates(recorder).first)
            #expect(state == PresenceUpdate(room: "lobby", members: ["alice"], online: ["alice"], info: ["alice": ["name": "Alice A."]], change: nil))

            try await withRunningClient(bob) { _ in
                try await bob.room("lobby").join()
                try await recorder.wait("bob online") { updates($0).last?.online == ["alice", "bob"] }
                let arrived = try #require(updates(recorder).last)
                #expect(arrived.members == ["alice", "bob"] && arrived.info["bob"] == ["name": "Bob B."])
                #expect(arrived.change?.joined.contains("bob") == true)
                #expect(alice.room("lobby").presenceState == arrived)
                // Bob's node dies without a goodbye: offline after the presence TTL, still a member.
                nodeB.stop(signal: SIGKILL)
                try await recorder.wait("bob offline", within: 15) { updates($0).last?.online == ["alice"] }
                #expect(updates(recorder).last?.members == ["alice", "bob"])
            }
            #expect(recorder.errors.isEmpty, "\(recorder.errors)")
        }
    }

    @Test("run() in a ServiceGroup ends cleanly at graceful shutdown", .timeLimit(.minutes(1)))
    func gracefulShutdown() async throws {
        let server = try await startHerald()
        defer { server.stop() }
        let client = HeraldClient(url: wsURL(server), credentials: .user("kim"))
        let group = ServiceGroup(services: [client], gracefulShutdownSignals: [], logger: Logger(label: "test"))
        let recorder = Recorder()
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            recorder.record(client, in: &tasks)
            tasks.addTask { try await group.run() }
            try await client.room("lobby").join()
            try await waitUntil("kim online") { try await api(server, "GET", "/api/users/kim").body.contains(#""online":true"#) }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(recorder.events.last.map { if case .stopped(nil) = $0 { true } else { false } } == true)
        try await waitUntil("kim offline") { try await api(server, "GET", "/api/users/kim").body.contains(#""online":false"#) }
    }

    @Test("2. two nodes with redis: failover during a stream loses and repeats nothing", .timeLimit(.minutes(3)))
    func failover() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let common = ["--redis", redis.url, "--history-size", "5000", "--presence-ttl", "3"]
        let nodeA = try await startHerald(common + ["--node-id", "node-a"])
        defer { nodeA.stop() }
        let nodeB = try await startHerald(common + ["--node-id", "node-b"])
        defer { nodeB.stop() }
        var configuration = HeraldClient.Configuration()
        configuration.minReconnectDelay = .milliseconds(100)
        configuration.maxReconnectDelay = .seconds(1)
        let client = HeraldClient(urls: [wsURL(nodeA), wsURL(nodeB)], credentials: .user("ivan"), configuration: configuration)
        try await withRunningClient(client) { recorder in
            try await client.room("stream").join()
            #expect(client.welcome?.node == "node-a")
            let counts: @Sendable (Recorder) -> (room: Int, user: Int) = { recorder in
                let messages = recorder.messages
                return (messages.count { $0.scope != .user }, messages.count { $0.scope == .user })
            }
            var killed = false
            for i in 0..<2000 {
                #expect(try await api(nodeB, "POST", "/api/rooms/stream/publish", #"{"data":{"n":\#(i)},"id":"r-\#(i)"}"#).status == 202)
                if i % 4 == 3 {
                    #expect(try await api(nodeB, "POST", "/api/users/ivan/send", #"{"data":{"n":\#((i - 3) / 4)},"id":"u-\#(i)"}"#).status == 202)
                }
                // Kill node A once the client has a position in both channels to resume from.
                if !killed, counts(recorder).room >= 400, counts(recorder).user >= 50 {
                    killed = true
                    nodeA.stop(signal: SIGKILL)
                }
            }
            #expect(killed, "node A was killed during the stream")
            do {
                try await recorder.wait("every message", within: 30) { counts($0).room >= 2000 && counts($0).user >= 500 }
            } catch {
                let seen = counts(recorder)
                let events = recorder.events.filter {
                    if case .error = $0 {
                        true
                    } else if case .recoveryFailed = $0 {
                        true
                    } else if case .connected = $0 {
                        true
                    } else if case .disconnected = $0 {
                        true
                    } else {
                        false
                    }
                }
                let room = recorder.messages.filter { $0.scope != .user }
                let numbers = Set(room.compactMap { try? $0.decode(Numbered.self).n })
                let missing = (0..<2000).filter { !numbers.contains($0) }
                let offsets = room.compactMap(\.position?.offset)
                let gaps = zip(offsets, offsets.dropFirst()).filter { $1 != $0 + 1 }
                Issue.record(
                    "room \(seen.room), user \(seen.user), missing \(missing), offset gaps \(gaps), \(client.statistics), events: \(events.prefix(20))")
                throw error
            }
            #expect(client.welcome?.node == "node-b")
            let messages = recorder.messages
            let room = try messages.filter { $0.scope != .user }.map { try $0.decode(Numbered.self).n }
            let user = try messages.filter { $0.scope == .user }.map { try $0.decode(Numbered.self).n }
            #expect(room == Array(0..<2000), "room: every message once, in order")
            #expect(user == Array(0..<500), "user: every message once, in order")
            #expect(recorder.recoveries.isEmpty, "nothing was lost")
            #expect(recorder.errors.isEmpty, "\(recorder.errors)")
            #expect(recorder.welcomes.count >= 2)
        }
    }

    @Test("3. offline longer than the history window: recovered:false with the reason", .timeLimit(.minutes(1)))
    func historyExpired() async throws {
        let server = try await startHerald(["--history-size", "3"])
        defer { server.stop() }
        let gate = Gate()
        var configuration = HeraldClient.Configuration()
        configuration.minReconnectDelay = .milliseconds(50)
        configuration.maxReconnectDelay = .milliseconds(200)
        gate.hook(&configuration)
        let client = HeraldClient(url: wsURL(server), credentials: .user("dora"), configuration: configuration)
        try await withRunningClient(client) { recorder in
            let room = client.room("news")
            try await room.join()
            try await api(server, "POST", "/api/rooms/news/publish", #"{"data":0}"#)
            try await api(server, "POST", "/api/users/dora/send", #"{"data":0}"#)
            try await recorder.wait("the first messages") { $0.messages.count == 2 }
            #expect(room.position != nil && client.userPosition != nil)

            // Offline while 10 messages go by each channel: more than the 3 kept.
            gate.offline = true
            client.core.dropConnection(reason: "test: network down")
            try await recorder.wait("the disconnect") { $0.disconnects >= 1 }
            for i in 1...10 {
                try await api(server, "POST", "/api/rooms/news/publish", #"{"data":\#(i)}"#)
                try await api(server, "POST", "/api/users/dora/send", #"{"data":\#(i)}"#)
            }
            gate.offline = false
            try await recorder.wait("both recoveries") { $0.recoveries.count >= 2 }
            let roomRecovery = try #require(recorder.recoveries.first { $0.channel == .room("news") })
            #expect(["history_expired", "epoch_changed"].contains(roomRecovery.reason), "\(roomRecovery.reason)")
            let userRecovery = try #require(recorder.recoveries.first { $0.channel == .user })
            #expect(["history_expired", "epoch_changed"].contains(userRecovery.reason), "\(userRecovery.reason)")

            // Live messages carry on after the server's position, without replaying the lost ones.
            try await api(server, "POST", "/api/rooms/news/publish", #"{"data":11}"#)
            try await recorder.wait("the live message") { $0.messages.contains { $0.data.text == "11" } }
            #expect(recorder.messages.filter { $0.scope != .user }.map(\.data.text) == ["0", "11"])
            #expect(room.position?.offset == 12)
        }
    }

    @Test("4. an acknowledged message is delivered after a reconnect, once", .timeLimit(.minutes(1)))
    func acknowledged() async throws {
        let server = try await startHerald()
        defer { server.stop() }
        let gate = Gate()
        var configuration = HeraldClient.Configuration()
        configuration.minReconnectDelay = .milliseconds(50)
        configuration.maxReconnectDelay = .milliseconds(200)
        gate.hook(&configuration)
        let client = HeraldClient(url: wsURL(server), credentials: .user("erin"), configuration: configuration)
        try await withRunningClient(client) { recorder in
            try await recorder.wait("the welcome") { !$0.welcomes.isEmpty }
            gate.offline = true
            client.core.dropConnection(reason: "test: network down")
            try await recorder.wait("the disconnect") { $0.disconnects >= 1 }
            #expect(try await api(server, "POST", "/api/users/erin/send", #"{"data":{"invoice":77},"ack":true}"#).status == 202)
            gate.offline = false
            try await recorder.wait("the acknowledged message") { $0.messages.contains { $0.requiresAck } }
            let message = try #require(recorder.messages.first)
            #expect(message.data.text == #"{"invoice":77}"#)
            // The automatic ack went out; a manual one is harmless and confirmed by the server.
            try await message.ack()

            // Reconnect once more: nothing is delivered again.
            let welcomes = recorder.welcomes.count
            client.core.dropConnection(reason: "test: reconnect")
            try await recorder.wait("the reconnect") { $0.welcomes.count == welcomes + 1 }
            try await api(server, "POST", "/api/users/erin/send", #"{"data":"marker"}"#)
            try await recorder.wait("the marker") { $0.messages.contains { $0.data.text == #""marker""# } }
            #expect(recorder.messages.map(\.data.text) == [#"{"invoice":77}"#, #""marker""#])
        }

        // A client with no position (a new device) is not sent the acknowledged message either.
        let fresh = HeraldClient(url: wsURL(server), credentials: .user("erin"))
        try await withRunningClient(fresh) { recorder in
            try await recorder.wait("the welcome") { !$0.welcomes.isEmpty }
            try await api(server, "POST", "/api/users/erin/send", #"{"data":"marker2"}"#)
            try await recorder.wait("the marker") { !$0.messages.isEmpty }
            #expect(recorder.messages.map(\.data.text) == [#""marker2""#])
        }
    }

    static let tokenServer = ["--jwt-secret", secret, "--api-key", apiKey, "--token-expiry-warning", "2", "--jwt-leeway", "1"]

    @Test("5a. an expiring token is refreshed without losing the connection", .timeLimit(.minutes(1)))
    func tokenRefresh() async throws {
        let server = try await startHerald(Self.tokenServer)
        defer { server.stop() }
        let minted = Locked(0)
        let client = HeraldClient(
            url: wsURL(server),
            credentials: .tokenProvider {
                minted.withLock { $0 += 1 }
                return try mintToken("fay", rooms: "lobby", ttl: 4)
            })
        try await withRunningClient(client) { recorder in
            try await client.room("lobby").join()
            let connection = try #require(client.welcome?.connection)
            // Each 4 s token is refreshed 2 s before it expires: the connection outlives its first
            // token (4 s + 1 s leeway) after three refreshes.
            try await recorder.wait("three refreshes", within: 15) { $0.refreshes >= 3 }
            #expect(recorder.welcomes.count == 1, "no reconnect")
            #expect(client.welcome?.connection == connection, "same connection")
            #expect(minted.value >= 4)
            try await api(server, "POST", "/api/rooms/lobby/publish", #"{"data":"still here"}"#, key: apiKey)
            try await recorder.wait("the message") { $0.messages.contains { $0.data.text == #""still here""# } }
            #expect(recorder.errors.isEmpty, "\(recorder.errors)")
        }
    }

    @Test("5b. a revoked token stops reconnecting", .timeLimit(.minutes(1)))
    func revokedToken() async throws {
        let server = try await startHerald(Self.tokenServer)
        defer { server.stop() }
        var configuration = HeraldClient.Configuration()
        configuration.minReconnectDelay = .milliseconds(10)
        configuration.maxReconnectDelay = .milliseconds(50)
        let client = HeraldClient(
            url: wsURL(server), credentials: .tokenProvider { try mintToken("gus", rooms: "lobby", jti: "rev-1") }, configuration: configuration)
        let recorder = Recorder()
        let outcome: Result<Void, any Error> = await withTaskGroup(of: Result<Void, any Error>?.self) { group in
            group.addTask {
                do { try await client.run() } catch { return .failure(error) }
                return .success(())
            }
            group.addTask {
                for await event in client.events { recorder.append(event) }
                return nil
            }
            group.addTask {
                do {
                    try await recorder.wait("the welcome") { !$0.welcomes.isEmpty }
                    #expect(try await api(server, "POST", "/api/tokens/rev-1/revoke", "{}", key: apiKey).status == 200)
                } catch {
                    return .failure(error)
                }
                return nil
            }
            var outcome: Result<Void, any Error>?
            for await result in group where result != nil && outcome == nil { outcome = result }
            return outcome ?? .success(())
        }
        guard case .failure(let error) = outcome else { throw RedisTestFailure("run() ended without an error") }
        let stop = try #require(error as? HeraldClientError)
        #expect(stop == .stopped(closeCode: 4001, reason: "token revoked"), "\(stop)")
        #expect(stop.code == "unauthorized")
        #expect("\(stop)".contains("token revoked"))
        #expect(client.statistics.connectAttempts == 1, "no retry after a fatal close")
        #expect(await errorCode { try await client.room("lobby").join() } == "closed")
    }

    @Test("5c. a static token without a provider reports that it cannot refresh", .timeLimit(.minutes(1)))
    func staticToken() async throws {
        let server = try await startHerald(Self.tokenServer)
        defer { server.stop() }
        // A 2 s token is shorter-lived than the 2 s warning: token_expiring comes right after the welcome.
        let client = HeraldClient(url: wsURL(server), credentials: .token(try mintToken("hal", ttl: 2)))
        try await withRunningClient(client) { recorder in
            try await recorder.wait("the warning and the error") { recorder in
                recorder.events.contains { if case .tokenExpiring = $0 { true } else { false } }
                    && recorder.errors.contains { $0.code == "token_failed" }
            }
        }
    }

    @Test("6. a server restarted 10 times in 30 s: backoff, no storm, bounded state", .timeLimit(.minutes(2)))
    func restarts() async throws {
        let port = try RedisServerProcess.freePort()
        let server = Locked(try await startHerald(port: port))
        defer { _ = server.withLock { $0.stop() } }
        var configuration = HeraldClient.Configuration()
        configuration.maxQueuedRequests = 20
        configuration.requestTimeout = .seconds(2)
        let client = HeraldClient(url: URL(string: "ws://127.0.0.1:\(port)/ws")!, credentials: .user("jude"), configuration: configuration)
        try await withRunningClient(client) { recorder in
            try await client.room("r").join()
            let rejected = Locked<[String: Int]>([:])
            let maxSizes = Locked(HeraldClient.Sizes(pending: 0, queued: 0, positions: 0, rooms: 0))
            let outages = try await withThrowingTaskGroup(of: [Int]?.self) { group in
                // The application keeps publishing throughout; while offline its requests fill the queue.
                group.addTask {
                    await withDiscardingTaskGroup { publishers in
                        while !Task.isCancelled {
                            publishers.addTask {
                                let code = await errorCode { try await client.room("r").publish(1) }
                                if code != "ok" { rejected.withLock { $0[code, default: 0] += 1 } }
                            }
                            let sizes = client.sizes
                            maxSizes.withLock {
                                $0 = HeraldClient.Sizes(
                                    pending: max($0.pending, sizes.pending), queued: max($0.queued, sizes.queued),
                                    positions: max($0.positions, sizes.positions), rooms: max($0.rooms, sizes.rooms))
                            }
                            try? await Task.sleep(for: .milliseconds(10))
                        }
                    }
                    return nil
                }
                group.addTask {
                    // Down 1.5 s, up 1.5 s, ten times. The client may miss an up window (its backoff
                    // grew, and only resets after 5 s of health): that is the point, no storm.
                    var outages: [Int] = []
                    for _ in 0..<10 {
                        let before = client.statistics.connectAttempts
                        _ = server.withLock { $0.stop(signal: SIGKILL) }
                        try await Task.sleep(for: .milliseconds(1500))
                        let restarted = try await startHerald(port: port)
                        server.withLock { $0 = restarted }
                        try await Task.sleep(for: .milliseconds(1500))
                        outages.append(client.statistics.connectAttempts - before)
                    }
                    try await recorder.wait("the client to come back", within: 20) { _ in client.welcome != nil }
                    return outages
                }
                var outages: [Int] = []
                for try await result in group {
                    if let result {
                        outages = result
                        break
                    }
                }
                group.cancelAll()
                return outages
            }
            // A 1.5 s outage with backoff from 250 ms (full jitter, doubling, at most 8 s) takes a
            // handful of attempts; a client without backoff would make hundreds.
            let attempts = client.statistics.connectAttempts
            #expect(outages.allSatisfy { $0 <= 12 }, "attempts per outage: \(outages)")
            #expect(attempts <= 1 + 10 * 12, "total attempts \(attempts)")
            #expect(recorder.retryDelays.allSatisfy { $0 >= .zero && $0 <= .seconds(8) })
            let sizes = maxSizes.value
            #expect(sizes.queued <= 20, "queue \(sizes.queued)")
            #expect(sizes.pending <= 1000, "pending \(sizes.pending)")
            #expect(rejected.value["queue_full", default: 0] > 0, "a full queue rejects new requests")
            #expect(sizes.rooms == 1)
            #expect(sizes.positions <= 2)
            try await waitUntil("the queue to drain", within: 5) { client.sizes.pending == 0 && client.sizes.queued == 0 }
            print("attempts per outage: \(outages); rejections: \(rejected.value)")
        }
    }
}
