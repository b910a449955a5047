public import HeraldWire
public import NIOCore

/// Live deliveries of one channel held back for one connection while it replays the channel's
/// history (a `join` with `since`), so that history and live messages meet without a gap or a
/// duplicate. Confined to the connection's event loop. Bounded by `limit` frames: past it the
/// hold overflows (the connection cannot be given an unbroken stream and should be cut off).
public final class DeliveryHold: @unchecked Sendable {
    public let target: DeliveryTarget
    let limit: Int
    /// Held frames, already framed for the transport, with their positions, in arrival order.
    public private(set) var held: [(position: StreamPosition, frame: ByteBuffer)] = []
    public private(set) var overflowed = false

    init(target: DeliveryTarget, limit: Int) {
        self.target = target
        self.limit = limit
    }

    func append(_ position: StreamPosition, _ frame: ByteBuffer) {
        guard held.count < limit else {
            overflowed = true
            return
        }
        held.append((position, frame))
    }
}
