import Foundation
import HTTPTypes
import Herald
import HeraldWire
import NIOCore

/// The HTTP API's publishing calls, `POST /api/broadcast`, `POST /api/rooms/{room}/publish`
/// and `POST /api/users/{user}/send`: their routes and their bodies, shared by the router and
/// by ``PublishRequestHandler`` (the same call answered on the event loop).
enum PublishRequest {
    /// The target of a publishing route, or `nil` for any other path. A bad name in the path
    /// is an ``APIError`` (400).
    static func target(path: String) -> Result<DeliveryTarget, APIError>? {
        let path = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        // "", "api", …
        guard parts.count >= 3, parts[0].isEmpty, parts[1] == "api" else { return nil }
        switch parts.count {
        case 3 where parts[2] == "broadcast":
            return .success(.all)
        case 5 where parts[2] == "rooms" && parts[4] == "publish":
            return name(parts[3], "room").map { .room($0) }
        case 5 where parts[2] == "users" && parts[4] == "send":
            return name(parts[3], "user").map { .user($0) }
        default:
            return nil
        }
    }

    /// A room or user name from the path (percent-decoded), validated like the WebSocket protocol's names.
    static func name(_ raw: Substring, _ key: String) -> Result<String, APIError> {
        let value = String(raw)
        // Foundation's decoding is costly; most names have nothing to decode.
        var decoded = value
        if value.utf8.contains(UInt8(ascii: "%")) {
            // `%FF`, `%zz`, a lone `%`: not a name, nor a literal one.
            guard let text = value.removingPercentEncoding else {
                return .failure(APIError(.badRequest, code: .badRequest, message: "\(key) name is not valid percent-encoded UTF-8"))
            }
            decoded = text
        }
        if let problem = Name.problem(decoded) {
            return .failure(APIError(.badRequest, code: .badRequest, message: "\(key) name \(problem)"))
        }
        return .success(decoded)
    }

    /// Reads `{"data": ANY, "id"?: KEY, "ack"?: BOOL}` into the envelope to publish.
    static func envelope(body: ByteBuffer, to target: DeliveryTarget) throws(APIError) -> Envelope {
        let object: JSONObject
        do {
            object = try JSONObject(parsing: body)
        } catch {
            throw APIError(.badRequest, code: .badRequest, message: "body must be a JSON object: \(error.message)")
        }
        switch PublishCommand.envelope(object, to: target) {
        case .success(let envelope): return envelope
        case .failure(let error): throw APIError(.badRequest, code: .badRequest, message: error.message)
        }
    }

    static func tooLarge(_ limit: Int) -> APIError {
        APIError(.contentTooLarge, code: .badRequest, message: "body larger than \(limit) bytes")
    }

    static func notPublished(_ error: any Error) -> APIError {
        if let error = error as? BrokerError, error.kind == .storageFull {
            return APIError(.init(code: 507, reasonPhrase: "Insufficient Storage"), code: .storageFull, message: "message not published: \(error)")
        }
        // Not "not published": a command Redis received before it stopped answering may still
        // be applied. The retry with the same id is what makes that safe.
        return APIError(.serviceUnavailable, code: .unavailable, message: "message not confirmed (retry with the same id): \(error)")
    }

    /// The body of every 202, built once: publishing is the API's hot call.
    static let acceptedBody = ByteBuffer(string: #"{"accepted":true}"#)
}
