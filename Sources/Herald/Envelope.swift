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
/// delivers the same `frame` bytes to its local recipients. A message to a room or a user gets
/// its channel's next offset from the broker, which inserts `"offset"` and `"epoch"` into the
/// frame at ``positionIndex`` (``positioned(_:)``) before it is delivered; broadcasts carry none.
public struct Envelope: Sendable {
    public var target: DeliveryTarget
    /// The complete `message` frame as sent to clients.
    public var frame: ByteBuffer
    /// Where the position fields go in `frame`; `nil` once positioned, or for a broadcast.
    public var positionIndex: Int?
    /// The message's place in its channel's stream, once the broker assigned it.
    public var position: StreamPosition?
    /// The publisher's key for this message: a second publish with the same key to the same
    /// target within the history TTL is accepted but not delivered again.
    public var idempotencyKey: String?
    /// A message to a user that is kept until one of the user's connections acknowledges it
    /// (`{"type":"ack","offset":O}`), and sent again to each new connection of the user until then.
    public var requiresAck = false

    public init(target: DeliveryTarget, frame: ByteBuffer, positionIndex: Int? = nil, position: StreamPosition? = nil) {
        self.target = target
        self.frame = frame
        self.positionIndex = positionIndex
        self.position = position
    }

    /// Encodes a `message` frame for `target`; `sender` is `nil` when the backend published it.
    /// With `requiresAck` (messages to a user only) the frame carries `"ack":true` and the
    /// broker keeps the message until the user acknowledges it.
    public static func message(to target: DeliveryTarget, from sender: String?, data: RawJSON, requiresAck: Bool = false) -> Envelope {
        let scope: Scope
        switch target {
        case .all: scope = .all
        case .room(let room): scope = .room(room)
        case .user: scope = .user
        }
        let (frame, index) = ServerFrame.messageParts(scope: scope, from: sender, data: data, requiresAck: requiresAck)
        var envelope = Envelope(target: target, frame: frame, positionIndex: target == .all ? nil : index)
        envelope.requiresAck = requiresAck
        return envelope
    }

    /// The frame up to where the position fields go (all of it when there is no such place).
    public var head: ByteBuffer {
        guard let positionIndex else { return frame }
        return frame.getSlice(at: frame.readerIndex, length: positionIndex)!
    }

    /// The frame from where the position fields go (empty when there is no such place).
    public var tail: ByteBuffer {
        guard let positionIndex else { return ByteBuffer() }
        return frame.getSlice(at: frame.readerIndex + positionIndex, length: frame.readableBytes - positionIndex)!
    }

    /// The envelope with `"offset"` and `"epoch"` in its frame.
    public func positioned(_ position: StreamPosition) -> Envelope {
        guard positionIndex != nil else { return Envelope(target: target, frame: frame, position: position) }
        var head = self.head
        var fields = ServerFrame.positionFields(position)
        var tail = self.tail
        var framed = ByteBuffer()
        framed.reserveCapacity(head.readableBytes + fields.readableBytes + tail.readableBytes)
        framed.writeBuffer(&head)
        framed.writeBuffer(&fields)
        framed.writeBuffer(&tail)
        return Envelope(target: target, frame: framed, position: position)
    }
}
