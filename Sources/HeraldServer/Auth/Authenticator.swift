public import Foundation
import HeraldWire
public import JWTKit
public import Logging

/// Turns the credentials of a WebSocket upgrade (and of a `refresh` frame) into an ``Identity``.
///
/// With keys: a JWT from `?token=` or `Authorization: Bearer`, `sub` = user id, optional
/// `rooms` and `send` claims, `exp` required unless ``TokenPolicy/allowsTokensWithoutExpiry``.
/// Without keys (development mode): `?user=NAME` is trusted.
///
/// The order of checks, each refusing with its own reason (close code 4001):
/// 1. size (at most ``TokenPolicy/maxTokenBytes``) and shape (three base64url parts);
/// 2. the header: `alg` one of ``TokenAlgorithm`` (never `none`), no `crit`;
/// 3. the key: the one named by `kid` (an unknown `kid` refreshes the key sets, at most once
///    per ``TokenPolicy/keySetRefreshInterval``), or without `kid` the keys for that `alg`; the
///    key must verify exactly that `alg` (an HMAC secret never checks an RSA signature, an
///    RSA key never an HMAC one: no algorithm confusion);
/// 4. the signature;
/// 5. the claims, with ``TokenPolicy/leeway``: `exp`, `nbf`, `iat` not in the future, `iss` and
///    `aud` when configured, `sub` a valid user name.
public struct Authenticator: Sendable {
    private let keyRing: TokenKeyRing?
    public let policy: TokenPolicy

    /// Development mode: trusts `?user=NAME`.
    public static let development = Authenticator(keyRing: nil, policy: TokenPolicy())

    private init(keyRing: TokenKeyRing?, policy: TokenPolicy) {
        self.keyRing = keyRing
        self.policy = policy
    }

    /// Verifies tokens with `keys` and the keys of `keySets` (fetched now; a set that cannot be
    /// fetched is retried when a token names a `kid` no key has).
    /// - Parameters:
    ///   - keys: secrets and public keys.
    ///   - keySets: JWKS files and URLs.
    ///   - policy: what a token must satisfy besides its signature.
    ///   - logger: where failed key set fetches are logged.
    /// - Throws: ``ConfigurationError`` when there is no key at all.
    public init(keys: [TokenKey], keySets: [any TokenKeySet] = [], policy: TokenPolicy = TokenPolicy(), logger: Logger? = nil) async throws(ConfigurationError)
    {
        guard !keys.isEmpty || !keySets.isEmpty else {
            throw ConfigurationError("no token keys: configure a JWT secret, a public key or a JWKS")
        }
        let ring = TokenKeyRing(keys: keys, keySets: keySets, refreshInterval: policy.keySetRefreshInterval, maxAge: policy.keySetMaxAge, logger: logger)
        try await ring.loadKeySets()
        self.init(keyRing: ring, policy: policy)
    }

    /// The shortest secret accepted: HS256 needs a key at least as long as its 32-byte hash.
    public static let minimumSecretBytes = TokenKey.minimumSecretBytes

    /// Verifies HS256, HS384 and HS512 tokens signed with `secret`.
    /// - Throws: ``ConfigurationError`` when the secret is shorter than ``minimumSecretBytes``.
    public static func jwt(secret: String, policy: TokenPolicy = TokenPolicy()) async throws(ConfigurationError) -> Authenticator {
        try await Authenticator(keys: [TokenKey.secret(secret)], policy: policy)
    }

    public var isDevelopmentMode: Bool { keyRing == nil }

    /// - Parameters:
    ///   - token: from `?token=` or the `Authorization: Bearer` header.
    ///   - user: from `?user=` (development mode only).
    ///   - now: the time the token's `exp`, `nbf` and `iat` are checked against.
    public func authenticate(token: String?, user: String?, now: Date = Date()) async -> Result<Identity, AuthenticationFailure> {
        guard keyRing != nil else { return Self.developmentIdentity(user: user) }
        guard let token, !token.isEmpty else {
            return .failure(.init("token missing: pass a JWT as ?token= or Authorization: Bearer"))
        }
        return await verify(token: token, now: now)
    }

