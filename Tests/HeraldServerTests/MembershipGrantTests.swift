import Foundation
import Herald
import HeraldServer
import Testing

/// Claims are the truth for every connection: a membership the user made themselves is valid on
/// a connection only while that connection's current token allows the room; the backend's
/// grants stand on their own. Over real sockets with real tokens.
@Suite("Memberships follow the token of each connection")
struct MembershipGrantTests {
    static let secret = "test-secret-which-is-long-enough"
    static let apiKey = "test-api-key"

    func token(_ user: String, rooms: [String]) async throws -> String {
        try await TokenKey.secret(Self.secret).sign(HeraldClaims(sub: user, exp: Date().addingTimeInterval(600), rooms: rooms))
    }

    func configure(_ configuration: inout HeraldConfiguration) {
        configuration.jwtSecret = Self.secret
        configuration.apiKey = Self.apiKey
    }

    func connect(_ server: TestServer, _ user: String, rooms: [String], label: String) async throws -> TestClient {
        let client = try await TestClient.connect(port: server.port, query: "token=\(try await token(user, rooms: rooms))", label: label)
        _ = try await client.next(type: "welcome")
        return client
    }

    /// A sentinel broadcast must be each client's next frame: nothing else arrived before it.
    func expectNothingElse(_ server: TestServer, _ clients: [TestClient], _ step: String) async throws {
        let marker = "sentinel-\(UUID().uuidString)"
        #expect(try await server.http("POST", "/api/broadcast", body: #"{"data":"\#(marker)"}"#, apiKey: Self.apiKey).status == 202)
        for client in clients {
            let frame = try await client.nextJSON()
            #expect(frame["data"] as? String == marker, "\(step): \(client.label) got \(frame) first")
        }
    }

