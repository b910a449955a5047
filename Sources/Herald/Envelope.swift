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
/// Handlers build an envelope and publish it; they never write to sockets. A broker moves the
/// frame as opaque bytes: a message to a room or a user gets its channel's next position from
/// the broker (``position``), and the node that delivers it stamps `"offset"` and `"epoch"` into
/// the frame at ``positionIndex`` once per message (``deliveredFrame``), then hands the same
/// bytes to every local recipient. Broadcasts carry no position.
public struct Envelope: Sendable {
    public var target: DeliveryTarget
    /// The `message` frame as sent to clients, without its position fields.
    public var frame: ByteBuffer
    /// Where the position fields go in `frame`; `nil` for a frame delivered as it is (a broadcast).
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
    /// broker keeps the message until the user acknowledges it. `acceptedAt` (milliseconds since
    /// 1970, now by default) becomes the frame's `"ts"`: stamped once here, on the node that took
    /// the message, it travels with the frame through every broker and into history.
    public static func message(
        to target: DeliveryTarget, from sender: String?, data: RawJSON, requiresAck: Bool = false,
        acceptedAt: Int64 = WallClock.millisecondsSince1970()
    ) -> Envelope {
        let scope: Scope
        switch target {
        case .all: scope = .all
        case .room(let room): scope = .room(room)
        case .user: scope = .user
        }
        let (frame, index) = ServerFrame.messageParts(
            scope: scope, from: sender, data: data, requiresAck: requiresAck, acceptedAt: acceptedAt)
        var envelope = Envelope(target: target, frame: frame, positionIndex: target == .all ? nil : index)
        envelope.requiresAck = requiresAck
        return envelope
    }

    /// The envelope at `position` in its channel (the frame is not touched).
    public func at(_ position: StreamPosition) -> Envelope {
        var envelope = self
        envelope.position = position
        return envelope
    }

    /// The frame as clients receive it: with `"offset"` and `"epoch"` when it has a position.
    public var deliveredFrame: ByteBuffer {
        guard let position else { return frame }
        return Self.stamp(frame, at: positionIndex, with: position)
    }

    /// `frame` with `,"offset":O,"epoch":E` inserted at `index` (`frame` itself without an index).
    public static func stamp(_ frame: ByteBuffer, at index: Int?, with position: StreamPosition) -> ByteBuffer {
        guard let index, index <= frame.readableBytes else { return frame }
        var head = frame.getSlice(at: frame.readerIndex, length: index)!
        var fields = ServerFrame.positionFields(position)
        var tail = frame.getSlice(at: frame.readerIndex + index, length: frame.readableBytes - index)!
        var stamped = ByteBuffer()
        stamped.reserveCapacity(head.readableBytes + fields.readableBytes + tail.readableBytes)
        stamped.writeBuffer(&head)
        stamped.writeBuffer(&fields)
        stamped.writeBuffer(&tail)
        return stamped
    }
}
