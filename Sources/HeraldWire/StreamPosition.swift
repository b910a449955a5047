/// Where a message stands in its channel's stream (a room's or a user's): its offset, strictly
/// increasing by one per message, and the epoch of the channel's history. A new epoch means the
/// history was lost (a restart without persistence, or the channel idle past its history
/// window): offsets from another epoch cannot be compared with it.
public struct StreamPosition: Sendable, Hashable, CustomStringConvertible {
    public var offset: Int64
    public var epoch: String

    public init(offset: Int64, epoch: String) {
        self.offset = offset
        self.epoch = epoch
    }

    public var description: String { "\(offset)@\(epoch)" }

    /// What a `join` with `"since":"latest"` asks for: no replay, only the room's position in
    /// the reply (offsets are never negative, so this is no channel's position).
    public static let latest = StreamPosition(offset: -1, epoch: "")
}

/// What a `join` with `since` achieved: every message after the client's position, or why not.
public enum Recovery: Sendable, Hashable, CaseIterable {
    /// Every message after the client's offset was replayed (or there were none).
    case recovered
    /// The channel's history belongs to another epoch: it was lost since the client's position.
    case epochChanged
    /// Messages after the client's offset are no longer kept (older than the history window).
    case historyExpired
    /// The client's offset is ahead of the channel's latest.
    case offsetAhead
    /// The client's position could not be read (`?since_offset=&since_epoch=` malformed): the
    /// connection is served from now on, like any other whose recovery failed.
    case invalidPosition

    /// The `reason` field of a `joined` reply that could not recover.
    public var reason: String? {
        switch self {
        case .recovered: nil
        case .epochChanged: "epoch_changed"
        case .historyExpired: "history_expired"
        case .offsetAhead: "offset_ahead"
        case .invalidPosition: "invalid_position"
        }
    }
}
