import HeraldWire

/// A channel whose messages carry offsets: a room, or the user's own channel.
public enum Channel: Sendable, Hashable, CustomStringConvertible {
    case room(String)
    case user

    public var description: String {
        switch self {
        case .room(let name): "room \(name)"
        case .user: "the user channel"
        }
    }
}

/// The last processed position per channel, and the de-duplication rule of herald.js.
///
/// `offset` is the last message processed; `floor` is where a `recovered:false` moved the
/// channel (messages up to it are lost, not processed), so an `ack:true` message below the
/// floor that was never processed is still delivered. Bounded: beyond `limit` channels the
/// least recently used is forgotten (its next join or connection simply cannot resume).
struct ChannelPositions: Sendable {
    struct Entry: Sendable, Equatable {
        var epoch: String
        var offset: Int64
        var floor: Int64
        var lastUse: UInt64

        /// Where to resume from: past both what was processed and what was given up.
        var resume: StreamPosition { StreamPosition(offset: max(offset, floor), epoch: epoch) }
    }

    private var entries: [Channel: Entry] = [:]
    private var clock: UInt64 = 0
    let limit: Int

    init(limit: Int) { self.limit = max(1, limit) }

    var count: Int { entries.count }

    func entry(_ channel: Channel) -> Entry? { entries[channel] }

    /// The position to resume `channel` from, if any.
    func resume(_ channel: Channel) -> StreamPosition? { entries[channel]?.resume }

    mutating func set(_ channel: Channel, epoch: String, offset: Int64, floor: Int64) {
        clock &+= 1
        if entries[channel] == nil, entries.count >= limit, let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
            // Linear, but only when a new channel arrives while full: updates stay O(1).
            entries[oldest] = nil
        }
        entries[channel] = Entry(epoch: epoch, offset: offset, floor: floor, lastUse: clock)
    }

    mutating func forget(_ channel: Channel) { entries[channel] = nil }

    /// Whether a message at `offset`/`epoch` is new (and then records it as processed).
    ///
    /// A new epoch means the channel's history restarted: the message is new. An `ack:true`
    /// message is compared with what was really processed, not with a `recovered:false` floor.
    mutating func accept(_ channel: Channel, offset: Int64?, epoch: String?, requiresAck: Bool) -> Bool {
        guard let offset else { return true }  // nothing to compare (an older server)
        let epoch = epoch ?? ""
        if let old = entries[channel], old.epoch == epoch {
            let last = requiresAck ? old.offset : max(old.offset, old.floor)
            if offset <= last { return false }
            set(channel, epoch: epoch, offset: offset, floor: old.floor)
        } else {
            set(channel, epoch: epoch, offset: offset, floor: 0)
        }
        return true
    }

    /// A `recovered:false`: carry on from the server's position (`latest`), keeping what was
    /// processed in the same epoch.
    mutating func giveUp(_ channel: Channel, latest: StreamPosition) {
        let old = entries[channel]
        let processed = old?.epoch == latest.epoch ? old?.offset ?? 0 : 0
        set(channel, epoch: latest.epoch, offset: processed, floor: latest.offset)
    }
}

/// Offsets of the user channel's `ack:true` messages this client acknowledged, per epoch; at most
/// `limit` (the server keeps at most 1,000 unacknowledged messages per user), oldest forgotten.
struct AcknowledgedOffsets {
    private var members: Set<StreamPosition> = []
    private var order: [StreamPosition] = []
    private var start = 0
    let limit = 2_000

    func contains(_ position: StreamPosition) -> Bool { members.contains(position) }

    mutating func insert(_ position: StreamPosition) {
        guard members.insert(position).inserted else { return }
        order.append(position)
        if members.count > limit {
            members.remove(order[start])
            start += 1
            if start > limit {
                order.removeFirst(start)
                start = 0
            }
        }
    }
}
