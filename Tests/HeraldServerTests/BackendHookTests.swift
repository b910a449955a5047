import Foundation
import Herald
import HeraldServer
import NIOCore
import Testing

@testable import HeraldServer

/// `--connect-hook` and `--join-hook`: a tiny backend on loopback that allows, denies, stalls
/// and answers garbage; each case ends in its documented outcome.
@Suite("Backend hooks", .serialized)
struct BackendHookTests {
    static let secret = "test-secret-which-is-long-enough"
    static let apiKey = "test-api-key"

    static func token(_ user: String, rooms: [String] = ["lobby"]) async throws -> String {
        try await TokenKey.secret(secret).sign(HeraldClaims(sub: user, exp: Date().addingTimeInterval(600), rooms: rooms))
    }

    func hook(_ backend: LoopbackHTTPServer, path: String, _ tune: (inout BackendHook.Configuration) -> Void = { _ in }) throws -> BackendHook.Configuration {
        var configuration = try BackendHook.Configuration(url: backend.url + path)
        configuration.timeout = .seconds(5)  // room for a loaded machine; the stalls below take 9 s
        configuration.cacheTTL = .zero
        tune(&configuration)
        return configuration
    }

    func configure(_ configuration: inout HeraldConfiguration) {
        configuration.jwtSecret = Self.secret
        configuration.apiKey = Self.apiKey
    }

    func connect(_ server: TestServer, _ user: String) async throws -> TestClient {
        try await TestClient.connect(port: server.port, query: "token=\(try await Self.token(user))", label: user)
    }

