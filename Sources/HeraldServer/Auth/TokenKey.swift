import Foundation
public import JWTKit

/// A signature algorithm Herald accepts in a token's `alg` header. `none` and every name not
/// listed here are refused.
public enum TokenAlgorithm: String, Sendable, CaseIterable, Comparable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case ps256 = "PS256"
    case es256 = "ES256", es384 = "ES384"
    case edDSA = "EdDSA"

    public static func < (lhs: TokenAlgorithm, rhs: TokenAlgorithm) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    var isHMAC: Bool { [.hs256, .hs384, .hs512].contains(self) }
    var isRSA: Bool { [.rs256, .rs384, .rs512, .ps256].contains(self) }
}

/// One key that verifies client tokens: an HMAC secret, or a public key (RSA, P-256, P-384,
/// Ed25519) from a PEM file or a JWKS, with the algorithms it verifies and its `kid`.
///
/// A key verifies only its own kind of algorithm: an RSA key never checks an HS256 signature
/// (that would make its public key a shared secret: "algorithm confusion"), an HMAC secret
/// never an RS256 one.
public struct TokenKey: Sendable {
    /// The `kid` a token names to pick this key; `nil` for a key chosen by algorithm alone.
    public let kid: String?
    /// The `alg` headers this key verifies.
    public let algorithms: Set<TokenAlgorithm>
    /// Where the key came from, for error messages and logs (`--jwt-secret`, a file, a JWKS).
    public let source: String
    /// One single-key collection per algorithm: jwt-kit then cannot fall back to another key.
    private let verifiers: [TokenAlgorithm: JWTKeyCollection]
    /// The key to sign with, when it is a secret or a private key (`herald token`, tests).
    private let signer: JWTKeyCollection?

    private init(kid: String?, source: String, verifiers: [TokenAlgorithm: JWTKeyCollection], signer: JWTKeyCollection? = nil) {
        self.kid = kid
        self.algorithms = Set(verifiers.keys)
        self.source = source
        self.verifiers = verifiers
        self.signer = signer
    }

    /// The shortest HMAC secret accepted: HS256 needs a key at least as long as its 32-byte hash.
    public static let minimumSecretBytes = 32

