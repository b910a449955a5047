public import HeraldWire
public import NIOCore

/// How much of each room's and user's stream a broker keeps for recovery: the last `size`
/// messages, none older than `ttl`. A channel idle for longer than `ttl` is forgotten: its next
/// message starts a new epoch. `size` 0 keeps no history (messages still get offsets).
///
/// The in-memory broker also bounds history by bytes (``maxBytes``, ``maxChannelBytes``) and
/// keeps none for a channel nobody could recover from (see ``LocalBroker``); a Redis broker
/// keeps history in Redis, bounded there by `size` and `ttl`.
public struct HistoryConfiguration: Sendable, Equatable {
    public var size: Int = 100
    public var ttl: Duration = .seconds(300)
    /// How long a message sent with `ack` waits for its acknowledgement before it is dropped.
    public var ackTTL: Duration = .seconds(3600)
    /// Unacknowledged messages kept per user; past it the oldest is dropped.
    public var maxUnacknowledged = 1000
    /// Bytes of history one node keeps in memory over all channels. Past it the oldest entries
    /// of any channel are dropped first (a client that needed them is told `recovered: false`).
    public var maxBytes = 64 << 20
    /// Bytes of history one channel keeps (and of unacknowledged messages one user has); past
    /// it the channel's oldest entries are dropped.
    public var maxChannelBytes = 4 << 20
    /// Bytes of unacknowledged messages one node keeps in memory over all users. Past it a new
    /// message sent with `ack` is refused (HTTP 507 `storage_full`): a message already
    /// accepted is never dropped to make room.
    public var maxUnacknowledgedBytes = 64 << 20
    /// Rooms that keep no history (messages still get offsets): exact names or `prefix*`.
    public var roomsWithoutHistory: [String] = []

    /// The history size of `target`'s channel: 0 for rooms matching ``roomsWithoutHistory``.
    public func size(for target: DeliveryTarget) -> Int {
        guard case .room(let room) = target, !roomsWithoutHistory.isEmpty else { return size }
        let off = roomsWithoutHistory.contains { pattern in
            pattern.hasSuffix("*") ? room.hasPrefix(pattern.dropLast()) : room == pattern
        }
        return off ? 0 : size
    }

    public init(size: Int = 100, ttl: Duration = .seconds(300)) {
        self.size = size
        self.ttl = ttl
    }
}

/// One message kept in a channel's history (or waiting for its acknowledgement), as a broker
/// stores it: the frame without its position, where the position goes, and the position.
public struct HistoryEntry: Sendable {
    public var position: StreamPosition
    /// The message frame without its position fields (a frame stored whole has no index).
    public var body: ByteBuffer
    /// Where `"offset"` and `"epoch"` go in ``body``; `nil` when ``body`` is delivered as it is.
    public var positionIndex: Int?

    public var offset: Int64 { position.offset }

    /// The frame as clients receive it, stamped with its position by the node that sends it.
    public var frame: ByteBuffer { Envelope.stamp(body, at: positionIndex, with: position) }

    /// The entry as an envelope to `target`, for a node delivering it.
    public func envelope(to target: DeliveryTarget) -> Envelope {
        Envelope(target: target, frame: body, positionIndex: positionIndex, position: position)
    }

    /// What the entry costs in memory, for the byte budgets: the frame's storage (which may be
    /// larger than the frame) and a fixed overhead for the entry's bookkeeping.
    var cost: Int { body.storageCapacity + 64 }

    public init(position: StreamPosition, body: ByteBuffer, positionIndex: Int?) {
        self.position = position
        self.body = body
        self.positionIndex = positionIndex
    }
}

/// What a channel's history holds after a given offset.
public struct HistoryPage: Sendable {
    /// The channel's position now: its latest offset (0 before any message) and its epoch.
    public var latest: StreamPosition
    /// Messages after the requested offset, oldest first, at most the requested number.
    public var entries: [HistoryEntry]
    /// The oldest offset the history still holds (`latest.offset + 1` when it holds none).
    public var oldest: Int64

    public init(latest: StreamPosition, entries: [HistoryEntry], oldest: Int64) {
        self.latest = latest
        self.entries = entries
        self.oldest = oldest
    }

    /// Whether a client at `position` can be given every message it missed from this page.
    public func recovery(from position: StreamPosition) -> Recovery {
        if position.epoch != latest.epoch { return position.offset == 0 && latest.offset == 0 ? .recovered : .epochChanged }
        if position.offset > latest.offset { return .offsetAhead }
        if position.offset == latest.offset { return .recovered }
        guard oldest <= position.offset + 1, entries.first?.offset == position.offset + 1, entries.last?.offset == latest.offset else {
            return .historyExpired
        }
        return .recovered
    }
}
