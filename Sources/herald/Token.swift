import ArgumentParser
import Foundation
import HeraldServer
import HeraldWire
import JWTKit

/// `herald token`: mints a client token for development and tests.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mint a client JWT, signed with the server's secret (HS256/384/512) or a private key (RS*, PS256, ES256/384, EdDSA).",
        discussion: """
            Examples:
              herald token alice --rooms 'lobby,team-*' --jwt-secret "$SECRET"
              herald token alice --private-key key.pem --kid main --alg RS256 --issuer https://id.example.com
            """
    )

    @Argument(help: "The user id (the token's sub claim).")
    var user: String

    @Option(help: "Comma-separated rooms the client may join itself: exact names or prefix* patterns.")
    var rooms: String?

    @Option(parsing: .unconditional, help: "Seconds until the token expires, 1 to 31536000 (a year).")
    var ttl: Int = 3600

    @Option(name: .customLong("jwt-secret"), help: "The secret to sign with. (env: HERALD_JWT_SECRET)")
    var jwtSecret: String?

    @Option(name: .customLong("private-key"), help: "A PEM private key to sign with (RSA, EC P-256 or P-384, Ed25519) instead of a secret.")
    var privateKey: String?

    @Option(help: "The signing algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA); default: the key's first.")
    var alg: String?

    @Option(help: "The kid header: which of the server's keys verifies the token.")
    var kid: String?

    @Option(help: "Users the client may send to (the send claim): comma-separated names or prefix* patterns.")
    var send: String?

    @Option(help: "The iss claim.")
    var issuer: String?

    @Option(help: "The aud claim.")
    var audience: String?

    @Option(help: "The jti claim (a token id, for revocation).")
    var jti: String?

    @Option(help: "An entry of the info claim, KEY=VALUE (repeatable): what presence events tell room members about the user, e.g. name=Ada.")
    var info: [String] = []

    /// The info claim from the `--info` options.
    private var infoClaim: [String: String]? {
        get throws {
            guard !info.isEmpty else { return nil }
            var claim: [String: String] = [:]
            for entry in info {
                guard let equals = entry.firstIndex(of: "=") else { throw ValidationError("--info \(entry): expected KEY=VALUE") }
                claim[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
            }
            if case .failure(let problem) = PresenceInfo.encode(claim) { throw ValidationError("--info: the claim \(problem)") }
            return claim
        }
    }

    static let ttlRange = 1...31_536_000

    func validate() throws {
        if let problem = Name.problem(user) {
            throw ValidationError("the user id (the token's sub) \(problem)")
        }
        guard Self.ttlRange.contains(ttl) else {
            throw ValidationError("--ttl must be between \(Self.ttlRange.lowerBound) and \(Self.ttlRange.upperBound) seconds, not \(ttl)")
        }
        for room in roomList ?? [] {
            let name = room.hasSuffix("*") ? String(room.dropLast()) : room
            if !name.isEmpty, let problem = Name.problem(name) { throw ValidationError("--rooms: \(room) \(problem)") }
        }
    }

    private var roomList: [String]? { Self.list(rooms) }

    private static func list(_ text: String?) -> [String]? {
        text?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() async throws {
        var algorithm: TokenAlgorithm?
        if let alg {
            guard let parsed = TokenAlgorithm(rawValue: alg) else {
                throw ValidationError("--alg \(alg) is not one of \(TokenAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            algorithm = parsed
        }
        let key: TokenKey
        do {
            if let privateKey {
                guard let data = FileManager.default.contents(atPath: privateKey), let pem = String(data: data, encoding: .utf8) else {
                    throw ValidationError("--private-key \(privateKey): no readable PEM file there")
                }
                key = try await TokenKey.pem(pem, kid: kid, source: privateKey)
                guard key.canSign else { throw ValidationError("--private-key \(privateKey) is a public key: signing needs the private key") }
            } else {
                guard let secret = jwtSecret ?? ProcessInfo.processInfo.environment["HERALD_JWT_SECRET"], !secret.isEmpty else {
                    throw ValidationError("no key: pass --jwt-secret (or set HERALD_JWT_SECRET, the same one the server uses) or --private-key")
                }
                key = try await TokenKey.secret(secret, kid: kid)
            }
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
        // exp is a NumericDate: whole seconds since the epoch.
        let now = Date().timeIntervalSince1970.rounded(.down)
        var claims = HeraldClaims(sub: user, exp: Date(timeIntervalSince1970: now + TimeInterval(ttl)), rooms: roomList)
        claims.iat = IssuedAtClaim(value: Date(timeIntervalSince1970: now))
        claims.send = Self.list(send)
        claims.iss = issuer.map { IssuerClaim(value: $0) }
        claims.aud = audience.map { AudienceClaim(value: $0) }
        claims.jti = jti.map { IDClaim(value: $0) }
        claims.info = try infoClaim.map(InfoClaim.init)
        do {
            print(try await key.sign(claims, algorithm: algorithm))
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
    }
}
