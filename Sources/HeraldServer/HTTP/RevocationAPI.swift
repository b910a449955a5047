import Foundation
import Herald
import HeraldWire
import Hummingbird
import NIOCore

/// The backend's revocations (docs/security.md, "Revocation"): closing every connection of a
/// user on every node, and revoking a token by its id (`jti`) until it would have expired.
struct RevocationAPI {
    let node: HeraldNode

    /// Close codes a backend may end connections with, and what each tells the client.
    static let disconnectCodes: [CloseCode] = [.disconnectedByBackend, .unauthorized, .normal, .serviceRestart, .tryAgainLater]
    static let defaultDisconnectReason = "disconnected by the backend"
    /// A close reason must fit a close frame (123 bytes); kept well under.
    static let maxReasonBytes = 100
    static let maxTokenIDBytes = 256
    static let maxBodyBytes = 4096

    func register(on api: RouterGroup<BasicRequestContext>) {
        // DELETE /api/users/{user}/connections [{"code":4003,"reason":"..."}]
        api.delete("users/:user/connections") { request, context in
            guard let value = context.parameters.get("user") else {
                throw APIError(.badRequest, code: .badRequest, message: "missing user in the path")
            }
            let user = try PublishRequest.name(Substring(value), "user").get()
            let order = try await Self.decode(DisconnectRequest.self, request)
            let code = try Self.closeCode(order?.code)
            let reason = try Self.reason(order?.reason)
            // This node's connect hook asks again next time (other nodes' cached answers last
            // --hook-cache-ttl: revoke the user's tokens to keep them out).
            node.connectHook?.forget(user: user)
            do throws(HubError) {
                try await node.roster.disconnect(user: user, code: code, reason: reason)
            } catch {
                throw APIError(.serviceUnavailable, code: .unavailable, message: error.description)
            }
            return JSONBody.response(.ok, DisconnectReply(user: user, code: Int(code.rawValue), reason: reason))
        }
        // POST /api/tokens/{jti}/revoke [{"expires": UNIX SECONDS}]
        api.post("tokens/:jti/revoke") { request, context in
            // Path parameters arrive percent-encoded: a jti is compared as the token carries it.
            let id = try Self.tokenID(context.parameters.get("jti").map { $0.removingPercentEncoding ?? "\u{0}" })
            let order = try await Self.decode(RevokeRequest.self, request)
            let now = Int64(Date().timeIntervalSince1970)
            let expires = try Self.expiry(order?.expires, now: now, defaultTTL: node.configuration.defaultRevocationTTL)
            // A token is accepted until exp plus the leeway: held that long, and a minute more
            // for clocks that disagree.
            let held = expires + node.configuration.tokenPolicy.leeway.components.seconds + 60
            do throws(HubError) {
                try await node.denylist.revoke(id, until: held)
            } catch  where error.isLimit {
                throw APIError(.init(code: 507, reasonPhrase: "Insufficient Storage"), code: .limitExceeded, message: error.description)
            } catch {
                throw APIError(.serviceUnavailable, code: .unavailable, message: error.description)
            }
            return JSONBody.response(.ok, RevokeReply(jti: id, revoked: true, expires: expires))
        }
    }

    /// The body, when there is one: absent or empty means every default.
    static func decode<T: Decodable>(_ type: T.Type, _ request: Request) async throws -> T? {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: maxBodyBytes)
        } catch {
            throw APIError(.contentTooLarge, code: .badRequest, message: "the body is larger than \(maxBodyBytes) bytes")
        }
        guard body.readableBytes > 0 else { return nil }
        do {
            return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView))
        } catch {
            throw APIError(.badRequest, code: .badRequest, message: "the body must be a JSON object with the documented fields: \(Self.describe(error))")
        }
    }

    static func closeCode(_ code: Int?) throws -> CloseCode {
        guard let code else { return .disconnectedByBackend }
        guard let known = UInt16(exactly: code).flatMap(CloseCode.init(rawValue:)), disconnectCodes.contains(known) else {
            let allowed = disconnectCodes.map { String($0.rawValue) }.joined(separator: ", ")
            throw APIError(.badRequest, code: .badRequest, message: "code must be one of \(allowed), not \(code)")
        }
        return known
    }

    static func reason(_ reason: String?) throws -> String {
        guard let reason else { return defaultDisconnectReason }
        guard reason.utf8.count <= maxReasonBytes, !reason.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw APIError(.badRequest, code: .badRequest, message: "reason must be at most \(maxReasonBytes) bytes of UTF-8 without control characters")
        }
        return reason
    }

    static func tokenID(_ value: String?) throws -> String {
        guard let value, !value.isEmpty, value.utf8.count <= maxTokenIDBytes,
            !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        else {
            throw APIError(
                .badRequest, code: .badRequest,
                message: "jti must be 1 to \(maxTokenIDBytes) bytes without control characters, percent-encoded in the path")
        }
        return value
    }

    /// `expires` must lie ahead, and at most a year ahead (a denylist entry is held until then).
    static func expiry(_ expires: Int64?, now: Int64, defaultTTL: TimeAmount) throws -> Int64 {
        guard let expires else { return now + max(1, defaultTTL.nanoseconds / 1_000_000_000) }
        guard expires > now, expires <= now + 366 * 86_400 else {
            throw APIError(
                .badRequest, code: .badRequest, message: "expires must be a time in seconds since 1970 within the next year (the token's exp), not \(expires)")
        }
        return expires
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            "\(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type"
        case DecodingError.dataCorrupted: "not valid JSON"
        default: "not a JSON object"
        }
    }
}

struct DisconnectRequest: Decodable {
    var code: Int?
    var reason: String?
}

struct DisconnectReply: Encodable {
    var user: String
    var code: Int
    var reason: String
}

struct RevokeRequest: Decodable {
    var expires: Int64?
}

struct RevokeReply: Encodable {
    var jti: String
    var revoked: Bool
    var expires: Int64
}
