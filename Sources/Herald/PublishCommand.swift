public import HeraldWire
import NIOCore

/// Why a publish command cannot be published (said to the backend that sent it).
public struct PublishCommandError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// The backend's publish commands, read the same way wherever they come from (the HTTP API's
/// single and batch calls, the ingest queue's batch entries):
///
/// - `{"data": ANY, "id"?: KEY, "ack"?: BOOL}` to a target given by the route;
/// - in a batch, each command names its own target: `{"room": R, …}`, `{"user": U, …}` or
///   `{"all": true, …}`.
///
/// `data` is passed on byte for byte; `id` is an idempotency key of 1 to 200 bytes; `ack`
/// (messages to a user only) keeps the message until one of the user's connections
/// acknowledges it.
public enum PublishCommand {
    /// Commands in one batch.
    public static let maxBatch = 1000

    /// The message `object` asks to publish to `target`.
    public static func envelope(_ object: JSONObject, to target: DeliveryTarget) -> Result<Envelope, PublishCommandError> {
        guard let data = object.raw("data") else { return .failure(PublishCommandError("missing field \"data\"")) }
        var requiresAck = false
        if let kind = object.kind("ack") {
            guard kind == .bool else { return .failure(PublishCommandError("field \"ack\" must be true or false")) }
            requiresAck = object.raw("ack").map { String(buffer: $0.bytes) == "true" } ?? false
            let toUser = if case .user = target { true } else { false }
            if requiresAck && !toUser {
                return .failure(PublishCommandError("\"ack\" is for messages to a user (POST /api/users/{user}/send, or {\"user\":U,…} in a batch)"))
            }
        }
        var envelope = Envelope.message(to: target, from: nil, data: data, requiresAck: requiresAck)
        switch object.string("id") {
        case .failure:
            return .failure(PublishCommandError("field \"id\" (the idempotency key) must be a string"))
        case .success(let key?):
            guard (1...200).contains(key.utf8.count) else { return .failure(PublishCommandError("field \"id\" (the idempotency key) must be 1 to 200 bytes")) }
            envelope.idempotencyKey = key
        case .success(nil):
            break
        }
        return .success(envelope)
    }

    /// A batch command, which names its own target.
    public static func envelope(command element: RawJSON) -> Result<Envelope, PublishCommandError> {
        let object: JSONObject
        do {
            object = try JSONObject(parsing: element.bytes)
        } catch {
            return .failure(PublishCommandError("a command must be a JSON object"))
        }
        let present = ["room", "user", "all"].filter { object.kind($0) != nil }
        guard present.count == 1, let key = present.first else {
            return .failure(PublishCommandError("a command needs exactly one target: \"room\", \"user\" or \"all\":true"))
        }
        switch key {
        case "all":
            guard object.raw("all").map({ String(buffer: $0.bytes) }) == "true" else { return .failure(PublishCommandError("\"all\" must be true")) }
            return envelope(object, to: .all)
        default:
            switch object.name(key) {
            case .failure(let error): return .failure(PublishCommandError(error.message))
            case .success(let name): return envelope(object, to: key == "room" ? .room(name) : .user(name))
            }
        }
    }

    /// The commands of a batch's `commands` array, each read on its own (one that is malformed
    /// does not spoil the others). Fails for a batch that is empty or larger than ``maxBatch``.
    public static func batch(_ elements: [RawJSON]) -> Result<[Result<Envelope, PublishCommandError>], PublishCommandError> {
        guard !elements.isEmpty else { return .failure(PublishCommandError("\"commands\" is empty: send at least one")) }
        guard elements.count <= maxBatch else {
            return .failure(PublishCommandError("\(elements.count) commands in one batch; at most \(maxBatch): split it"))
        }
        return .success(elements.map { envelope(command: $0) })
    }
}
