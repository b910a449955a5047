public import Foundation
import HeraldWire
public import JWTKit

/// Turns the credentials of a WebSocket upgrade into an ``Identity``.
///
/// With a secret: an HS256 JWT from `?token=` or `Authorization: Bearer`, `sub` = user id,
/// optional `rooms` claim and `exp`. Without one (development mode): `?user=NAME` is trusted.
public struct Authenticator: Sendable {
    private let keys: JWTKeyCollection?

    /// Development mode: trusts `?user=NAME`.
    public static let development = Authenticator(keys: nil)

    private init(keys: JWTKeyCollection?) {
        self.keys = keys
    }

    /// The shortest secret accepted: HS256 needs a key at least as long as its 32-byte hash.
    public static let minimumSecretBytes = 32

    /// Verifies HS256 tokens signed with `secret`.
    /// - Throws: ``ConfigurationError`` when the secret is shorter than ``minimumSecretBytes``.
    public static func jwt(secret: String) async throws(ConfigurationError) -> Authenticator {
        guard secret.utf8.count >= minimumSecretBytes else {
            throw ConfigurationError(
                "the JWT secret is \(secret.utf8.count) bytes; HS256 needs at least \(minimumSecretBytes) (generate one with: openssl rand -hex 32)"
            )
        }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return Authenticator(keys: keys)
    }

    public var isDevelopmentMode: Bool { keys == nil }

    /// - Parameters:
    ///   - token: from `?token=` or the `Authorization: Bearer` header.
    ///   - user: from `?user=` (development mode only).
    public func authenticate(token: String?, user: String?) async -> Result<Identity, AuthenticationFailure> {
        guard let keys else { return Self.developmentIdentity(user: user) }
        guard let token, !token.isEmpty else {
            return .failure(.init("token missing: pass a JWT as ?token= or Authorization: Bearer"))
        }
        do {
            let claims = try await keys.verify(token, as: HeraldClaims.self)
            let user = claims.sub.value
            if let problem = Name.problem(user) { return .failure(.init("token malformed: sub \(problem)")) }
            return .success(Identity(user: user, rooms: RoomPermissions(patterns: claims.rooms ?? [])))
        } catch let error as JWTError {
            switch error.errorType {
            case .claimVerificationFailure where error.reason == "expired":
                return .failure(.init("token expired"))
            case .claimVerificationFailure:
                return .failure(.init("token not valid yet (nbf)"))
            case .signatureVerificationFailed:
                return .failure(.init("token signature invalid"))
            case .malformedToken:
                return .failure(.init("token malformed"))
            default:
                return .failure(.init("token rejected: \(error.errorType)"))
            }
        } catch {
            return .failure(.init("token malformed"))
        }
    }

    /// Development mode: `?user=NAME` is trusted, every room is open.
    static func developmentIdentity(user: String?) -> Result<Identity, AuthenticationFailure> {
        guard let user, !user.isEmpty else {
            return .failure(.init("user missing: in development mode connect with ?user=NAME"))
        }
        if let problem = Name.problem(user) { return .failure(.init("user name \(problem)")) }
        return .success(Identity(user: user, rooms: .any))
    }

    /// Mints a token (for `herald token` and tests).
    public func mint(_ claims: HeraldClaims) async throws -> String {
        guard let keys else { throw AuthenticationFailure("no JWT secret configured: cannot sign tokens") }
        return try await keys.sign(claims)
    }
}

/// Why a connection was refused; sent as the reason of close code 4001. At most 123 bytes.
public struct AuthenticationFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// The claims Herald reads from a client token.
public struct HeraldClaims: JWTPayload, Equatable {
    /// The user id.
    public var sub: SubjectClaim
    /// Expiry; a token past it is refused with "token expired".
    public var exp: ExpirationClaim?
    /// Not before; a token used earlier is refused.
    public var nbf: NotBeforeClaim?
    /// Rooms the client may join itself: exact names or `prefix*` patterns.
    public var rooms: [String]?

    public init(sub: String, exp: Date?, rooms: [String]?) {
        self.sub = SubjectClaim(value: sub)
        self.exp = exp.map { ExpirationClaim(value: $0) }
        self.rooms = rooms
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp?.verifyNotExpired()
        try nbf?.verifyNotBefore()
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
