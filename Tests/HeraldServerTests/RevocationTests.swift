import Foundation
import Herald
import HeraldServer
import HeraldTestSupport
import JWTKit
import Testing

/// The backend's revocations: closing a user's connections, ending a membership, revoking a
/// token by its `jti`; on one node and across nodes sharing a real Redis.
@Suite("Revocation by the backend", .serialized)
struct RevocationTests {
    static let secret = "test-secret-which-is-long-enough"
    static let apiKey = "test-api-key"

    static func token(_ user: String, jti: String? = nil, rooms: [String] = ["lobby"]) async throws -> String {
        var claims = HeraldClaims(sub: user, exp: Date().addingTimeInterval(600), rooms: rooms)
        claims.jti = jti.map { .init(value: $0) }
        return try await TokenKey.secret(secret).sign(claims)
    }

    func configure(_ configuration: inout HeraldConfiguration) {
        configuration.jwtSecret = Self.secret
        configuration.apiKey = Self.apiKey
    }

    func connect(port: Int, _ user: String, jti: String? = nil, label: String) async throws -> TestClient {
        let client = try await TestClient.connect(port: port, query: "token=\(try await Self.token(user, jti: jti))", label: label)
        _ = try await client.next(type: "welcome")
        return client
    }

    @Test func disconnectingAUserClosesEveryConnectionOfTheUserOnly() async throws {
        try await TestServer.with(configure) { server in
            let phone = try await connect(port: server.port, "alice", label: "alice (phone)")
            let laptop = try await connect(port: server.port, "alice", label: "alice (laptop)")
            let bob = try await connect(port: server.port, "bob", label: "bob")
            let answer = try await server.http("DELETE", "/api/users/alice/connections", apiKey: Self.apiKey)
            #expect(answer.status == 200)
            #expect(try json(answer.body)["code"] as? Int == 4003)
            for client in [phone, laptop] {
                let closed = try await client.closed(timeout: 10)
                #expect(closed.code == 4003 && closed.reason == "disconnected by the backend", "\(client.label): \(closed)")
            }
            try await waitUntil("alice's connections are gone") { server.hub.connectionCount(of: "alice") == 0 }
            #expect(server.hub.connectionCount(of: "bob") == 1)
            try await bob.send(#"{"type":"presence","room":"lobby","id":1}"#)
            _ = try await bob.nextJSON()  // bob is still served

            // A code and reason of the backend's choosing, among the documented ones.
            let again = try await connect(port: server.port, "alice", label: "alice (again)")
            let custom = try await server.http(
                "DELETE", "/api/users/alice/connections", body: #"{"code":4001,"reason":"password changed"}"#, apiKey: Self.apiKey)
            #expect(custom.status == 200)
            let closed = try await again.closed(timeout: 10)
            #expect(closed.code == 4001 && closed.reason == "password changed")
            await bob.close()
        }
    }

    @Test(arguments: [
        #"{"code":4999}"#, #"{"code":"4003"}"#, #"{"reason":"\#(String(repeating: "x", count: 101))"}"#, #"{"reason":"a\u0000b"}"#, "not json",
    ])
    func aMalformedDisconnectIsRefusedWith400(_ body: String) async throws {
        try await TestServer.with(configure) { (server: TestServer) async throws -> Void in
            let answer = try await server.http("DELETE", "/api/users/alice/connections", body: body, apiKey: Self.apiKey)
            #expect(answer.status == 400, "\(body): \(answer)")
            #expect(try json(answer.body)["error"] as? String == "bad_request")
            #expect(try await server.http("DELETE", "/api/users/alice/connections").status == 401, "the API key is required")
        }
    }

    @Test func aRevokedTokenIsClosedRefusedAtConnectAndAtRefresh() async throws {
        try await TestServer.with(configure) { server in
            let stolen = try await connect(port: server.port, "alice", jti: "t-1", label: "alice (t-1)")
            let other = try await connect(port: server.port, "alice", jti: "t-2", label: "alice (t-2)")
            let answer = try await server.http("POST", "/api/tokens/t-1/revoke", apiKey: Self.apiKey)
            #expect(answer.status == 200, "\(answer)")
            let reply = try json(answer.body)
            #expect(reply["jti"] as? String == "t-1" && reply["revoked"] as? Bool == true)
            #expect((reply["expires"] as? Int).map { $0 > Int(Date().timeIntervalSince1970) + 3600 } == true, "a day by default")
            let closed = try await stolen.closed(timeout: 10)
            #expect(closed.code == 4001 && closed.reason == "token revoked")

            // The same token again: refused at connect, and as a refresh.
            let retry = try await TestClient.connect(port: server.port, query: "token=\(try await Self.token("alice", jti: "t-1"))")
            let refused = try await retry.closed(timeout: 10)
            #expect(refused.code == 4001 && refused.reason == "token revoked")
            try await other.send(#"{"type":"refresh","token":"\#(try await Self.token("alice", jti: "t-1"))","id":"r"}"#)
            let error = try await other.next(type: "error")
            #expect(error["code"] as? String == "unauthorized" && (error["message"] as? String)?.contains("revoked") == true, "\(error)")
            // The other token's connection carries on.
            try await other.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            #expect(try await other.next(type: "joined")["id"] as? String == "j")
            await other.close()
        }
    }

    @Test func revocationsAreValidatedAndBounded() async throws {
        try await TestServer.with({
            configure(&$0)
            $0.maxRevokedTokens = 2
        }) { (server: TestServer) async throws -> Void in
            let now = Int(Date().timeIntervalSince1970)
            for body in [#"{"expires":\#(now - 10)}"#, #"{"expires":\#(now + 400 * 86_400)}"#, #"{"expires":"soon"}"#] {
                #expect(try await server.http("POST", "/api/tokens/a/revoke", body: body, apiKey: Self.apiKey).status == 400, "\(body)")
            }
            #expect(try await server.http("POST", "/api/tokens/a%0Ab/revoke", apiKey: Self.apiKey).status == 400, "a jti with a control character")
            #expect(try await server.http("POST", "/api/tokens/\(String(repeating: "j", count: 257))/revoke", apiKey: Self.apiKey).status == 400)
            #expect(try await server.http("POST", "/api/tokens/a/revoke", body: #"{"expires":\#(now + 60)}"#, apiKey: Self.apiKey).status == 200)
            #expect(try await server.http("POST", "/api/tokens/token%20b/revoke", apiKey: Self.apiKey).status == 200, "a jti may hold a space")
            #expect(try await server.http("POST", "/api/tokens/a/revoke", apiKey: Self.apiKey).status == 200, "extending an entry needs no room")
            let full = try await server.http("POST", "/api/tokens/c/revoke", apiKey: Self.apiKey)
            #expect(full.status == 507, "\(full)")
            #expect(try json(full.body)["error"] as? String == "limit_exceeded")
        }
    }

    // MARK: - Across nodes sharing a real Redis

    static let clusterArguments = ["--jwt-secret", secret, "--api-key", apiKey]

    struct Nodes {
        let redis: RedisServerProcess
        let nodes: [HeraldNodeProcess]

        static func start() async throws -> Nodes {
            let redis = try await RedisServerProcess()
            var nodes: [HeraldNodeProcess] = []
            for index in 1...2 {
                nodes.append(
                    try await HeraldNodeProcess(arguments: ["--redis", redis.url, "--node-id", "n\(index)", "--log-level", "warning"] + clusterArguments))
            }
            return Nodes(redis: redis, nodes: nodes)
        }

        func stop() {
            for node in nodes { node.stop() }
            redis.stop()
        }

        func http(_ node: Int, _ method: String, _ path: String, body: String? = nil) async throws -> (status: Int, body: String) {
            try await httpRequest(port: nodes[node].port, method, path, body: body, apiKey: RevocationTests.apiKey)
        }
    }

    @Test func revocationsReachEveryNode() async throws {
        let cluster = try await Nodes.start()
        defer { cluster.stop() }
        let onFirst = try await connect(port: cluster.nodes[0].port, "alice", jti: "a-1", label: "alice@n1")
        let onSecond = try await connect(port: cluster.nodes[1].port, "alice", jti: "a-2", label: "alice@n2")
        let bob = try await connect(port: cluster.nodes[1].port, "bob", jti: "b-1", label: "bob@n2")

        // A token revoked through n1 closes its connection on n2, and n2 refuses it afterwards.
        #expect(try await cluster.http(0, "POST", "/api/tokens/b-1/revoke").status == 200)
        let closedBob = try await bob.closed(timeout: 10)
        #expect(closedBob.code == 4001 && closedBob.reason == "token revoked")
        let retry = try await TestClient.connect(port: cluster.nodes[1].port, query: "token=\(try await Self.token("bob", jti: "b-1"))")
        #expect(try await retry.closed(timeout: 10).code == 4001)

        // Disconnecting through n1 closes alice's connections on both nodes before it answers.
        #expect(try await cluster.http(0, "DELETE", "/api/users/alice/connections").status == 200)
        for client in [onFirst, onSecond] {
            #expect(try await client.closed(timeout: 10).code == 4003, "\(client.label)")
        }
    }

    @Test func aNewNodeLoadsTheRevocationsMadeBeforeItStarted() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let first = try await HeraldNodeProcess(arguments: ["--redis", redis.url, "--node-id", "n1", "--log-level", "warning"] + Self.clusterArguments)
        defer { first.stop() }
        #expect(try await httpRequest(port: first.port, "POST", "/api/tokens/old/revoke", apiKey: Self.apiKey).status == 200)
        let second = try await HeraldNodeProcess(arguments: ["--redis", redis.url, "--node-id", "n2", "--log-level", "warning"] + Self.clusterArguments)
        defer { second.stop() }
        let client = try await TestClient.connect(port: second.port, query: "token=\(try await Self.token("carol", jti: "old"))")
        let closed = try await client.closed(timeout: 10)
        #expect(closed.code == 4001 && closed.reason == "token revoked")
    }

    /// A membership the user made follows each connection's token on every node: a narrower
    /// token on another node is told `revoked` and receives nothing of the room, the user's
    /// connection whose token allows it carries on.
    @Test func aUsersOwnJoinFollowsEachConnectionsTokenAcrossNodes() async throws {
        let cluster = try await Nodes.start()
        defer { cluster.stop() }
        let wide = try await TestClient.connect(
            port: cluster.nodes[0].port, query: "token=\(try await Self.token("alice", rooms: ["team-*"]))", label: "alice@n1 (team-*)")
        _ = try await wide.next(type: "welcome")
        let narrow = try await TestClient.connect(
            port: cluster.nodes[1].port, query: "token=\(try await Self.token("alice", rooms: ["lobby"]))", label: "alice@n2 (lobby)")
        _ = try await narrow.next(type: "welcome")
        try await wide.send(#"{"type":"join","room":"team-a","id":1}"#)
        _ = try await wide.next(type: "joined")
        // n2 heard of the join before it was answered, with who made it.
        let revoked = try await narrow.nextJSON()
        #expect(revoked["type"] as? String == "left" && revoked["room"] as? String == "team-a" && revoked["reason"] as? String == "revoked", "\(revoked)")

        #expect(try await cluster.http(0, "POST", "/api/rooms/team-a/publish", body: #"{"data":"team news"}"#).status == 202)
        #expect(try await wide.next(type: "message")["data"] as? String == "team news")
        #expect(try await cluster.http(0, "POST", "/api/broadcast", body: #"{"data":"sentinel"}"#).status == 202)
        #expect(try await narrow.next(type: "message")["data"] as? String == "sentinel", "n2's narrow connection got the room's message")
        try await narrow.send(#"{"type":"presence","room":"team-a","id":2}"#)
        #expect(try await narrow.next(type: "error")["code"] as? String == "forbidden")
        await wide.close()
        await narrow.close()
    }

    /// Ending a membership through the API stops the room on the user's connections on every
    /// node before the call answers: a message published right after does not reach them.
    @Test func aMembershipEndedThroughTheAPIStopsDeliveriesOnEveryNodeAtOnce() async throws {
        let cluster = try await Nodes.start()
        defer { cluster.stop() }
        let alice = try await connect(port: cluster.nodes[1].port, "alice", label: "alice@n2")
        let bob = try await connect(port: cluster.nodes[0].port, "bob", label: "bob@n1")
        #expect(try await cluster.http(0, "PUT", "/api/rooms/team/members/alice").status == 200)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/team/members/bob").status == 200)
        #expect(try await cluster.http(0, "POST", "/api/rooms/team/publish", body: #"{"data":"before"}"#).status == 202)
        #expect(try await alice.next(type: "message")["data"] as? String == "before")
        #expect(try await bob.next(type: "message")["data"] as? String == "before")

        #expect(try await cluster.http(0, "DELETE", "/api/rooms/team/members/alice").status == 200)
        #expect(try await cluster.http(0, "POST", "/api/rooms/team/publish", body: #"{"data":"after"}"#).status == 202)
        #expect(try await bob.next(type: "message")["data"] as? String == "after")
        // The sentinel goes out after "after" from the same node: alice's next frame must be it.
        #expect(try await cluster.http(0, "POST", "/api/broadcast", body: #"{"data":"sentinel"}"#).status == 202)
        #expect(try await alice.next(type: "message")["data"] as? String == "sentinel")
        await alice.close()
        await bob.close()
    }
}
