import Foundation
import HTTPTypes
import Herald
import HeraldServer
import Testing

@Suite("Authentication and permissions")
struct AuthenticationTests {
    static let secret = "test-secret-which-is-long-enough"
    static let apiKey = "test-api-key"

    func token(_ user: String, rooms: [String]? = ["lobby", "team-*"], expires: Date = Date().addingTimeInterval(600), secret: String = secret) async throws
        -> String
    {
        try await Authenticator.jwt(secret: secret).mint(HeraldClaims(sub: user, exp: expires, rooms: rooms))
    }

    func expectRefused(_ server: TestServer, query: String, headers: HTTPFields = [:], reason: String) async throws {
        let client = try await TestClient.connect(port: server.port, query: query, headers: headers)
        #expect(try await client.endsWithoutFrames(), "a refused client must never get a welcome")
        let closed = try await client.closed()
        #expect(closed.code == 4001)
        #expect(closed.reason == reason)
    }

    @Test func missingMalformedBadlySignedAndExpiredTokensGet4001() async throws {
        try await TestServer.with({
            $0.jwtSecret = Self.secret
            $0.apiKey = Self.apiKey
        }) { server in
            try await expectRefused(server, query: "user=alice", reason: "token missing: pass a JWT as ?token= or Authorization: Bearer")
            try await expectRefused(server, query: "token=not.a.jwt", reason: "token malformed: the header is not base64url JSON")
            let forged = try await token("alice", secret: "some-other-secret-entirely-32-bytes-long")
            try await expectRefused(server, query: "token=\(forged)", reason: "token signature invalid")
            let expired = try await token("alice", expires: Date().addingTimeInterval(-60))
            try await expectRefused(server, query: "token=\(expired)", reason: "token expired")
            #expect(server.hub.connectionCount == 0)
            #expect(server.hub.statistics.snapshot().connectionsOpened == 0)
        }
    }

    /// Swift's `==` treats `\u{212A}ate` (KELVIN SIGN) as `Kate`, and an NFD room name as its NFC
    /// spelling: such names are refused, so a look-alike can never receive another's messages.
    @Test func lookAlikeNamesAreRefusedOverWebSocket() async throws {
        try await TestServer.with { server in
            let kate = try await TestClient.connect(port: server.port, query: "user=Kate")
            _ = try await kate.next(type: "welcome")
            try await expectRefused(
                server, query: "user=%E2%84%AAate",
                reason: "user name must be in Unicode Normalization Form C (NFC): normalize it before use"
            )
            try await expectRefused(
                server, query: "user=Ka%E2%80%8Bte",
                reason: "user name must not contain invisible or text-direction characters (zero-width, bidi controls)"
            )
            try await kate.send(#"{"type":"join","room":"Cafe\u0301","id":1}"#)
            let refused = try await kate.nextJSON()
            #expect(refused["code"] as? String == "bad_request", "\(refused)")
            try await kate.send(#"{"type":"join","room":"Caf\u00e9","id":2}"#)
            #expect(try await kate.nextJSON()["type"] as? String == "joined")
            await kate.close()
        }
        try await TestServer.with({
            $0.jwtSecret = Self.secret
            $0.apiKey = "k"
        }) { server in
            try await expectRefused(
                server, query: "token=\(try await token("\u{212A}ate"))",
                reason: "token malformed: sub must be in Unicode Normalization Form C (NFC): normalize it before use"
            )
        }
    }

    /// With tokens, the API must not be open: it would let a user whose token allows no room
    /// make herself a member of any room, and read anyone's history.
    @Test func aJWTSecretWithoutAnAPIKeyIsRefusedAtStartUp() async throws {
        var configuration = HeraldConfiguration()
        configuration.port = 0
        configuration.jwtSecret = Self.secret
        await #expect {
            _ = try await HeraldServer(configuration: configuration)
        } throws: { error in
            (error as? ConfigurationError)?.message.contains("no API key") == true
        }
        try await TestServer.with({
            $0.jwtSecret = Self.secret
            $0.apiKey = Self.apiKey
        }) { server in
            let eve = try await TestClient.connect(port: server.port, query: "token=\(try await token("eve", rooms: []))")
            _ = try await eve.next(type: "welcome")
            try await eve.send(#"{"type":"join","room":"R","id":1}"#)
            #expect(try await eve.nextJSON()["code"] as? String == "forbidden")
            // Without the key the API does nothing for her.
            #expect(try await server.http("PUT", "/api/rooms/R/members/eve").status == 401)
            #expect(try await server.http("GET", "/api/users/alice/history").status == 401)
            await eve.close()
        }
    }

    @Test func shortSecretsAreRefusedAtStartUp() async throws {
        await #expect(throws: ConfigurationError.self) {
            _ = try await Authenticator.jwt(secret: "short")
        }
    }

    @Test func validTokenFromQueryOrHeaderAndRoomsClaim() async throws {
        try await TestServer.with({
            $0.jwtSecret = Self.secret
            $0.apiKey = Self.apiKey
        }) { server in
            let viaQuery = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice"))&user=mallory")
            let welcome = try await viaQuery.nextJSON()
            #expect(welcome["type"] as? String == "welcome")
            #expect(welcome["user"] as? String == "alice")  // ?user= is ignored once tokens are required

            let bearer = try await token("bob")
            let viaHeader = try await TestClient.connect(port: server.port, query: "", headers: [.authorization: "Bearer \(bearer)"])
            #expect(try await viaHeader.nextJSON()["user"] as? String == "bob")

            // The rooms claim: exact names and prefix patterns.
            for (room, allowed) in [("lobby", true), ("team-blue", true), ("lobby2", false), ("admin", false)] {
                try await viaQuery.send(#"{"type":"join","room":"\#(room)","id":"\#(room)"}"#)
                let reply = try await viaQuery.nextJSON()
                #expect((reply["type"] as? String == "joined") == allowed, "room \(room): \(reply)")
                if !allowed { #expect(reply["code"] as? String == "forbidden") }
            }

            // With a JWT secret, only members may publish; the backend can grant membership.
            try await viaHeader.send(#"{"type":"publish","room":"admin","data":1,"id":1}"#)
            #expect(try await viaHeader.nextJSON()["code"] as? String == "not_a_member")
            #expect(try await server.http("PUT", "/api/rooms/admin/members/bob", apiKey: Self.apiKey).status == 200)
            try await viaHeader.send(#"{"type":"publish","room":"admin","data":1,"id":2}"#)
            let frames = [try await viaHeader.nextJSON(), try await viaHeader.nextJSON()]
            #expect(frames.contains { $0["type"] as? String == "ok" })
            #expect(frames.contains { $0["type"] as? String == "message" })
            // Joining a room the backend granted is fine even outside the token's rooms claim.
            try await viaHeader.send(#"{"type":"join","room":"admin"}"#)
            #expect(try await viaHeader.nextJSON()["type"] as? String == "joined")
            await viaQuery.close()
            await viaHeader.close()
        }
    }
}
