public import HeraldWire
public import NIOCore

/// Who a message is addressed to: the seed's three scopes.
public enum DeliveryTarget: Sendable, Hashable, CustomStringConvertible {
    /// Every connection, everywhere.
    case all
    /// Every connection of every member of the room.
    case room(String)
    /// Every connection of the user.
    case user(String)

    public var description: String {
        switch self {
        case .all: "all"
        case .room(let room): "room \(room)"
        case .user(let user): "user \(user)"
        }
    }
}

/// A message on its way through the broker: the target and the delivery frame, encoded once.
///
/// Handlers build an envelope and publish it; they never write to sockets. Every node's hub
/// delivers the same `frame` bytes to its local recipients.
public struct Envelope: Sendable {
    public var target: DeliveryTarget
    /// The complete `message` frame as sent to clients.
    public var frame: ByteBuffer

    public init(target: DeliveryTarget, frame: ByteBuffer) {
        self.target = target
        self.frame = frame
    }

    /// Encodes a `message` frame for `target`; `sender` is `nil` when the backend published it.
    public static func message(to target: DeliveryTarget, from sender: String?, data: RawJSON) -> Envelope {
        let scope: Scope
        switch target {
        case .all: scope = .all
        case .room(let room): scope = .room(room)
        case .user: scope = .user
        }
        return Envelope(target: target, frame: ServerFrame.message(scope: scope, from: sender, data: data))
    }
}
