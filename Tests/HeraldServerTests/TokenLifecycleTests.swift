import Foundation
import HTTPTypes
import Herald
import HeraldServer
import HeraldTestSupport
import JWTKit
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Tokens on open connections (expiry, refresh), permissions of `send`, public keys and
/// browser origins, over real sockets with real keys.
@Suite("Token lifecycle and permissions")
struct TokenLifecycleTests {
    static let secret = "test-secret-which-is-long-enough"
    static let apiKey = "test-api-key"

    func token(_ user: String, rooms: [String]? = ["lobby", "team-*"], ttl: TimeInterval = 600, send: [String]? = nil) async throws -> String {
        var claims = HeraldClaims(sub: user, exp: Date().addingTimeInterval(ttl), rooms: rooms)
        claims.send = send
        return try await TokenKey.secret(Self.secret).sign(claims)
    }

    func configure(_ configuration: inout HeraldConfiguration) {
        configuration.jwtSecret = Self.secret
        configuration.apiKey = Self.apiKey
        configuration.tokenPolicy.leeway = .zero
    }

    @Test func anExpiredTokenClosesItsConnectionWith4001AfterAWarning() async throws {
        try await TestServer.with({
            configure(&$0)
            $0.tokenExpiryWarning = .seconds(2)
        }) { server in
            // 6 s: a loaded machine may take seconds to send the welcome, and a token that
            // expired before it is refused instead (another test).
            let client = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice", ttl: 6))")
            let welcome = try await client.next(type: "welcome", timeout: 10)
            let expires = try #require(welcome["expires"] as? Int)
            // Whole seconds, and the welcome may come late on a loaded machine.
            #expect(Double(expires) <= Date().timeIntervalSince1970 + 6 && Double(expires) > Date().timeIntervalSince1970 - 10)
            let warning = try await client.nextJSON(timeout: 10)
            #expect(warning["type"] as? String == "token_expiring")
            #expect(warning["expires"] as? Int == expires)
            let closed = try await client.closed(timeout: 10)
            #expect(closed.code == 4001)
            #expect(closed.reason == "token expired")
            try await waitUntil("the connection is gone") { server.hub.connectionCount == 0 }
        }
    }

    /// A refresh before expiry keeps the connection, its rooms and its messages: no gap.
    @Test func aRefreshBeforeExpiryKeepsMessagesFlowing() async throws {
        // A token shorter-lived than the warning (60 s) is warned of right after the welcome;
        // 12 s to refresh is room enough on a loaded machine.
        try await TestServer.with(configure) { server in
            let alice = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice", ttl: 12))")
            let firstExpiry = try #require(try await alice.next(type: "welcome")["expires"] as? Int)
            #expect(try await alice.nextJSON()["type"] as? String == "token_expiring")
            try await alice.send(#"{"type":"join","room":"lobby","id":1}"#)
            _ = try await alice.next(type: "joined")
            let bob = try await TestClient.connect(port: server.port, query: "token=\(try await token("bob"))")
            _ = try await bob.next(type: "welcome")
            try await bob.send(#"{"type":"join","room":"lobby","id":1}"#)
            _ = try await bob.next(type: "joined")
            // Someone else's token is refused, and the connection stays.
            try await alice.send(#"{"type":"refresh","token":"\#(try await token("mallory", ttl: 600))","id":"r0"}"#)
            let refused = try await alice.next(type: "error")
            #expect(refused["code"] as? String == "unauthorized")
            #expect(refused["id"] as? String == "r0")
            try await alice.send(#"{"type":"refresh","token":"\#(try await token("alice", ttl: 600))","id":"r1"}"#)
            let refreshed = try await alice.next(type: "refreshed")
            #expect(refreshed["id"] as? String == "r1")
            #expect((refreshed["expires"] as? Int).map { $0 > Int(Date().timeIntervalSince1970) + 500 } == true)
            // Past the first token's exp: still open, still receiving, offsets without a gap.
            try await waitUntil("the first token's exp has passed", within: 20) { Date().timeIntervalSince1970 > Double(firstExpiry) + 1 }
            var offsets: [Int] = []
            for n in 1...3 {
                try await bob.send(#"{"type":"publish","room":"lobby","data":\#(n),"id":\#(n + 1)}"#)
                let message = try await alice.nextPositioned()
                #expect(message["data"] as? Int == n)
                offsets.append(try #require(message["offset"] as? Int))
            }
            #expect(offsets == [offsets[0], offsets[0] + 1, offsets[0] + 2])
            #expect(server.hub.connectionCount == 2)
            // A refresh with a bad token is answered, never closes.
            try await alice.send(#"{"type":"refresh","token":"x.y.z","id":"r2"}"#)
            #expect(try await alice.next(type: "error")["code"] as? String == "unauthorized")
            try await alice.send(#"{"type":"refresh","id":"r3"}"#)
            #expect(try await alice.next(type: "error")["code"] as? String == "bad_request")
            await alice.close()
            await bob.close()
        }
    }

    /// The refreshed token's claims apply at once: rooms it no longer allows cannot be joined.
    @Test func aRefreshedTokensClaimsReplaceTheOldOnes() async throws {
        try await TestServer.with(configure) { server in
            let alice = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice", rooms: ["lobby"]))")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"attic","id":1}"#)
            #expect(try await alice.next(type: "error")["code"] as? String == "forbidden")
            try await alice.send(#"{"type":"refresh","token":"\#(try await token("alice", rooms: ["attic"]))","id":2}"#)
            _ = try await alice.next(type: "refreshed")
            try await alice.send(#"{"type":"join","room":"attic","id":3}"#)
            #expect(try await alice.nextJSON()["type"] as? String == "joined")
            try await alice.send(#"{"type":"join","room":"lobby","id":4}"#)
            #expect(try await alice.next(type: "error")["code"] as? String == "forbidden")
            await alice.close()
        }
    }

    @Test(arguments: [SendPolicy.anyone, .sharedRoom, .claim])
    func sendFollowsThePolicy(policy: SendPolicy) async throws {
        try await TestServer.with({
            configure(&$0)
            $0.sendPolicy = policy
        }) { server in
            let alice = try await TestClient.connect(port: server.port, query: "token=\(try await token("alice", send: ["carol"]))")
            _ = try await alice.next(type: "welcome")
            let bob = try await TestClient.connect(port: server.port, query: "token=\(try await token("bob"))")
            _ = try await bob.next(type: "welcome")
            let carol = try await TestClient.connect(port: server.port, query: "token=\(try await token("carol"))")
            _ = try await carol.next(type: "welcome")

            // Bob shares no room with alice; carol is in alice's send claim.
            try await alice.send(#"{"type":"send","user":"bob","data":"hi bob","id":1}"#)
            let toBob = try await alice.nextJSON()
            try await alice.send(#"{"type":"send","user":"carol","data":"hi carol","id":2}"#)
            #expect(try await alice.nextJSON()["type"] as? String == "ok")
            #expect(try await carol.next(type: "message")["data"] as? String == "hi carol")
            switch policy {
            case .anyone:
                #expect(toBob["type"] as? String == "ok")
                #expect(try await bob.next(type: "message")["data"] as? String == "hi bob")
            case .sharedRoom, .claim:
                #expect(toBob["code"] as? String == "forbidden", "\(toBob)")
                #expect((toBob["message"] as? String)?.contains(policy.rawValue) == true)
            }
            // Once they share a room, shared-room lets alice through; claim still does not.
            for client in [alice, bob] {
                try await client.send(#"{"type":"join","room":"team-x","id":3}"#)
                _ = try await client.next(type: "joined")
            }
            try await alice.send(#"{"type":"send","user":"bob","data":"hi again","id":4}"#)
            let again = try await alice.nextJSON()
            if policy == .claim {
                #expect(again["code"] as? String == "forbidden")
            } else {
                #expect(again["type"] as? String == "ok")
                #expect(try await bob.next(type: "message")["data"] as? String == "hi again")
            }
            // Bob's token has no send claim: to himself (his other devices) always works.
            try await bob.send(#"{"type":"send","user":"bob","data":"note to self","id":5}"#)
            #expect(try await bob.next(type: "ok")["id"] as? Int == 5)
            await alice.close()
            await bob.close()
            await carol.close()
        }
    }

    /// Public keys over the socket: a token signed with the private key connects; one signed
    /// with another key, or an HS256 token made with the public key as secret, gets 4001.
    @Test func publicKeyTokensConnectAndForgeriesAreRefused() async throws {
        let keys = try TestKeys.shared()
        let verifier = try await keys.verifier(.p256, kid: "ec")
        try await TestServer.with({
            $0.tokenKeys = [verifier]
            $0.apiKey = Self.apiKey
        }) { server in
            let claims = HeraldClaims(sub: "alice", exp: Date().addingTimeInterval(600), rooms: ["lobby"])
            let good = try await keys.signer(.p256, kid: "ec").sign(claims)
            let client = try await TestClient.connect(port: server.port, query: "token=\(good)")
            #expect(try await client.next(type: "welcome")["user"] as? String == "alice")
            await client.close()
            let cases: [(String, String)] = [
                (try await TestKeys.shared("b").signer(.p256, kid: "ec").sign(claims), "token signature invalid"),
                (try await TokenKey.secret(try keys.publicPEM(.p256), kid: "ec").sign(claims), #"token alg HS256 does not match key "ec" (ES256)"#),
                (try await keys.signer(.p256, kid: "other").sign(claims), #"token kid "other" is unknown"#),
            ]
            for (token, reason) in cases {
                let refused = try await TestClient.connect(port: server.port, query: "token=\(token)")
                #expect(try await refused.endsWithoutFrames())
                let closed = try await refused.closed()
                #expect(closed.code == 4001)
                #expect(closed.reason == reason)
            }
            #expect(server.hub.statistics.snapshot().connectionsOpened == 1)
        }
    }

    func upgrade(port: Int, origin: String?, query: String = "user=alice") -> String {
        "GET /ws?\(query) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\(origin.map { "Origin: \($0)\r\n" } ?? "")"
            + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    }

    /// The status of the answer to a raw upgrade request (its head only).
    func upgradeStatus(port: Int, origin: String?, query: String) async throws -> Int? {
        let request = upgrade(port: port, origin: origin, query: query)
        return try await RawWebSocket.run {
            let fd = try connectLoopback(port: port)
            defer { close(fd) }
            let bytes = Array(request.utf8)
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            var received: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while !String(decoding: received, as: UTF8.self).contains("\r\n\r\n") {
                let count = recv(fd, &chunk, chunk.count, 0)
                if count <= 0 { break }
                received += chunk[..<count]
            }
            let text = String(decoding: received, as: UTF8.self)
            return text.hasPrefix("HTTP/1.1 ") ? Int(text.dropFirst(9).prefix(3)) : nil
        }
    }

    @Test func browserOriginsAreCheckedBeforeTheUpgrade() async throws {
        try await TestServer.with({
            configure(&$0)
            $0.allowedOrigins = ["https://app.example.com", "https://*.example.org"]
        }) { server in
            let query = "token=\(try await token("alice"))"
            for origin in ["https://app.example.com", "https://a.b.example.org", "ws://127.0.0.1", nil] {
                #expect(try await upgradeStatus(port: server.port, origin: origin, query: query) == 101, "\(origin ?? "no origin")")
            }
            for origin in ["https://evil.example.com", "https://example.org", "http://app.example.com", "null", "https://app.example.com.evil.net"] {
                let (statuses, closed) = try await afterAnswer(port: server.port, upgrade(port: server.port, origin: origin))
                #expect(statuses == [403] && closed, "\(origin): \(statuses)")
            }
        }
        // Without a list: with tokens only the server's own origin; in development mode any.
        try await TestServer.with(configure) { server in
            let query = "token=\(try await token("alice"))"
            #expect(try await upgradeStatus(port: server.port, origin: "https://elsewhere.example", query: query) == 403)
            #expect(try await upgradeStatus(port: server.port, origin: "http://127.0.0.1:\(server.port)", query: query) == 101)
        }
        try await TestServer.with { (server: TestServer) async throws -> Void in
            #expect(try await upgradeStatus(port: server.port, origin: "https://elsewhere.example", query: "user=alice") == 101)
        }
    }
}
