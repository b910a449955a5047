import Foundation
import HeraldServer
import JWTKit
import NIOCore
import Testing

/// `--jwks-url`: an identity provider's key set over HTTP, served by a loopback server the test
/// rotates, takes down and makes answer garbage. Real keys (openssl), real HTTP.
@Suite("JWKS from a URL")
struct JWKSURLTests {
    func claims(_ user: String = "alice") -> HeraldClaims {
        HeraldClaims(sub: user, exp: Date().addingTimeInterval(600), rooms: ["lobby"])
    }

    func jwks(_ entries: [[String: String]]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: ["keys": entries]), as: UTF8.self)
    }

    func reason(_ result: Result<Identity, AuthenticationFailure>) -> String? {
        if case .failure(let failure) = result { return failure.reason }
        return nil
    }

    @Test func theKeySetIsFetchedRotatedAndKeptWhileTheProviderIsDown() async throws {
        let keys = try TestKeys.shared()
        let provider = try await LoopbackHTTPServer(.answer(status: 200, body: try jwks([keys.jwk(.rsa, kid: "k1", alg: "RS256")])))
        var policy = TokenPolicy()
        policy.keySetRefreshInterval = .zero
        var keySet = try JWKSURL(provider.url + "/.well-known/jwks.json")
        keySet.timeout = .seconds(6)  // the trickling body below is cut at it; room for a loaded machine
        let authenticator = try await Authenticator(keys: [], keySets: [keySet], policy: policy)
        #expect(provider.received.map(\.uri) == ["/.well-known/jwks.json"], "fetched once at start")
        let k1 = try await keys.signer(.rsa, kid: "k1").sign(claims(), algorithm: .rs256)
        #expect(try await authenticator.verify(token: k1).get().user == "alice")
        #expect(provider.received.count == 1, "a known kid needs no fetch")

        // Rotation with overlap: k2 appears beside k1; a token naming k2 fetches the set again.
        provider.set(.answer(status: 200, body: try jwks([keys.jwk(.rsa, kid: "k1", alg: "RS256"), keys.jwk(.p256, kid: "k2")])))
        let k2 = try await keys.signer(.p256, kid: "k2").sign(claims(), algorithm: .es256)
        #expect(try await authenticator.verify(token: k2).get().user == "alice")
        #expect(try await authenticator.verify(token: k1).get().user == "alice")

        // The provider goes down, then answers errors and garbage: the keys fetched stay in use,
        // and an unknown kid is refused naming it.
        let k9 = try await keys.signer(.ed25519, kid: "k9").sign(claims())
        // A redirect is not followed (even to a server with the keys), a body that trickles is
        // cut at the timeout.
        let elsewhere = try await LoopbackHTTPServer(.answer(status: 200, body: try jwks([keys.jwk(.ed25519, kid: "k9")])))
        let outages: [LoopbackHTTPServer.Behaviour] = [
            .hangUp, .answer(status: 503, body: "down"), .answer(status: 200, body: "<html>not json"), .redirect(to: elsewhere.url), .stallBody,
        ]
        for outage in outages {
            provider.set(outage)
            #expect(reason(await authenticator.verify(token: k9)) == #"token kid "k9" is unknown"#, "\(outage)")
            #expect(try await authenticator.verify(token: k1).get().user == "alice", "\(outage)")
            #expect(try await authenticator.verify(token: k2).get().user == "alice", "\(outage)")
        }

        // Back, without k1: k1 is withdrawn at the next fetch.
        provider.set(.answer(status: 200, body: try jwks([keys.jwk(.p256, kid: "k2"), keys.jwk(.ed25519, kid: "k9")])))
        #expect(try await authenticator.verify(token: k9).get().user == "alice")
        #expect(reason(await authenticator.verify(token: k1)) == #"token kid "k1" is unknown"#)
        #expect(elsewhere.received.isEmpty, "the redirect was not followed")
        await elsewhere.stop()
        await provider.stop()
    }

    /// Tokens with made-up kids cannot make the server hammer the provider: at most one fetch
    /// per refresh interval.
    @Test func unknownKidsFetchAtMostOncePerInterval() async throws {
        let keys = try TestKeys.shared()
        let provider = try await LoopbackHTTPServer(.answer(status: 200, body: try jwks([keys.jwk(.rsa, kid: "k1")])))
        var policy = TokenPolicy()
        policy.keySetRefreshInterval = .seconds(600)
        let authenticator = try await Authenticator(keys: [], keySets: [try JWKSURL(provider.url)], policy: policy)
        for n in 0..<20 {
            let token = try await keys.signer(.rsa, kid: "made-up-\(n)").sign(claims(), algorithm: .rs256)
            #expect(reason(await authenticator.verify(token: token)) == #"token kid "made-up-\#(n)" is unknown"#)
        }
        #expect(provider.received.count == 1, "only the fetch at start: the interval has not passed")
        await provider.stop()
    }

    /// A provider down at start is not fatal: tokens verify once it answers.
    @Test func aProviderDownAtStartIsFetchedLater() async throws {
        let keys = try TestKeys.shared()
        let provider = try await LoopbackHTTPServer(.hangUp)
        var policy = TokenPolicy()
        policy.keySetRefreshInterval = .zero
        let authenticator = try await Authenticator(keys: [], keySets: [try JWKSURL(provider.url)], policy: policy)
        let token = try await keys.signer(.ed25519, kid: "e1").sign(claims())
        #expect(reason(await authenticator.verify(token: token)) == #"token kid "e1" is unknown"#)
        provider.set(.answer(status: 200, body: try jwks([keys.jwk(.ed25519, kid: "e1")])))
        #expect(try await authenticator.verify(token: token).get().user == "alice")
        await provider.stop()
    }

    /// Keys older than the maximum age are fetched again in the background: a key the provider
    /// withdrew stops verifying even when no token names an unknown kid.
    @Test func oldKeysAreRefreshedInTheBackground() async throws {
        let keys = try TestKeys.shared()
        let provider = try await LoopbackHTTPServer(.answer(status: 200, body: try jwks([keys.jwk(.p256, kid: "p1")])))
        var policy = TokenPolicy()
        policy.keySetMaxAge = .zero
        let authenticator = try await Authenticator(keys: [], keySets: [try JWKSURL(provider.url)], policy: policy)
        let token = try await keys.signer(.p256, kid: "p1").sign(claims(), algorithm: .es256)
        #expect(try await authenticator.verify(token: token).get().user == "alice")
        provider.set(.answer(status: 200, body: try jwks([])))
        try await eventually("the withdrawn key stops verifying") {
            await reason(authenticator.verify(token: token)) == #"token kid "p1" is unknown"#
        }
        await provider.stop()
    }

    @Test func onlyHTTPSOrLoopbackURLsAreAccepted() throws {
        for good in ["https://example.auth0.com/.well-known/jwks.json", "http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/k"] {
            #expect((try? JWKSURL(good)) != nil, "\(good)")
        }
        for bad in [
            "http://example.com/jwks", "http://127.evil.example/jwks", "http://127.0.0.1.nip.io/jwks", "ftp://example.com/jwks", "not a url", "https://",
            "/etc/jwks.json",
        ] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try JWKSURL(bad) }
        }
    }

    /// Logs and errors name the provider without the credentials or query a URL may carry.
    @Test func theURLIsNamedWithoutCredentialsOrQuery() throws {
        let url = try JWKSURL("https://client:s3cret@idp.example.com/jwks?key=t0ken")
        #expect(url.source == "https://***@idp.example.com/jwks?***")
        #expect(!url.source.contains("s3cret") && !url.source.contains("t0ken"))
        #expect(JWKSURL.redacting("https://idp.example.com/a@b/jwks") == "https://idp.example.com/a@b/jwks")
        do throws(ConfigurationError) {
            _ = try JWKSURL("http://user:s3cret@example.com/jwks")
            Issue.record("plain http to a remote host was accepted")
        } catch {
            #expect(!error.description.contains("s3cret"))
        }
    }

    /// End to end: a node configured with the URL accepts a token signed by the provider's key.
    @Test func aNodeVerifiesConnectionsWithTheProvidersKeys() async throws {
        let keys = try TestKeys.shared()
        let provider = try await LoopbackHTTPServer(.answer(status: 200, body: try jwks([keys.jwk(.ed25519, kid: "node-key")])))
        let keySet = try JWKSURL(provider.url)
        try await TestServer.with({
            $0.tokenKeySets = [keySet]
            $0.apiKey = "test-api-key"
        }) { server in
            let token = try await keys.signer(.ed25519, kid: "node-key").sign(claims("dana"))
            let client = try await TestClient.connect(port: server.port, query: "token=\(token)")
            #expect(try await client.next(type: "welcome")["user"] as? String == "dana")
            await client.close()
        }
        await provider.stop()
    }
}