    /// Verifies `token` (a connection's first token or a `refresh`) at the time `now`.
    public func verify(token: String, now: Date = Date()) async -> Result<Identity, AuthenticationFailure> {
        guard let keyRing else { return .failure(.init("no token keys: this server runs in development mode")) }
        guard token.utf8.count <= policy.maxTokenBytes else {
            return .failure(.init("token too large: over \(policy.maxTokenBytes) bytes"))
        }
        let header: TokenHeader
        switch TokenHeader.parse(token) {
        case .success(let parsed): header = parsed
        case .failure(let failure): return .failure(failure)
        }
        let candidates: [TokenKey]
        switch await keyRing.keys(for: header) {
        case .success(let found): candidates = found
        case .failure(let failure): return .failure(failure)
        }
        var failure = AuthenticationFailure("token signature invalid")
        for key in candidates {
            do {
                return check(try await key.verify(token, algorithm: header.algorithm), now: now)
            } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
                continue
            } catch {
                failure = AuthenticationFailure("token malformed: the claims are not JSON of the expected types")
            }
        }
        return .failure(failure)
    }

    /// The claim checks of step 5.
    func check(_ claims: HeraldClaims, now: Date) -> Result<Identity, AuthenticationFailure> {
        let leeway = policy.leewaySeconds
        if let exp = claims.exp?.value {
            if exp.timeIntervalSince(now) <= -leeway { return .failure(.init("token expired")) }
        } else if !policy.allowsTokensWithoutExpiry {
            return .failure(.init("token has no exp: tokens must expire (or start the server with --allow-tokens-without-exp)"))
        }
        if let nbf = claims.nbf?.value, nbf.timeIntervalSince(now) > leeway {
            return .failure(.init("token not valid yet (nbf is in the future)"))
        }
        if let iat = claims.iat?.value, iat.timeIntervalSince(now) > leeway {
            return .failure(.init("token issued in the future (iat): check the issuer's clock"))
        }
        if let issuer = policy.issuer, claims.iss?.value != issuer {
            return .failure(.init("token issuer (iss) is not the one this server accepts"))
        }
        if let audience = policy.audience, !(claims.aud?.value.contains(audience) ?? false) {
            return .failure(.init("token audience (aud) does not include this server's"))
        }
        let user = claims.sub.value
        if let problem = Name.problem(user) { return .failure(.init("token malformed: sub \(problem)")) }
        for pattern in (claims.rooms ?? []) + (claims.send ?? []) where pattern.utf8.count > Name.maxBytes + 1 {
            return .failure(.init("token malformed: a rooms or send pattern is longer than \(Name.maxBytes) bytes"))
        }
        // Past its bounds the claim is ignored like one of another shape: the user just
        // appears without info.
        let presenceInfo = claims.info?.values.flatMap { try? PresenceInfo.encode($0).get() }
        return .success(
            Identity(
                user: user,
                rooms: RoomPermissions(patterns: claims.rooms ?? []),
                recipients: claims.send.map { RoomPermissions(patterns: $0) },
                expires: claims.exp?.value,
                tokenID: claims.jti?.value,
                presenceInfo: presenceInfo
            ))
    }

    /// Development mode: `?user=NAME` is trusted, every room is open.
    static func developmentIdentity(user: String?) -> Result<Identity, AuthenticationFailure> {
        guard let user, !user.isEmpty else {
            return .failure(.init("user missing: in development mode connect with ?user=NAME"))
        }
        if let problem = Name.problem(user) { return .failure(.init("user name \(problem)")) }
        return .success(Identity(user: user, rooms: .any))
    }

    /// Mints a token with the first key that can sign (for `herald token` and tests).
    public func mint(_ claims: HeraldClaims) async throws -> String {
        guard let key = keyRing?.signingKey else { throw AuthenticationFailure("no secret or private key configured: cannot sign tokens") }
        return try await key.sign(claims)
    }
}

