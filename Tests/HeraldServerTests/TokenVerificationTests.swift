import Foundation
import HeraldServer
import JWTKit
import Testing

/// The token checks without sockets: real keys (openssl), real signatures, hand-made hostile
/// tokens. Over a socket, the same reasons close the connection with 4001 (AuthenticationTests).
@Suite("Token verification")
struct TokenVerificationTests {
    static let secret = "test-secret-which-is-long-enough"

    func claims(_ user: String = "alice", expires: TimeInterval? = 600, rooms: [String]? = ["lobby"]) -> HeraldClaims {
        HeraldClaims(sub: user, exp: expires.map { Date().addingTimeInterval($0) }, rooms: rooms)
    }

    func reason(_ result: Result<Identity, AuthenticationFailure>) -> String? {
        if case .failure(let failure) = result { return failure.reason }
        return nil
    }

    /// A token with this header and payload JSON and any signature bytes.
    func handMade(header: String, payload: String, signature: String = "c2lnbmF0dXJl") -> String {
        "\(header.base64URL).\(payload.base64URL).\(signature)"
    }

    @Test(arguments: [
        (TestKeys.Kind.rsa, TokenAlgorithm.rs256), (.rsa, .rs384), (.rsa, .rs512), (.rsa, .ps256),
        (.p256, .es256), (.p384, .es384), (.ed25519, .edDSA),
    ])
    func everyPublicKeyAlgorithmIsAccepted(kind: TestKeys.Kind, algorithm: TokenAlgorithm) async throws {
        let keys = try TestKeys.shared()
        let token = try await keys.signer(kind).sign(claims(), algorithm: algorithm)
        let authenticator = try await Authenticator(keys: [try await keys.verifier(kind)])
        let identity = try await authenticator.verify(token: token).get()
        #expect(identity.user == "alice")
        #expect(identity.rooms.allows("lobby") && !identity.rooms.allows("attic"))
        // Another key of the same kind does not verify it.
        let other = try await Authenticator(keys: [try await TestKeys.shared("b").verifier(kind)])
        #expect(reason(await other.verify(token: token)) == "token signature invalid")
    }

    @Test(arguments: [TokenAlgorithm.hs256, .hs384, .hs512])
    func everyHMACAlgorithmIsAccepted(algorithm: TokenAlgorithm) async throws {
        // HS512 needs a key as long as its hash: 64 bytes.
        let secret = String(repeating: Self.secret, count: 2)
        let key = try await TokenKey.secret(secret)
        let token = try await key.sign(claims(), algorithm: algorithm)
        let identity = try await Authenticator.jwt(secret: secret).verify(token: token).get()
        #expect(identity.user == "alice")
        let wrong = try await Authenticator.jwt(secret: String(secret.reversed()))
        #expect(reason(await wrong.verify(token: token)) == "token signature invalid")
        // A 32-byte secret verifies HS256 only: shorter than the hash, HS384 and HS512 are weak.
        let short = try await TokenKey.secret(Self.secret)
        #expect(short.algorithms == [.hs256])
        if algorithm != .hs256 {
            let refused = reason(try await Authenticator(keys: [short]).verify(token: token))
            #expect(refused == "token alg \(algorithm.rawValue) is not accepted by any key of this server")
        }
    }