    @Test func theConnectHookDecidesEveryOutcome() async throws {
        let backend = try await LoopbackHTTPServer(.answer(status: 200, body: #"{"allow":true}"#))
        let connectHook = try hook(backend, path: "/herald/connect") { $0.bearer = "hook-secret" }
        try await TestServer.with({
            configure(&$0)
            $0.connectHook = connectHook
        }) { server in
            // Allowed: served, and the backend saw who asked, with the API key.
            let allowed = try await connect(server, "alice")
            #expect(try await allowed.next(type: "welcome")["user"] as? String == "alice")
            let question = try #require(backend.received.last)
            #expect(question.method == "POST" && question.uri == "/herald/connect")
            #expect(question.authorization == "Bearer hook-secret", "the hook's own secret, never the API key")
            #expect(try json(question.body)["event"] as? String == "connect" && json(question.body)["user"] as? String == "alice")
            await allowed.close()

            // Denied: 4003 with the backend's reason.
            backend.set(.answer(status: 200, body: #"{"allow":false,"reason":"account suspended"}"#))
            let denied = try await connect(server, "mallory").closed(timeout: 10)
            #expect(denied.code == 4003 && denied.reason == "refused by the backend: account suspended", "\(denied)")

            // Undecided (too slow, an error status, garbage, a number for a boolean): 1013, retry.
            let outcomes: [LoopbackHTTPServer.Behaviour] = [
                .stall(delay: .seconds(9), status: 200, body: #"{"allow":true}"#),
                .answer(status: 500, body: "oops"),
                .answer(status: 200, body: "<html>"),
                .answer(status: 200, body: #"{"allow":1}"#),
                .redirect(to: backend.url + "/herald/connect"),
                .stallBody,
            ]
            for outcome in outcomes {
                backend.set(outcome)
                let closed = try await connect(server, "bob").closed(timeout: 10)
                #expect(
                    closed.code == 1013 && closed.reason?.hasPrefix("retry in ") == true && closed.reason?.hasSuffix("the backend hook is unavailable") == true,
                    "\(outcome): \(closed)")
            }
            #expect(server.hub.connectionCount == 0)
        }
        await backend.stop()
    }

    @Test func failingOpenLetsConnectionsThroughWhenTheHookCannotDecide() async throws {
        let backend = try await LoopbackHTTPServer(.answer(status: 200, body: "garbage"))
        let connectHook = try hook(backend, path: "/")
        try await TestServer.with({
            configure(&$0)
            $0.connectHook = connectHook
            $0.hookFailOpen = true
        }) { server in
            let client = try await connect(server, "alice")
            #expect(try await client.next(type: "welcome")["user"] as? String == "alice")
            // A denial is still a denial.
            backend.set(.answer(status: 200, body: #"{"allow":false}"#))
            let denied = try await connect(server, "bob").closed(timeout: 10)
            #expect(denied.code == 4003 && denied.reason == "refused by the backend: refused by the backend")
            await client.close()
        }
        await backend.stop()
    }

    /// Answers are cached per question; failures open the circuit, which stops asking for a
    /// while, then probes once.
    @Test func answersAreCachedAndFailuresOpenTheCircuit() async throws {
        let backend = try await LoopbackHTTPServer(.answer(status: 200, body: #"{"allow":true}"#))
        let cached = BackendHook(configuration: try hook(backend, path: "/") { $0.cacheTTL = .seconds(60) })
        #expect(await cached.connect(user: "alice") == .allow)
        #expect(await cached.connect(user: "alice") == .allow)
        #expect(await cached.join(user: "alice", room: "r") == .allow)
        #expect(backend.received.count == 2, "one question per (user, room)")

        backend.set(.answer(status: 503, body: ""))
        let breaker = BackendHook(
            configuration: try hook(backend, path: "/") {
                $0.failureThreshold = 3
                $0.openDuration = .milliseconds(300)
            })
        let before = backend.received.count
        for _ in 0..<3 { #expect(await breaker.connect(user: "bob") == .unavailable("the backend hook answered 503")) }
        for _ in 0..<5 {
            guard case .unavailable(let why) = await breaker.connect(user: "bob") else { throw TestFailure("the open circuit asked") }
            #expect(why.contains("failed 3 times in a row"))
        }
        #expect(backend.received.count == before + 3, "an open circuit does not reach the backend")
        backend.set(.answer(status: 200, body: #"{"allow":true}"#))
        try await eventually("the circuit probes again and closes") { await breaker.connect(user: "bob") == .allow }
        #expect(await breaker.connect(user: "bob") == .allow)
        await backend.stop()
    }

    @Test func theJoinHookDecidesRoomsTheTokenDoesNotAllow() async throws {
        let backend = try await LoopbackHTTPServer(.answer(status: 200, body: #"{"allow":true}"#))
        let joinHook = try hook(backend, path: "/herald/join")
        try await TestServer.with({
            configure(&$0)
            $0.joinHook = joinHook
        }) { server in
            let alice = try await connect(server, "alice")
            _ = try await alice.next(type: "welcome")
            // The token allows lobby: the backend is not asked.
            try await alice.send(#"{"type":"join","room":"lobby","id":1}"#)
            _ = try await alice.next(type: "joined")
            #expect(backend.received.isEmpty)
            // vip: the backend allows; the membership is the backend's and stands on its own.
            try await alice.send(#"{"type":"join","room":"vip","id":2}"#)
            #expect(try await alice.next(type: "joined")["id"] as? Int == 2)
            #expect(try json(try #require(backend.received.last).body)["room"] as? String == "vip")
            try await alice.send(#"{"type":"presence","room":"vip","id":3}"#)
            #expect(try await alice.next(type: "presence")["members"] as? [String] == ["alice"])

            backend.set(.answer(status: 200, body: #"{"allow":false,"reason":"members only"}"#))
            try await alice.send(#"{"type":"join","room":"attic","id":4}"#)
            let denied = try await alice.next(type: "error")
            #expect(denied["code"] as? String == "forbidden" && (denied["message"] as? String)?.hasSuffix("members only") == true, "\(denied)")

            for outcome in [
                LoopbackHTTPServer.Behaviour.stall(delay: .seconds(9), status: 200, body: #"{"allow":true}"#), .answer(status: 200, body: "[]"), .hangUp,
            ] {
                backend.set(outcome)
                try await alice.send(#"{"type":"join","room":"attic","id":5}"#)
                let undecided = try await alice.next(type: "error", timeout: 15)
                #expect(undecided["code"] as? String == "unavailable" && undecided["id"] as? Int == 5, "\(outcome): \(undecided)")
            }
            // Frames after a join wait for its answer: the reply order is the request order.
            backend.set(.stall(delay: .milliseconds(100), status: 200, body: #"{"allow":true}"#))
            try await alice.send(#"{"type":"join","room":"garden","id":6}"#)
            try await alice.send(#"{"type":"publish","room":"garden","data":"hi","id":7}"#)
            #expect(try await alice.nextJSON()["id"] as? Int == 6)
            var sawOK = false
            for _ in 0..<2 where !sawOK {
                let frame = try await alice.nextJSON()
                if frame["type"] as? String == "ok" { sawOK = frame["id"] as? Int == 7 }
            }
            #expect(sawOK, "the publish after the join was accepted: the join had been applied")
            await alice.close()
        }
        await backend.stop()
    }

    @Test func theBackendsAnswerIsParsedStrictly() {
        func verdict(_ text: String) -> BackendHook.Verdict { BackendHook.verdict(from: ByteBuffer(string: text)) }
        #expect(verdict(#"{"allow":true}"#) == .allow)
        #expect(verdict(#"{"allow":false}"#) == .deny("refused by the backend"))
        #expect(verdict(#"{"allow":false,"reason":"no\u0000pe\n"}"#) == .deny("nope"))
        #expect(verdict(#"{"allow":false,"reason":"\#(String(repeating: "é", count: 100))"}"#) == .deny(String(repeating: "é", count: 40)))
        for garbage in [#"{"allow":1}"#, #"{"allow":"true"}"#, "[]", "", "null", #"{"reason":"x"}"#] {
            guard case .unavailable = verdict(garbage) else {
                Issue.record("\(garbage) was taken for an answer")
                continue
            }
        }
    }
}

/// The answer cache stays bounded whatever is replaced and forgotten.
@Suite("Backend hook answer cache")
struct AnswerCacheTests {
    @Test func theCacheAndItsQueueStayBounded() {
        var cache = AnswerCache()
        let later = ContinuousClock.now + .seconds(60)
        for round in 0..<50 {
            for user in 0..<100 {
                cache.remember(.allow, for: .init(user: "u\(user)", room: "r\(round % 3)"), until: later, capacity: 120)
                if user % 10 == 0 { cache.forget(user: "u\(user)") }
            }
        }
        #expect(cache.count <= 120)
        #expect(cache.queueLength <= 2 * 120 + 1024 + 1)
        // The newest answers survive, the oldest went first.
        #expect(cache.answer(to: .init(user: "u99", room: "r1"), at: .now) == .allow)
        #expect(cache.answer(to: .init(user: "u10", room: "r1"), at: .now) == nil, "forgotten")
        #expect(cache.answer(to: .init(user: "u99", room: "r1"), at: later + .seconds(1)) == nil, "expired")
    }
}