    /// An HMAC secret verifying HS256, and also HS384 from 48 bytes and HS512 from 64 (a key
    /// shorter than the hash output weakens it; jwt-kit refuses such keys).
    /// - Throws: ``ConfigurationError`` when the secret is shorter than ``minimumSecretBytes``.
    public static func secret(_ secret: String, kid: String? = nil, source: String = "--jwt-secret") async throws(ConfigurationError) -> TokenKey {
        guard secret.utf8.count >= minimumSecretBytes else {
            throw ConfigurationError(
                "the JWT secret is \(secret.utf8.count) bytes; HS256 needs at least \(minimumSecretBytes) (generate one with: openssl rand -hex 32)"
            )
        }
        var verifiers: [TokenAlgorithm: JWTKeyCollection] = [:]
        for (algorithm, digest, bytes) in [(TokenAlgorithm.hs256, DigestAlgorithm.sha256, 32), (.hs384, .sha384, 48), (.hs512, .sha512, 64)]
        where secret.utf8.count >= bytes {
            verifiers[algorithm] = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: digest)
        }
        return TokenKey(kid: kid, source: source, verifiers: verifiers, signer: verifiers[.hs256])
    }

    /// A public (or private) key in PEM: RSA (RS256, RS384, RS512, PS256), EC P-256 (ES256),
    /// EC P-384 (ES384) or Ed25519 (EdDSA). A private key also signs (``sign(_:algorithm:)``).
    ///
    /// - Parameters:
    ///   - pem: the key in PEM (`-----BEGIN PUBLIC KEY-----`, or a private key).
    ///   - kid: the `kid` tokens name to pick this key; `nil` to pick it by algorithm.
    ///   - algorithm: restricts an RSA key to one algorithm; other kinds have exactly one.
    ///   - source: where the key came from, for error messages.
    /// - Throws: ``ConfigurationError`` when the PEM is none of these.
    public static func pem(_ pem: String, kid: String? = nil, algorithm: TokenAlgorithm? = nil, source: String) async throws(ConfigurationError) -> TokenKey {
        let key: TokenKey
        if let rsa = try? Insecure.RSA.PublicKey(pem: pem) {
            key = await rsaKey(rsa, kid: kid, source: source)
        } else if let rsa = try? Insecure.RSA.PrivateKey(pem: pem) {
            key = await rsaKey(rsa, kid: kid, source: source, signs: true)
        } else if let ec = try? ES256PublicKey(pem: pem) {
            key = await single(.es256, JWTKeyCollection().add(ecdsa: ec), kid: kid, source: source)
        } else if let ec = try? ES256PrivateKey(pem: pem) {
            key = await single(.es256, JWTKeyCollection().add(ecdsa: ec), kid: kid, source: source, signs: true)
        } else if let ec = try? ES384PublicKey(pem: pem) {
            key = await single(.es384, JWTKeyCollection().add(ecdsa: ec), kid: kid, source: source)
        } else if let ec = try? ES384PrivateKey(pem: pem) {
            key = await single(.es384, JWTKeyCollection().add(ecdsa: ec), kid: kid, source: source, signs: true)
        } else if let ed = try? EdDSA.PublicKey(pem: pem) {
            key = await single(.edDSA, JWTKeyCollection().add(eddsa: ed), kid: kid, source: source)
        } else if let ed = try? EdDSA.PrivateKey(pem: pem) {
            key = await single(.edDSA, JWTKeyCollection().add(eddsa: ed), kid: kid, source: source, signs: true)
        } else {
            throw ConfigurationError(
                "\(source): not a PEM RSA, EC P-256, EC P-384 or Ed25519 key (expected -----BEGIN PUBLIC KEY----- or a private key)")
        }
        guard let algorithm else { return key }
        guard key.algorithms.contains(algorithm) else {
            throw ConfigurationError(
                "\(source): a key for \(key.algorithms.sorted().map(\.rawValue).joined(separator: ", ")) cannot verify \(algorithm.rawValue)")
        }
        return key.restricted(to: algorithm)
    }

    /// A key from a JWKS entry. An entry with `alg` verifies only that algorithm; without one,
    /// the algorithms of its key type. Symmetric (`oct`) and private entries are refused: a
    /// published key set holds public keys.
    /// - Throws: ``ConfigurationError`` naming the entry's problem.
    public static func jwk(_ jwk: JWK, source: String) async throws(ConfigurationError) -> TokenKey {
        let kid = jwk.keyIdentifier?.string
        let name = "\(source) key \(kid.map { "\"\($0)\"" } ?? "without kid")"
        let declared: TokenAlgorithm?
        if let alg = jwk.algorithm?.rawValue {
            guard let algorithm = TokenAlgorithm(rawValue: alg) else { throw ConfigurationError("\(name): algorithm \(alg) is not supported") }
            declared = algorithm
        } else {
            declared = nil
        }
        guard jwk.privateExponent == nil else { throw ConfigurationError("\(name) is a private key: publish only public keys") }
        do {
            let key: TokenKey
            switch jwk.keyType {
            case .rsa:
                guard let modulus = jwk.modulus, let exponent = jwk.exponent else { throw ConfigurationError("\(name): RSA key without n or e") }
                key = await rsaKey(try Insecure.RSA.PublicKey(modulus: modulus, exponent: exponent), kid: kid, source: source)
            case .ecdsa:
                guard let x = jwk.x, let y = jwk.y else { throw ConfigurationError("\(name): EC key without x or y") }
                switch jwk.curve?.rawValue {
                case "P-256": key = await single(.es256, JWTKeyCollection().add(ecdsa: try ES256PublicKey(parameters: (x, y))), kid: kid, source: source)
                case "P-384": key = await single(.es384, JWTKeyCollection().add(ecdsa: try ES384PublicKey(parameters: (x, y))), kid: kid, source: source)
                default: throw ConfigurationError("\(name): EC curve \(jwk.curve?.rawValue ?? "(none)") is not supported (P-256, P-384)")
                }
            case .octetKeyPair:
                guard let x = jwk.x, jwk.curve?.rawValue == "Ed25519" else { throw ConfigurationError("\(name): OKP key that is not Ed25519 with x") }
                key = await single(.edDSA, JWTKeyCollection().add(eddsa: try EdDSA.PublicKey(x: x, curve: .ed25519)), kid: kid, source: source)
            default:
                throw ConfigurationError("\(name): key type \(jwk.keyType.rawValue) is not supported (RSA, EC, OKP)")
            }
            guard let declared else { return key }
            guard key.algorithms.contains(declared) else {
                throw ConfigurationError("\(name): alg \(declared.rawValue) does not fit its key type \(jwk.keyType.rawValue)")
            }
            return key.restricted(to: declared)
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError("\(name): invalid key material (\(error))")
        }
    }

    private static func rsaKey(_ key: some RSAKey, kid: String?, source: String, signs: Bool = false) async -> TokenKey {
        var verifiers: [TokenAlgorithm: JWTKeyCollection] = [:]
        verifiers[.rs256] = await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha256)
        verifiers[.rs384] = await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha384)
        verifiers[.rs512] = await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha512)
        verifiers[.ps256] = await JWTKeyCollection().add(pss: key, digestAlgorithm: .sha256)
        return TokenKey(kid: kid, source: source, verifiers: verifiers, signer: signs ? verifiers[.rs256] : nil)
    }

    private static func single(_ algorithm: TokenAlgorithm, _ keys: JWTKeyCollection, kid: String?, source: String, signs: Bool = false) -> TokenKey {
        TokenKey(kid: kid, source: source, verifiers: [algorithm: keys], signer: signs ? keys : nil)
    }

    /// This key for `algorithm` only.
    func restricted(to algorithm: TokenAlgorithm) -> TokenKey {
        let verifiers = self.verifiers.filter { $0.key == algorithm }
        return TokenKey(kid: kid, source: source, verifiers: verifiers, signer: signer == nil ? nil : verifiers[algorithm])
    }

    /// Checks the token's signature with this key for `algorithm` and decodes its claims (their
    /// times are checked by the caller, with its clock and leeway).
    func verify(_ token: String, algorithm: TokenAlgorithm) async throws -> HeraldClaims {
        guard let keys = verifiers[algorithm] else { throw JWTError.signatureVerificationFailed }
        return try await keys.verify(token, as: HeraldClaims.self)
    }

    /// Whether this key can sign (a secret or a private key).
    public var canSign: Bool { signer != nil }

    /// Signs `claims` with `algorithm` (one of ``algorithms``), with this key's `kid` in the header.
    /// - Throws: ``ConfigurationError`` when this is a public key or the algorithm is not this key's.
    public func sign(_ claims: HeraldClaims, algorithm: TokenAlgorithm? = nil) async throws -> String {
        guard signer != nil else { throw ConfigurationError("\(source) is a public key: signing needs the secret or the private key") }
        let algorithm = algorithm ?? algorithms.sorted().first!
        guard let keys = verifiers[algorithm] else {
            throw ConfigurationError("\(source) cannot sign \(algorithm.rawValue) (it signs \(algorithms.sorted().map(\.rawValue).joined(separator: ", ")))")
        }
        return try await keys.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }
}