    func publish(_ from: TestClient, _ room: String, _ data: Int) async throws {
        try await from.send(#"{"type":"publish","room":"\#(room)","data":\#(data),"id":"p\#(data)"}"#)
        #expect(try await from.next(type: "ok")["id"] as? String == "p\(data)")
    }

    @Test func aTokenWithFewerRoomsStopsTheRoomOnTheConnectionsUsingIt() async throws {
        try await TestServer.with(configure) { server in
            let wide = try await connect(server, "alice", rooms: ["lobby", "team-*"], label: "alice (wide)")
            try await wide.send(#"{"type":"join","room":"team-a","id":1}"#)
            _ = try await wide.next(type: "joined")
            // A second device whose token does not allow team-a: told at once, after its welcome.
            let narrow = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice", rooms: ["lobby"]))", label: "alice (narrow)")
            _ = try await narrow.next(type: "welcome")
            let revoked = try await narrow.nextJSON()
            #expect(revoked["type"] as? String == "left" && revoked["room"] as? String == "team-a" && revoked["reason"] as? String == "revoked", "\(revoked)")
            let bob = try await connect(server, "bob", rooms: ["team-*"], label: "bob")
            try await bob.send(#"{"type":"join","room":"team-a","id":1}"#)
            _ = try await bob.next(type: "joined")

            // Deliveries: the wide token's connection receives team-a, the narrow one does not.
            try await publish(bob, "team-a", 1)
            #expect(try await wide.next(type: "message")["data"] as? Int == 1)
            #expect(try await bob.next(type: "message")["data"] as? Int == 1)
            try await expectNothingElse(server, [narrow, wide, bob], "after the first publish")
            // Using the room: presence, publish and a join again are refused (forbidden, open).
            try await narrow.send(#"{"type":"presence","room":"team-a","id":"q"}"#)
            let presence = try await narrow.next(type: "error")
            #expect(presence["code"] as? String == "forbidden" && (presence["message"] as? String)?.contains("no longer allows") == true, "\(presence)")
            try await narrow.send(#"{"type":"publish","room":"team-a","data":0,"id":"x"}"#)
            #expect(try await narrow.next(type: "error")["code"] as? String == "forbidden")
            try await narrow.send(#"{"type":"join","room":"team-a","id":"j"}"#)
            #expect(try await narrow.next(type: "error")["code"] as? String == "forbidden")
            try await narrow.send(#"{"type":"join","room":"team-a","since":{"offset":0,"epoch":"x"},"id":"h"}"#)
            #expect(try await narrow.next(type: "error")["code"] as? String == "forbidden", "no history through a join either")

            // Under the shared-room send policy (the default with tokens), a revoked room is not
            // shared: the narrow connection may not send to bob, the wide one may.
            try await narrow.send(#"{"type":"send","user":"bob","data":"psst","id":"s1"}"#)
            let refusedSend = try await narrow.next(type: "error")
            #expect(refusedSend["code"] as? String == "forbidden" && refusedSend["id"] as? String == "s1", "\(refusedSend)")
            try await wide.send(#"{"type":"send","user":"bob","data":"hello","id":"s2"}"#)
            #expect(try await wide.next(type: "ok")["id"] as? String == "s2")
            #expect(try await bob.next(type: "message")["data"] as? String == "hello")

            // The wide connection refreshes to a narrower token: team-a stops there too.
            try await wide.send(#"{"type":"refresh","token":"\#(try await token("alice", rooms: ["lobby"]))","id":"r1"}"#)
            #expect(try await wide.next(type: "refreshed")["id"] as? String == "r1")
            let left = try await wide.nextJSON()
            #expect(left["type"] as? String == "left" && left["room"] as? String == "team-a" && left["reason"] as? String == "revoked", "\(left)")
            try await publish(bob, "team-a", 2)
            _ = try await bob.next(type: "message")
            try await expectNothingElse(server, [narrow, wide, bob], "after the refresh to fewer rooms")
            // The membership itself stays (the user's other tokens may allow it).
            #expect(try await server.http("GET", "/api/rooms/team-a", apiKey: Self.apiKey).body.contains(#""alice""#))

            // A token that allows it again restores it, without a gap in what the room holds.
            try await wide.send(#"{"type":"refresh","token":"\#(try await token("alice", rooms: ["team-*"]))","id":"r2"}"#)
            _ = try await wide.next(type: "refreshed")
            let restored = try await wide.nextJSON()
            #expect(restored["type"] as? String == "joined" && restored["reason"] as? String == "restored", "\(restored)")
            try await publish(bob, "team-a", 3)
            #expect(try await wide.next(type: "message")["data"] as? Int == 3)
            _ = try await bob.next(type: "message")
            try await expectNothingElse(server, [narrow, wide, bob], "after the restoring refresh")
            for client in [wide, narrow, bob] { await client.close() }
        }
    }

    /// The backend is trusted: its grant stands whatever the tokens allow, and it replaces the
    /// user's own join of the same room.
    @Test func aMembershipTheBackendGrantedStandsOnItsOwn() async throws {
        try await TestServer.with(configure) { server in
            let alice = try await connect(server, "alice", rooms: ["lobby"], label: "alice")
            let bob = try await connect(server, "bob", rooms: ["team-*", "vip"], label: "bob")
            #expect(try await server.http("PUT", "/api/rooms/vip/members/alice", apiKey: Self.apiKey).status / 100 == 2)
            #expect(try await server.http("PUT", "/api/rooms/vip/members/bob", apiKey: Self.apiKey).status / 100 == 2)
            try await publish(bob, "vip", 1)
            #expect(try await alice.next(type: "message")["data"] as? Int == 1)
            try await alice.send(#"{"type":"presence","room":"vip","id":"q"}"#)
            #expect(try await alice.next(type: "presence")["members"] as? [String] == ["alice", "bob"])

            // Alice joined team-a under a token that allowed it, then connected with one that
            // does not: revoked here until the backend grants the room itself.
            let earlier = try await connect(server, "alice", rooms: ["team-*"], label: "alice (earlier token)")
            try await earlier.send(#"{"type":"join","room":"team-a","id":1}"#)
            _ = try await earlier.next(type: "joined")
            await earlier.close()
            try await bob.send(#"{"type":"join","room":"team-a","id":2}"#)
            _ = try await bob.next(type: "joined")
            let later = try await TestClient.connect(
                port: server.port, query: "token=\(try await token("alice", rooms: ["lobby"]))", label: "alice (later token)")
            _ = try await later.next(type: "welcome")
            #expect(try await later.nextJSON()["reason"] as? String == "revoked")
            _ = try await alice.next(type: "left")  // the first connection is told too
            try await publish(bob, "team-a", 2)
            _ = try await bob.next(type: "message")
            try await expectNothingElse(server, [alice, later, bob], "while team-a is the user's own join")

            #expect(try await server.http("PUT", "/api/rooms/team-a/members/alice", apiKey: Self.apiKey).status / 100 == 2)
            let restored = try await later.nextJSON()
            #expect(restored["type"] as? String == "joined" && restored["reason"] as? String == "restored", "\(restored)")
            _ = try await alice.next(type: "joined")
            try await publish(bob, "team-a", 3)
            #expect(try await later.next(type: "message")["data"] as? Int == 3)
            #expect(try await alice.next(type: "message")["data"] as? Int == 3)
            for client in [alice, later, bob] { await client.close() }
        }
    }
}