/// What a token must satisfy besides its signature, and the limits of checking it.
public struct TokenPolicy: Sendable, Equatable {
    /// Required `iss` when set.
    public var issuer: String?
    /// A value the token's `aud` must contain, when set.
    public var audience: String?
    /// Clock skew forgiven on `exp`, `nbf` and `iat` (issuer and server clocks differ a little).
    public var leeway: Duration = .seconds(5)
    /// Accept tokens without `exp` (they never expire): off by default, since a leaked token
    /// without expiry is valid forever.
    public var allowsTokensWithoutExpiry = false
    /// A JWKS is fetched again on an unknown `kid` at most this often, so tokens with random
    /// `kid`s cannot make the server hammer the identity provider.
    public var keySetRefreshInterval: Duration = .seconds(60)
    /// Key sets fetched longer ago than this are fetched again in the background (a token
    /// waits for nothing), so a key the provider withdrew stops verifying.
    public var keySetMaxAge: Duration = .seconds(600)
    /// The longest token accepted (larger ones are refused before any parsing).
    public var maxTokenBytes = 8 * 1024

    public init() {}

    var leewaySeconds: TimeInterval {
        let (seconds, attoseconds) = leeway.components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

/// Why a token or connection was refused; sent as the reason of close code 4001 (at most 123
/// bytes) or in a `refresh`'s error.
public struct AuthenticationFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// The claims Herald reads from a client token.
public struct HeraldClaims: JWTPayload, Equatable {
    /// The user id.
    public var sub: SubjectClaim
    /// Expiry: required (unless the server allows tokens without it); a connection is closed
    /// with 4001 when it passes without a `refresh`.
    public var exp: ExpirationClaim?
    /// Not before; a token used earlier is refused.
    public var nbf: NotBeforeClaim?
    /// Issued at; a token issued in the future (beyond the leeway) is refused.
    public var iat: IssuedAtClaim?
    /// Issuer, checked against ``TokenPolicy/issuer``.
    public var iss: IssuerClaim?
    /// Audience, checked against ``TokenPolicy/audience``.
    public var aud: AudienceClaim?
    /// Token id, for revocation.
    public var jti: IDClaim?
    /// Rooms the client may join itself: exact names or `prefix*` patterns.
    public var rooms: [String]?
    /// Users the client may `send` to: exact names or `prefix*` patterns (``SendPolicy/claim``).
    public var send: [String]?
    /// What the members of the user's rooms are told about the user with presence events
    /// (e.g. `{"name":"Ada"}`): at most ``PresenceInfo/maxEntries`` string values.
    public var info: InfoClaim?

    public init(sub: String, exp: Date?, rooms: [String]?) {
        self.sub = SubjectClaim(value: sub)
        self.exp = exp.map { ExpirationClaim(value: $0) }
        self.rooms = rooms
    }

    /// Signature only: the times and the issuer are checked by ``Authenticator`` with its
    /// clock, leeway and policy.
    public func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A token's `info` claim. Read leniently: a claim of another shape (another system's `info`)
/// is ignored, never a reason to refuse the token.
public struct InfoClaim: Codable, Equatable, Sendable, ExpressibleByDictionaryLiteral {
    /// `nil` when the claim is not an object of strings.
    public var values: [String: String]?

    public init(_ values: [String: String]) { self.values = values }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.values = Dictionary(elements, uniquingKeysWith: { _, last in last })
    }

    public init(from decoder: any Decoder) throws {
        values = try? decoder.singleValueContainer().decode([String: String].self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values)
    }
}

/// A configuration Herald cannot run with, or a service it needs that cannot be reached; the
/// message says what to change or what to check.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    /// A service the configuration names (Redis) cannot be reached: the configuration may be
    /// right, and starting again once the service is up may work.
    public let isUnavailable: Bool

    public init(_ message: String) {
        self.message = message
        self.isUnavailable = false
    }

    private init(message: String, isUnavailable: Bool) {
        self.message = message
        self.isUnavailable = isUnavailable
    }

    /// A service the node needs cannot be reached.
    public static func unavailable(_ message: String) -> ConfigurationError {
        ConfigurationError(message: message, isUnavailable: true)
    }

    public var description: String { message }
}
