import Foundation
import HeraldRedisClient
import HeraldTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Several `herald serve` processes sharing one real `redis-server`: the seed's "N workers" wall.
@Suite("Cluster: herald nodes over a real Redis", .serialized)
struct ClusterTests {
    /// One Redis and `count` nodes on free ports, each named n1, n2, …
    struct Cluster {
        let redis: RedisServerProcess
        let nodes: [HeraldNodeProcess]

        static func start(nodes count: Int, presenceTTL: Int = 3, extra: [String] = []) async throws -> Cluster {
            let redis = try await RedisServerProcess()
            var nodes: [HeraldNodeProcess] = []
            for index in 1...count {
                nodes.append(
                    try await HeraldNodeProcess(
                        arguments: ["--redis", redis.url, "--node-id", "n\(index)", "--presence-ttl", String(presenceTTL), "--log-level", "warning"] + extra)
                )
            }
            return Cluster(redis: redis, nodes: nodes)
        }

        func stop() {
            for node in nodes { node.stop() }
            redis.stop()
        }

        /// Kills the cluster's Redis (SIGKILL) and starts an empty one on the same port, as a
        /// Redis without persistence comes back. The caller stops the new one.
        func restartRedisWithoutPersistence() async throws -> RedisServerProcess {
            let port = redis.port
            redis.stop()
            return try await RedisServerProcess(port: port)
        }

        func client(_ user: String, on node: Int, label: String? = nil) async throws -> TestClient {
            let client = try await TestClient.connect(port: nodes[node].port, query: "user=\(user)", label: label ?? "\(user)@n\(node + 1)")
            let welcome = try await client.next(type: "welcome")
            #expect(welcome["node"] as? String == "n\(node + 1)")
            return client
        }

        func http(_ node: Int, _ method: String, _ path: String, body: String? = nil) async throws -> (status: Int, body: String) {
            try await httpRequest(port: nodes[node].port, method, path, body: body)
        }

        /// Publishes a sentinel broadcast from `node` and checks it is each client's next frame:
        /// nothing else (no duplicate) arrived before it. Deliveries published from one node
        /// reach every node in publish order.
        func expectNothingElse(from node: Int, _ clients: [TestClient], _ step: String) async throws {
            let marker = "\"sentinel-\(UUID().uuidString)\""
            #expect(try await http(node, "POST", "/api/broadcast", body: #"{"data":"# + marker + "}").status == 202)
            for client in clients {
                #expect(try await client.next() == #"{"type":"message","scope":"all","data":"# + marker + "}", "\(step): \(client.label) got an extra frame")
            }
        }

        /// Channels with a subscriber in Redis, Herald's only.
        func pubsubChannels() async throws -> Set<String> {
            let connection = try await RedisConnection.connect(to: RedisURL(port: redis.port))
            defer { Task { await connection.close() } }
            let reply = try await connection.send(RESPCommand("PUBSUB", "CHANNELS", "herald.*"))
            guard case .array(let names?) = reply else { throw TestFailure("PUBSUB CHANNELS answered \(reply)") }
            return Set(names.compactMap(\.string))
        }
    }

    @Test func everyScopeReachesExactlyTheRightConnectionsOnceAcrossNodes() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        // alice has a device on each node; bob is on n2, carol on n1.
        let a1 = try await cluster.client("alice", on: 0)
        let a2 = try await cluster.client("alice", on: 1)
        let b2 = try await cluster.client("bob", on: 1)
        let c1 = try await cluster.client("carol", on: 0)
        let everyone = [a1, a2, b2, c1]