    @Test func algNoneAndUnknownAlgorithmsAreRefused() async throws {
        let authenticator = try await Authenticator.jwt(secret: Self.secret)
        let payload = #"{"sub":"alice","exp":\#(Int(Date().timeIntervalSince1970) + 600)}"#
        for alg in ["none", "None", "HS1", ""] {
            let token = handMade(header: #"{"alg":"\#(alg)","typ":"JWT"}"#, payload: payload, signature: "")
            #expect(reason(await authenticator.verify(token: token))?.hasPrefix("token alg \"\(alg)\" is not accepted") == true)
        }
        let noAlg = handMade(header: #"{"typ":"JWT"}"#, payload: payload)
        #expect(reason(await authenticator.verify(token: noAlg)) == "token malformed: the header has no alg")
        let crit = handMade(header: #"{"alg":"HS256","crit":["exp"]}"#, payload: payload)
        #expect(reason(await authenticator.verify(token: crit)) == "token header has crit extensions this server does not understand")
        for malformed in ["not.a.jwt", "a.b", "....", "e30.e30.e30.e30", String(repeating: "a", count: 9000)] {
            #expect(reason(await authenticator.verify(token: malformed))?.hasPrefix("token") == true, "\(malformed.prefix(20))")
        }
    }

    /// The classic attack on RS256 servers: an HS256 token whose HMAC key is the server's RSA
    /// public key (which is public). The RSA key never checks an HMAC signature.
    @Test func algorithmConfusionIsRefused() async throws {
        let keys = try TestKeys.shared()
        let publicPEM = try keys.publicPEM(.rsa)
        let forged = try await TokenKey.secret(publicPEM, kid: "main").sign(claims(), algorithm: .hs256)
        let byKid = try await Authenticator(keys: [try await keys.verifier(.rsa, kid: "main")])
        #expect(reason(await byKid.verify(token: forged)) == #"token alg HS256 does not match key "main" (RS256, RS384, RS512, PS256)"#)
        let withoutKid = try await TokenKey.secret(publicPEM).sign(claims(), algorithm: .hs256)
        let byAlgorithm = try await Authenticator(keys: [try await keys.verifier(.rsa)])
        #expect(reason(await byAlgorithm.verify(token: withoutKid)) == "token alg HS256 is not accepted by any key of this server")
        // An ES256 key named by kid does not check an RS256 signature either.
        let rsaToken = try await keys.signer(.rsa, kid: "ec").sign(claims(), algorithm: .rs256)
        let ecKey = try await Authenticator(keys: [try await keys.verifier(.p256, kid: "ec")])
        #expect(reason(await ecKey.verify(token: rsaToken)) == #"token alg RS256 does not match key "ec" (ES256)"#)
        // A key restricted to one algorithm refuses the others of its kind.
        let rs384 = try await keys.signer(.rsa).sign(claims(), algorithm: .rs384)
        let rs256Only = try await Authenticator(keys: [try await keys.verifier(.rsa, algorithm: .rs256)])
        #expect(reason(await rs256Only.verify(token: rs384)) == "token alg RS384 is not accepted by any key of this server")
    }

    @Test func keysAreSelectedByKid() async throws {
        let keys = try TestKeys.shared()
        let authenticator = try await Authenticator(
            keys: [try await keys.verifier(.rsa, kid: "old"), try await keys.verifier(.p256, kid: "new"), try await TokenKey.secret(Self.secret, kid: "hmac")]
        )
        for (kind, kid, algorithm) in [(TestKeys.Kind.rsa, "old", TokenAlgorithm.rs256), (.p256, "new", .es256)] {
            let token = try await keys.signer(kind, kid: kid).sign(claims(), algorithm: algorithm)
            #expect(try await authenticator.verify(token: token).get().user == "alice")
        }
        let hmac = try await TokenKey.secret(Self.secret, kid: "hmac").sign(claims())
        #expect(try await authenticator.verify(token: hmac).get().user == "alice")
        let unknown = try await keys.signer(.rsa, kid: "retired").sign(claims(), algorithm: .rs256)
        #expect(reason(await authenticator.verify(token: unknown)) == #"token kid "retired" is unknown"#)
        let hostileKid = try await keys.signer(.rsa, kid: "\u{1}\"" + String(repeating: "x", count: 100)).sign(claims(), algorithm: .rs256)
        #expect(reason(await authenticator.verify(token: hostileKid)) == "token kid \"??" + String(repeating: "x", count: 22) + "…\" is unknown")
    }

    @Test func claimsAreChecked() async throws {
        var policy = TokenPolicy()
        policy.issuer = "https://id.example.com"
        policy.audience = "herald"
        policy.leeway = .seconds(5)
        let key = try await TokenKey.secret(Self.secret)
        let authenticator = try await Authenticator(keys: [key], policy: policy)
        func token(_ edit: (inout HeraldClaims) -> Void) async throws -> String {
            var claims = claims()
            claims.iss = IssuerClaim(value: "https://id.example.com")
            claims.aud = AudienceClaim(value: ["other", "herald"])
            edit(&claims)
            return try await key.sign(claims)
        }
        #expect(try await authenticator.verify(token: try await token { _ in }).get().user == "alice")
        let cases: [(String, (inout HeraldClaims) -> Void)] = [
            ("token issuer (iss) is not the one this server accepts", { $0.iss = IssuerClaim(value: "https://evil.example.com") }),
            ("token issuer (iss) is not the one this server accepts", { $0.iss = nil }),
            ("token audience (aud) does not include this server's", { $0.aud = AudienceClaim(value: "other") }),
            ("token audience (aud) does not include this server's", { $0.aud = nil }),
            ("token not valid yet (nbf is in the future)", { $0.nbf = NotBeforeClaim(value: Date().addingTimeInterval(60)) }),
            ("token issued in the future (iat): check the issuer's clock", { $0.iat = IssuedAtClaim(value: Date().addingTimeInterval(60)) }),
            ("token expired", { $0.exp = ExpirationClaim(value: Date().addingTimeInterval(-10)) }),
            ("token has no exp: tokens must expire (or start the server with --allow-tokens-without-exp)", { $0.exp = nil }),
        ]
        for (expected, edit) in cases {
            #expect(reason(await authenticator.verify(token: try await token(edit))) == expected)
        }
        // Within the leeway: a little clock skew is forgiven.
        let skewed = try await token {
            $0.nbf = NotBeforeClaim(value: Date().addingTimeInterval(3))
            $0.iat = IssuedAtClaim(value: Date().addingTimeInterval(3))
        }
        #expect(try await authenticator.verify(token: skewed).get().user == "alice")
        let justExpired = try await token { $0.exp = ExpirationClaim(value: Date().addingTimeInterval(-2)) }
        #expect(try await authenticator.verify(token: justExpired).get().user == "alice")
        // Without exp only when the server says so.
        policy.allowsTokensWithoutExpiry = true
        let lenient = try await Authenticator(keys: [key], policy: policy)
        let identity = try await lenient.verify(token: try await token { $0.exp = nil }).get()
        #expect(identity.expires == nil)
    }

    @Test func theIdentityCarriesTheTokensClaims() async throws {
        let key = try await TokenKey.secret(Self.secret)
        var claims = claims(rooms: ["team-*"])
        claims.send = ["bob", "support-*"]
        claims.jti = IDClaim(value: "token-1")
        let identity = try await Authenticator(keys: [key]).verify(token: try await key.sign(claims)).get()
        #expect(identity.rooms.allows("team-a") && !identity.rooms.allows("lobby"))
        #expect(identity.recipients?.allows("support-7") == true && identity.recipients?.allows("carol") == false)
        #expect(identity.tokenID == "token-1")
        #expect(identity.expires.map { abs($0.timeIntervalSinceNow - 600) < 5 } == true)
    }

    /// A JWKS file: keys chosen by kid, an entry's alg enforced, rotation by rewriting the file
    /// (an unknown kid reads it again), and the keys kept when the file turns bad.
    @Test func aJWKSFileRotates() async throws {
        let keys = try TestKeys.shared()
        let path = keys.directory.appendingPathComponent("jwks-\(UUID().uuidString).json").path
        try TestKeys.writeJWKS([try keys.jwk(.rsa, kid: "k1", alg: "RS256"), try keys.jwk(.ed25519, kid: "ed")], to: path)
        var policy = TokenPolicy()
        policy.keySetRefreshInterval = .zero
        let authenticator = try await Authenticator(keys: [], keySets: [JWKSFile(path: path)], policy: policy)
        let k1 = try await keys.signer(.rsa, kid: "k1").sign(claims(), algorithm: .rs256)
        #expect(try await authenticator.verify(token: k1).get().user == "alice")
        let ed = try await keys.signer(.ed25519, kid: "ed").sign(claims())
        #expect(try await authenticator.verify(token: ed).get().user == "alice")
        // The entry says RS256: PS256 with the same key is refused.
        let pss = try await keys.signer(.rsa, kid: "k1").sign(claims(), algorithm: .ps256)
        #expect(reason(await authenticator.verify(token: pss)) == #"token alg PS256 does not match key "k1" (RS256)"#)
        // Rotation: k2 appears next to k1 (overlap), then k1 goes.
        let k2 = try await keys.signer(.p256, kid: "k2").sign(claims(), algorithm: .es256)
        #expect(reason(await authenticator.verify(token: k2)) == #"token kid "k2" is unknown"#)
        try TestKeys.writeJWKS([try keys.jwk(.rsa, kid: "k1", alg: "RS256"), try keys.jwk(.p256, kid: "k2")], to: path)
        #expect(try await authenticator.verify(token: k2).get().user == "alice")
        #expect(try await authenticator.verify(token: k1).get().user == "alice")
        try TestKeys.writeJWKS([try keys.jwk(.p256, kid: "k2")], to: path)
        _ = await authenticator.verify(token: try await keys.signer(.rsa, kid: "k3").sign(claims(), algorithm: .rs256))
        #expect(reason(await authenticator.verify(token: k1)) == #"token kid "k1" is unknown"#)
        // A broken file keeps the keys read before.
        try Data("not json".utf8).write(to: URL(fileURLWithPath: path))
        _ = await authenticator.verify(token: k1)
        #expect(try await authenticator.verify(token: k2).get().user == "alice")
    }

    @Test func jwksEntriesThatCannotBeTrustedAreSkipped() async throws {
        let keys = try TestKeys.shared()
        let path = keys.directory.appendingPathComponent("jwks-\(UUID().uuidString).json").path
        let mislabelled = try keys.jwk(.p256, kid: "mislabelled", alg: "RS256")
        try TestKeys.writeJWKS(
            [
                ["kty": "oct", "kid": "shared", "k": "c2VjcmV0"],
                mislabelled,
                try keys.jwk(.rsa, kid: "good"),
            ], to: path)
        let authenticator = try await Authenticator(keys: [], keySets: [JWKSFile(path: path)])
        let good = try await keys.signer(.rsa, kid: "good").sign(claims(), algorithm: .rs512)
        #expect(try await authenticator.verify(token: good).get().user == "alice")
        let shared = try await TokenKey.secret(String(repeating: "s", count: 32), kid: "shared").sign(claims())
        #expect(reason(await authenticator.verify(token: shared)) == #"token kid "shared" is unknown"#)
        let ec = try await keys.signer(.p256, kid: "mislabelled").sign(claims(), algorithm: .es256)
        #expect(reason(await authenticator.verify(token: ec)) == #"token kid "mislabelled" is unknown"#)
        // A file that is not there, or not a JWKS, fails the start-up with its path.
        await #expect(throws: ConfigurationError.self) { try await Authenticator(keys: [], keySets: [JWKSFile(path: path + ".missing")]) }
    }

    @Test func publicKeysCannotSignAndPEMsAreChecked() async throws {
        let keys = try TestKeys.shared()
        let verifier = try await keys.verifier(.rsa)
        #expect(!verifier.canSign)
        await #expect(throws: ConfigurationError.self) { try await verifier.sign(claims()) }
        await #expect(throws: ConfigurationError.self) { try await TokenKey.pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", source: "x.pem") }
        await #expect(throws: ConfigurationError.self) { try await keys.verifier(.p256, algorithm: .rs256) }
        await #expect(throws: ConfigurationError.self) { try await TokenKey.secret("short") }
    }
}
