import ArgumentParser
import Foundation
import HeraldServer
import HeraldWire

/// `herald token`: mints a client token for development and tests.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mint a client JWT (HS256) signed with the server's secret.",
        discussion: "Example: herald token alice --rooms 'lobby,team-*' --jwt-secret s3cret"
    )

    @Argument(help: "The user id (the token's sub claim).")
    var user: String

    @Option(help: "Comma-separated rooms the client may join itself: exact names or prefix* patterns.")
    var rooms: String?

    @Option(parsing: .unconditional, help: "Seconds until the token expires, 1 to 31536000 (a year).")
    var ttl: Int = 3600

    @Option(name: .customLong("jwt-secret"), help: "The secret to sign with. (env: HERALD_JWT_SECRET)")
    var jwtSecret: String?

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

    private var roomList: [String]? {
        rooms?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() async throws {
        guard let secret = jwtSecret ?? ProcessInfo.processInfo.environment["HERALD_JWT_SECRET"], !secret.isEmpty else {
            throw ValidationError("no secret: pass --jwt-secret or set HERALD_JWT_SECRET (the same one the server uses)")
        }
        // exp is a NumericDate: whole seconds since the epoch.
        let expiry = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + TimeInterval(ttl)).rounded(.down))
        let claims = HeraldClaims(sub: user, exp: expiry, rooms: roomList)
        let token = try await Authenticator.jwt(secret: secret).mint(claims)
        print(token)
    }
}
