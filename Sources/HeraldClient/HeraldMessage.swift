public import HeraldWire
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A delivered message (a `message` frame), new to the application: duplicates after a
/// reconnect are dropped before they get here.
public struct HeraldMessage: Sendable {
    /// `room` (a publish), `user` (a send to this user) or `all` (a broadcast).
    public let scope: Scope
    /// The sending user; `nil` when the backend published it through the HTTP API.
    public let from: String?
    /// The sender's `data`, byte for byte as the server delivered it.
    public let data: RawJSON
    /// The message's place in its channel (room and user messages; `nil` for broadcasts).
    public let position: StreamPosition?
    /// When the server accepted it, in milliseconds since 1970 (the accepting node's clock:
    /// order by ``position``, not by this).
    public let timestamp: Int64?
    /// The message must be acknowledged (`"ack":true`): until then the server sends it again to
    /// every new connection of the user.
    public let requiresAck: Bool

    let core: ClientCore?

    /// The room of a room message.
    public var room: String? {
        if case .room(let name) = scope { name } else { nil }
    }

    /// Decodes ``data`` as `T` (JSON).
    public func decode<T: Decodable>(_ type: T.Type = T.self, using decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(type, from: Data(data.bytes.readableBytesView))
    }

    /// Acknowledges an `ack:true` message and returns once the server confirmed it.
    ///
    /// With ``HeraldClient/Configuration/autoAck`` (the default) the client already acknowledges
    /// a message as soon as a stream took it into its buffer: a process that dies before handling
    /// it loses it. An application that needs "acknowledged only once processed" sets `autoAck`
    /// to `false` and calls this after processing; an unacknowledged message comes again on the
    /// next connection (and is delivered again unless this client already processed its offset).
    /// Acknowledging twice is harmless. Does nothing for a message without the mark.
    public func ack() async throws(HeraldClientError) {
        guard requiresAck, let core, let offset = position?.offset else { return }
        _ = try await core.request(.ack(offset: offset, epoch: position?.epoch), internal: true)
        if let position { core.locked { state, _ in state.acknowledged.insert(position) } }
    }
}

extension RawJSON {
    /// `value` encoded as JSON (to publish or send a value of your own type).
    public init<T: Encodable>(encoding value: T, using encoder: JSONEncoder = JSONEncoder()) throws(HeraldClientError) {
        do {
            let bytes = try encoder.encode(value)
            try self.init(validating: ByteBuffer(bytes: bytes))
        } catch {
            throw .invalidUse("the data cannot be encoded as JSON: \(error)")
        }
    }
}