        // Memberships granted on n1 reach alice's and bob's connections on n2.
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/alice").status == 200)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/bob").status == 200)

        // Room, published on n2: alice (both devices) and bob, once each; not carol.
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"to-room"}"#).status == 202)
        let roomMessage = #"{"type":"message","scope":"room","room":"R","data":"to-room"}"#
        for client in [a1, a2, b2] { #expect(try await client.next() == roomMessage, "\(client.label)") }
        try await cluster.expectNothingElse(from: 1, everyone, "room")

        // User, published on n1: both of alice's devices, on both nodes.
        #expect(try await cluster.http(0, "POST", "/api/users/alice/send", body: #"{"data":"to-alice"}"#).status == 202)
        let userMessage = #"{"type":"message","scope":"user","data":"to-alice"}"#
        for client in [a1, a2] { #expect(try await client.next() == userMessage, "\(client.label)") }
        try await cluster.expectNothingElse(from: 0, everyone, "user")

        // A client on n1 publishing to the room over WebSocket reaches members on both nodes.
        try await c1.send(#"{"type":"publish","room":"R","data":"from-carol","id":1}"#)
        #expect(try await c1.next() == #"{"type":"ok","id":1}"#)
        let fromCarol = #"{"type":"message","scope":"room","room":"R","from":"carol","data":"from-carol"}"#
        for client in [a1, a2, b2] { #expect(try await client.next() == fromCarol, "\(client.label)") }

        // A WebSocket join on n2 takes effect for alice's connection on n1 before `joined` is sent.
        try await a2.send(#"{"type":"join","room":"S","id":2}"#)
        #expect(try await a2.next() == #"{"type":"joined","room":"S","id":2}"#)
        #expect(try await cluster.http(1, "POST", "/api/rooms/S/publish", body: #"{"data":"to-S"}"#).status == 202)
        let sMessage = #"{"type":"message","scope":"room","room":"S","data":"to-S"}"#
        for client in [a1, a2] { #expect(try await client.next() == sMessage, "\(client.label)") }
        try await cluster.expectNothingElse(from: 1, everyone, "join over WebSocket")

        // Presence answers for the whole cluster, on either node.
        for node in 0..<2 {
            let room = try json(try await cluster.http(node, "GET", "/api/rooms/R").body)
            #expect(room["members"] as? [String] == ["alice", "bob"])
            #expect(room["online"] as? [String] == ["alice", "bob"])
            let alice = try json(try await cluster.http(node, "GET", "/api/users/alice").body)
            #expect(alice["connections"] as? Int == 2)
            #expect(alice["rooms"] as? [String] == ["R", "S"])
        }
        for client in everyone { await client.close() }
    }

    @Test func aMembershipChangeOnOneNodeAppliesOnTheOthersBeforeTheCallReturns() async throws {
        let cluster = try await Cluster.start(nodes: 3)
        defer { cluster.stop() }
        let bob2 = try await cluster.client("bob", on: 1)
        let bob3 = try await cluster.client("bob", on: 2)
        for round in 0..<20 {
            // Joined on n1, published on n1 at once: bob's connections on n2 and n3 receive it.
            #expect(try await cluster.http(0, "PUT", "/api/rooms/R\(round)/members/bob").status == 200)
            #expect(try await cluster.http(0, "POST", "/api/rooms/R\(round)/publish", body: #"{"data":\#(round)}"#).status == 202)
            let expected = #"{"type":"message","scope":"room","room":"R\#(round)","data":\#(round)}"#
            #expect(try await bob2.next() == expected)
            #expect(try await bob3.next() == expected)
            // Left on n1: the next publish reaches nobody (the marker, published after it from
            // the same node, is the next frame).
            #expect(try await cluster.http(0, "DELETE", "/api/rooms/R\(round)/members/bob").status == 200)
            #expect(try await cluster.http(0, "POST", "/api/rooms/R\(round)/publish", body: #"{"data":"after-leave"}"#).status == 202)
            try await cluster.expectNothingElse(from: 0, [bob2, bob3], "after leave, round \(round)")
        }
        await bob2.close()
        await bob3.close()
    }

    @Test func nodesSubscribeExactlyTheChannelsTheyHaveLocalInterestIn() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R1/members/alice").status == 200)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R2/members/bob").status == 200)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R3/members/nobody-online").status == 200)
        let base: Set<String> = ["herald.all", "herald.control", "herald.node.n1", "herald.node.n2"]
        #expect(try await cluster.pubsubChannels() == base)

        let alice = try await cluster.client("alice", on: 0)
        let bob = try await cluster.client("bob", on: 1)
        // The welcome is sent once the user's channels are subscribed: no waiting needed.
        #expect(try await cluster.pubsubChannels() == base.union(["herald.user.alice", "herald.room.R1", "herald.user.bob", "herald.room.R2"]))

        // A join while online subscribes the room where the user is (before the call returns).
        #expect(try await cluster.http(1, "PUT", "/api/rooms/R3/members/bob").status == 200)
        #expect(try await cluster.pubsubChannels().contains("herald.room.R3"))
        #expect(try await cluster.http(1, "DELETE", "/api/rooms/R3/members/bob").status == 200)
        #expect(try await cluster.pubsubChannels().contains("herald.room.R3") == false)

        // The last connection of a user going away unsubscribes the user's channel and rooms.
        await alice.close()
        try await eventually("alice's channels unsubscribed") {
            try await cluster.pubsubChannels() == base.union(["herald.user.bob", "herald.room.R2"])
        }
        await bob.close()
        try await eventually("bob's channels unsubscribed") { try await cluster.pubsubChannels() == base }
    }

    @Test func aKilledNodeStopsCountingAsOnlineAndTheOthersCarryOn() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        let bob = try await cluster.client("bob", on: 1)
        for user in ["alice", "bob"] { #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/\(user)").status == 200) }
        let before = try json(try await cluster.http(0, "GET", "/api/rooms/R").body)
        #expect(before["online"] as? [String] == ["alice", "bob"])

        cluster.nodes[1].stop(signal: SIGKILL)
        // No goodbye: bob stays online until n2's presence expires (--presence-ttl 3).
        try await eventually("bob offline after n2 died", within: 8) {
            let room = try json(try await cluster.http(0, "GET", "/api/rooms/R").body)
            return room["online"] as? [String] == ["alice"]
        }
        let bobNow = try json(try await cluster.http(0, "GET", "/api/users/bob").body)
        #expect(bobNow["online"] as? Bool == false)
        #expect(try await cluster.http(0, "POST", "/api/rooms/R/publish", body: #"{"data":"still-here"}"#).status == 202)
        #expect(try await alice.next() == #"{"type":"message","scope":"room","room":"R","data":"still-here"}"#)
        _ = bob
        await alice.close()
    }

    @Test func aNodeStoppedGracefullySaysGoodbye() async throws {
        // A presence TTL far longer than the wait below: only the node's goodbye can make bob offline.
        let cluster = try await Cluster.start(nodes: 2, presenceTTL: 120)
        defer { cluster.stop() }
        let bob = try await cluster.client("bob", on: 1)
        #expect(try json(try await cluster.http(0, "GET", "/api/users/bob").body)["online"] as? Bool == true)
        #expect(cluster.nodes[1].stop(signal: SIGTERM) == 0)
        #expect(try await bob.closed().code == 1012)
        try await eventually("bob offline after n2 said goodbye", within: 10) {
            try json(try await cluster.http(0, "GET", "/api/users/bob").body)["online"] as? Bool == false
        }
        let redis = try await RedisConnection.connect(to: RedisURL(port: cluster.redis.port))
        #expect(try await redis.send(RESPCommand("ZSCORE", "herald:nodes", "n2")) == .null)
        #expect(try await redis.send(RESPCommand("EXISTS", "herald:presence:n2")) == .integer(0))
        await redis.close()
    }

    @Test func redisKilledAndRestartedNodesReconnectAndDeliveryResumes() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        let bob = try await cluster.client("bob", on: 1)
        let port = cluster.redis.port

        cluster.redis.stop()
        // Publishing fails fast while Redis is down; the nodes stay up and answer.
        let started = ContinuousClock.now
        let refused = try await cluster.http(0, "POST", "/api/users/bob/send", body: #"{"data":"lost"}"#)
        #expect(refused.status == 503)
        #expect(ContinuousClock.now - started < .seconds(10))  // refused, not queued until Redis returns
        #expect(try await cluster.http(1, "GET", "/healthz").status == 200)
        // What needs the roster is refused with a reason, not left hanging: a join, a new connection.
        try await alice.send(#"{"type":"join","room":"R","id":9}"#)
        let refusedJoin = try await alice.next(type: "error")
        #expect(refusedJoin["code"] as? String == "unavailable")
        #expect(refusedJoin["id"] as? Int == 9)
        let latecomer = try await TestClient.connect(port: cluster.nodes[0].port, query: "user=dave")
        let closed = try await latecomer.closed()
        // 1013 "try again later", with a delay to wait: the client comes back, jittered.
        #expect(closed.code == 1013)
        #expect(closed.reason?.contains("unavailable") == true, "\(closed)")
        #expect(closed.reason?.contains("retry in") == true, "\(closed)")

        let restarted = try await RedisServerProcess(port: port)
        defer { restarted.stop() }
        // Both nodes reconnect and resubscribe by themselves: a user message crosses again.
        for (client, user, node) in [(bob, "bob", 0), (alice, "alice", 1)] {
            var delivered = false
            let deadline = ContinuousClock.now + .seconds(15)
            while !delivered, ContinuousClock.now < deadline {
                let status = try await cluster.http(node, "POST", "/api/users/\(user)/send", body: #"{"data":"back"}"#).status
                if status == 202, let frame = try? await client.next(timeout: 0.5) {
                    #expect(frame == #"{"type":"message","scope":"user","data":"back"}"#)
                    delivered = true
                } else {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(delivered, "\(user) never received a message after Redis came back")
        }
        for node in 0..<2 {
            let stats = try json(try await cluster.http(node, "GET", "/api/stats").body)
            #expect((stats["brokerReconnects"] as? Int ?? 0) >= 1, "n\(node + 1) did not count its reconnect")
        }
        let failures = try json(try await cluster.http(0, "GET", "/api/stats").body)["brokerPublishFailures"] as? Int ?? 0
        #expect(failures >= 1)
        #expect(cluster.nodes.allSatisfy { $0.process.isRunning })
        await alice.close()
        await bob.close()
    }

    @Test func membershipsOfConnectedUsersAreRestoredAfterRedisLosesThemAndAKickStillWorks() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        let bob = try await cluster.client("bob", on: 1)
        for client in [alice, bob] {
            try await client.send(#"{"type":"join","room":"R"}"#)
            _ = try await client.next(type: "joined")
        }
        // Both nodes have heartbeated once (they know the data set they started with).
        try await eventually("both nodes reported") {
            let stats = try json(try await cluster.http(0, "GET", "/api/stats").body)
            return (stats["cluster"] as? [String: Any])?["nodes"] as? Int == 2
        }

        let restarted = try await cluster.restartRedisWithoutPersistence()
        defer { restarted.stop() }
        // Each node writes back the rooms of the users it holds: the roster agrees again with
        // what the users receive, from any node.
        try await eventually("R's members restored", within: 15) {
            let room = try json(try await cluster.http(1, "GET", "/api/rooms/R").body)
            return room["members"] as? [String] == ["alice", "bob"] && room["online"] as? [String] == ["alice", "bob"]
        }
        // And both nodes' pub/sub connections are back (a channel on which a node never
        // delivered anything has no position to heal from).
        for node in 0..<2 {
            try await eventually("n\(node + 1) resubscribed", within: 15) {
                (try json(try await cluster.http(node, "GET", "/api/stats").body)["brokerReconnects"] as? Int ?? 0) >= 1
            }
        }
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"after"}"#).status == 202)
        for client in [alice, bob] {
            #expect(try await client.nextPositioned()["data"] as? String == "after")
        }
        // The backend removes alice: she stops receiving the room on her node.
        let kicked = try json(try await cluster.http(1, "DELETE", "/api/rooms/R/members/alice").body)
        #expect(kicked["changed"] as? Bool == true)
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"bob only"}"#).status == 202)
        #expect(try await bob.nextPositioned()["data"] as? String == "bob only")
        try await cluster.expectNothingElse(from: 1, [alice], "alice was removed from R")
        await alice.close()
        await bob.close()
    }

    @Test func redisPausedPublishesFailFastAndTheServerStaysResponsive() async throws {
        let cluster = try await Cluster.start(nodes: 1)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        kill(cluster.redis.pid, SIGSTOP)
        defer { kill(cluster.redis.pid, SIGCONT) }
        var statuses: [Int] = []
        let started = ContinuousClock.now
        for _ in 0..<5 {
            statuses.append(try await cluster.http(0, "POST", "/api/users/alice/send", body: #"{"data":"paused"}"#).status)
        }
        #expect(statuses.allSatisfy { $0 == 503 })
        // One command timeout (1 s) for the first; the rest fail at once while reconnecting. Redis
        // stays paused until SIGCONT below: a publish that waited for it would never return.
        #expect(ContinuousClock.now - started < .seconds(15))
        #expect(try await cluster.http(0, "GET", "/healthz").status == 200)
        // WebSockets keep being served for what does not need Redis: a bad frame is answered.
        try await alice.send(#"{"type":"bogus","id":3}"#)
        #expect(try await alice.next(type: "error")["code"] as? String == "bad_request")

        kill(cluster.redis.pid, SIGCONT)
        try await eventually("publishing works again after SIGCONT", within: 15) {
            try await cluster.http(0, "POST", "/api/users/alice/send", body: #"{"data":"resumed"}"#).status == 202
        }
        // The first publish had reached Redis before it paused: it may still be delivered
        // (its 503 said so); the ones refused while reconnecting never are.
        var frame = try await alice.next()
        if frame == #"{"type":"message","scope":"user","data":"paused"}"# { frame = try await alice.next() }
        #expect(frame == #"{"type":"message","scope":"user","data":"resumed"}"#)
        await alice.close()
    }

    @Test func workersWithoutRedisRefuseToStart() async throws {
        let node = try await HeraldNodeProcess(arguments: ["--workers", "2"], waitForPort: false)
        let status = try await node.waitForExit(within: 20)
        #expect(status != nil && status != 0)
        #expect(node.output.contains("needs a shared broker"))
        #expect(node.output.contains("--redis"))
    }

    @Test func workersShareThePortAndDeliverAcrossEachOther() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let supervisor = try await HeraldNodeProcess(arguments: ["--workers", "2", "--redis", redis.url, "--presence-ttl", "3", "--log-level", "warning"])
        defer { supervisor.stop() }
        var clients: [TestClient] = []
        var nodes: Set<String> = []
        // The kernel spreads connections over the workers; both must get some (16 tries: the
        // chance that all land on one worker is 2^-15).
        for index in 0..<16 {
            let client = try await TestClient.connect(port: supervisor.port, query: "user=u\(index)")
            let welcome = try await client.next(type: "welcome", timeout: 15)
            nodes.insert(welcome["node"] as? String ?? "")
            clients.append(client)
        }
        #expect(nodes.count == 2)
        // Stats answer for the worker that took the request, say which, and sum the cluster.
        let workerIDs = nodes
        try await eventually("both workers' heartbeats counted in the cluster totals", within: 15) {
            let stats = try json(try await httpRequest(port: supervisor.port, "GET", "/api/stats").body)
            let cluster = stats["cluster"] as? [String: Any]
            return stats["scope"] as? String == "node" && workerIDs.contains(stats["node"] as? String ?? "")
                && cluster?["nodes"] as? Int == 2 && cluster?["connections"] as? Int == 16 && cluster?["usersOnline"] as? Int == 16
        }
        // A room joined over WebSocket on whichever worker, published from any: everyone, once.
        for client in clients {
            try await client.send(#"{"type":"join","room":"lobby","id":1}"#)
            #expect(try await client.next() == #"{"type":"joined","room":"lobby","id":1}"#)
        }
        try await clients[0].send(#"{"type":"publish","room":"lobby","data":"hello","id":2}"#)
        for client in clients.dropFirst() {
            #expect(try await client.next() == #"{"type":"message","scope":"room","room":"lobby","from":"u0","data":"hello"}"#)
        }
        // SIGTERM stops every worker; their clients are told 1012.
        #expect(supervisor.stop(signal: SIGTERM, within: 20) == 0)
        for client in clients.dropFirst() {
            let closed = try await client.closed()
            #expect(closed.code == 1012, "\(closed)")
        }
    }
}
