import ArgumentParser
import Foundation
import HeraldServer

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

    @Option(help: "Seconds until the token expires.")
    var ttl: Int = 3600

    @Option(name: .customLong("jwt-secret"), help: "The secret to sign with. (env: HERALD_JWT_SECRET)")
    var jwtSecret: String?

    func run() async throws {
        guard let secret = jwtSecret ?? ProcessInfo.processInfo.environment["HERALD_JWT_SECRET"], !secret.isEmpty else {
            throw ValidationError("no secret: pass --jwt-secret or set HERALD_JWT_SECRET (the same one the server uses)")
        }
        let roomList = rooms?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let claims = HeraldClaims(sub: user, exp: Date().addingTimeInterval(TimeInterval(ttl)), rooms: roomList)
        let token = try await Authenticator.jwt(secret: secret).mint(claims)
        print(token)
    }
}
