import Foundation
import Herald
import HeraldServer
import Testing

/// The seed's scenario end to end: alice with two connections, bob, carol; alice and bob in room R.
@Suite("Scopes over real WebSockets")
struct ScopeTests {
    struct Clients {
        let a1, a2, b1, c1: TestClient
        var everyone: [TestClient] { [a1, a2, b1, c1] }
    }

    func connectSeed(_ server: TestServer) async throws -> Clients {
        let a1 = try await TestClient.connect(port: server.port, query: "user=alice", label: "a1")
        let a2 = try await TestClient.connect(port: server.port, query: "user=alice", label: "a2")
        let b1 = try await TestClient.connect(port: server.port, query: "user=bob", label: "b1")
        let c1 = try await TestClient.connect(port: server.port, query: "user=carol", label: "c1")
        for client in [a1, a2, b1, c1] {
            let welcome = try await client.nextJSON()
            #expect(welcome["type"] as? String == "welcome")
            #expect(welcome["heartbeat"] as? Int == 25)
        }
        try await a1.send(#"{"type":"join","room":"R","id":1}"#)
        #expect(try await a1.next() == #"{"type":"joined","room":"R","id":1}"#)
        try await b1.send(#"{"type":"join","room":"R","id":"b"}"#)
        #expect(try await b1.next() == #"{"type":"joined","room":"R","id":"b"}"#)
        return Clients(a1: a1, a2: a2, b1: b1, c1: c1)
    }

    /// Publishes a sentinel to everyone and checks it is each client's next frame: nothing else
    /// was delivered before it (deliveries to a connection keep their order).
    func expectNothingElse(_ server: TestServer, _ clients: [TestClient], _ step: String) async throws {
        let marker = "\"sentinel-\(UUID().uuidString)\""
        let response = try await server.http("POST", "/api/broadcast", body: #"{"data":"# + marker + "}")
        #expect(response.status == 202)
        for client in clients {
            let frame = try await client.next()
            #expect(frame == #"{"type":"message","scope":"all","data":"# + marker + "}", "\(step): \(client.label) got an extra frame")
        }
    }

    @Test func eachScopeReachesExactlyTheRightConnectionsOnce() async throws {
        try await TestServer.with { server in
            let c = try await connectSeed(server)

            // Room, over WebSocket: a1, a2, b1 — not c1.
            try await c.a1.send(#"{"type":"publish","room":"R","data":{"n":1, "s":"x"},"id":7}"#)
            var a1Frames = [try await c.a1.next(), try await c.a1.next()]
            a1Frames.sort()
            let roomMessage = #"{"type":"message","scope":"room","room":"R","from":"alice","data":{"n":1, "s":"x"}}"#
            #expect(a1Frames == [roomMessage, #"{"type":"ok","id":7}"#].sorted())
            #expect(try await c.a2.next() == roomMessage)
            #expect(try await c.b1.next() == roomMessage)
            try await expectNothingElse(server, c.everyone, "room publish")

            // User, over WebSocket: both of alice's connections, not bob.
            try await c.b1.send(#"{"type":"send","user":"alice","data":"hi"}"#)
            #expect(try await c.b1.next() == #"{"type":"ok"}"#)
            let userMessage = #"{"type":"message","scope":"user","from":"bob","data":"hi"}"#
            #expect(try await c.a1.next() == userMessage)
            #expect(try await c.a2.next() == userMessage)
            try await expectNothingElse(server, c.everyone, "user send")

            // The HTTP API: no "from".
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":[1, 2]}"#).status == 202)
            for client in [c.a1, c.a2, c.b1] {
                #expect(try await client.next() == #"{"type":"message","scope":"room","room":"R","data":[1, 2]}"#)
            }
            try await expectNothingElse(server, c.everyone, "http room publish")

            #expect(try await server.http("POST", "/api/users/carol/send", body: #"{"data":null}"#).status == 202)
            #expect(try await c.c1.next() == #"{"type":"message","scope":"user","data":null}"#)
            try await expectNothingElse(server, c.everyone, "http user send")

            // Leaving (from alice's other connection: membership is per user) stops delivery to both.
            try await c.a2.send(#"{"type":"leave","room":"R"}"#)
            #expect(try await c.a2.next() == #"{"type":"left","room":"R"}"#)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":2}"#).status == 202)
            #expect(try await c.b1.next() == #"{"type":"message","scope":"room","room":"R","data":2}"#)
            try await expectNothingElse(server, c.everyone, "after leave")

            for client in c.everyone { await client.close() }
        }
    }

    @Test func clientBroadcastIsForbiddenUnlessAllowed() async throws {
        try await TestServer.with { server in
            let a = try await TestClient.connect(port: server.port, query: "user=a")
            _ = try await a.next(type: "welcome")
            try await a.send(#"{"type":"broadcast","data":1,"id":1}"#)
            let error = try await a.nextJSON()
            #expect(error["code"] as? String == "forbidden")
            #expect(error["id"] as? Int == 1)
            await a.close()
        }
        try await TestServer.with({ $0.allowClientBroadcast = true }) { server in
            let a = try await TestClient.connect(port: server.port, query: "user=a")
            let b = try await TestClient.connect(port: server.port, query: "user=b")
            _ = try await a.next(type: "welcome")
            _ = try await b.next(type: "welcome")
            try await a.send(#"{"type":"broadcast","data":"all"}"#)
            #expect(try await b.next() == #"{"type":"message","scope":"all","from":"a","data":"all"}"#)
            await a.close()
            await b.close()
        }
    }

    @Test func membershipViaTheHTTPAPIAndPresence() async throws {
        try await TestServer.with { server in
            let c = try await connectSeed(server)
            // The backend adds carol; her connection now receives R.
            let put = try await server.http("PUT", "/api/rooms/R/members/carol")
            #expect(put.status == 200)
            #expect(try json(put.body)["changed"] as? Bool == true)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":"x"}"#).status == 202)
            #expect(try await c.c1.next() == #"{"type":"message","scope":"room","room":"R","data":"x"}"#)

            // Offline members count as members, not as online.
            #expect(try await server.http("PUT", "/api/rooms/R/members/dave").status == 200)
            let room = try json(try await server.http("GET", "/api/rooms/R").body)
            #expect(room["members"] as? [String] == ["alice", "bob", "carol", "dave"])
            #expect(room["online"] as? [String] == ["alice", "bob", "carol"])

            try await c.c1.send(#"{"type":"presence","room":"R","id":2}"#)
            let presence = try await c.c1.next(type: "presence")
            #expect(presence["online"] as? [String] == ["alice", "bob", "carol"])

            let alice = try json(try await server.http("GET", "/api/users/alice").body)
            #expect(alice["connections"] as? Int == 2)
            #expect(alice["rooms"] as? [String] == ["R"])

            #expect(try await server.http("DELETE", "/api/rooms/R/members/carol").status == 200)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":"y"}"#).status == 202)
            try await ScopeTests().expectNothingElse(server, [c.c1], "after removal")

            let stats = try json(try await server.http("GET", "/api/stats").body)
            #expect(stats["connections"] as? Int == 4)
            #expect(stats["rooms"] as? Int == 1)
            for client in c.everyone { await client.close() }
        }
    }
}
