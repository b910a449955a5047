/// What one receiving connection got, per stream: exactly-once and in-order accounting.
///
/// A bitmap of sequence numbers per stream tells a duplicate (seen before) from a reordering
/// (arrived after a higher sequence number); loss is what was expected and never seen.
public struct DeliveryLedger: Sendable {
    private struct StreamLedger: Sendable {
        var seen: [UInt64] = []
        var highest = -1
    }

    private var streams: [Int: StreamLedger] = [:]
    public private(set) var received = 0
    public private(set) var unique = 0
    public private(set) var duplicates = 0
    public private(set) var reordered = 0

    public init() {}

    /// Records one delivery of `sequence` on `stream`.
    public mutating func record(stream: Int, sequence: Int) {
        precondition(sequence >= 0)
        received += 1
        // Mutate in place: copying the ledger out of the dictionary would copy its bitmap.
        let (isNew, isLate) = Self.mark(&streams[stream, default: StreamLedger()], sequence)
        if !isNew {
            duplicates += 1
            return
        }
        unique += 1
        if isLate { reordered += 1 }
    }

    private static func mark(_ ledger: inout StreamLedger, _ sequence: Int) -> (isNew: Bool, isLate: Bool) {
        let word = sequence >> 6
        let bit = UInt64(1) << UInt64(sequence & 63)
        if ledger.seen.count <= word { ledger.seen.append(contentsOf: repeatElement(0, count: word - ledger.seen.count + 1)) }
        if ledger.seen[word] & bit != 0 { return (false, false) }
        ledger.seen[word] |= bit
        let isLate = sequence < ledger.highest
        ledger.highest = max(ledger.highest, sequence)
        return (true, isLate)
    }

    /// Sequence numbers of `stream` below `count` never received, in order.
    public func missing(stream: Int, below count: Int) -> [Int] {
        let seen = streams[stream]?.seen ?? []
        return (0..<max(0, count)).filter { sequence in
            let word = sequence >> 6
            return word >= seen.count || seen[word] & (UInt64(1) << UInt64(sequence & 63)) == 0
        }
    }

    /// Merges another connection's counts (for totals).
    public mutating func add(_ other: DeliveryLedger) {
        received += other.received
        unique += other.unique
        duplicates += other.duplicates
        reordered += other.reordered
    }

    /// Counts only, without the per-stream bitmaps (what a report needs).
    public var totals: DeliveryTotals {
        DeliveryTotals(received: received, unique: unique, duplicates: duplicates, reordered: reordered)
    }
}

/// Delivery counts summed over connections.
public struct DeliveryTotals: Sendable, Equatable, Codable {
    public var received = 0
    public var unique = 0
    public var duplicates = 0
    public var reordered = 0

    public init(received: Int = 0, unique: Int = 0, duplicates: Int = 0, reordered: Int = 0) {
        self.received = received
        self.unique = unique
        self.duplicates = duplicates
        self.reordered = reordered
    }

    public mutating func add(_ other: DeliveryTotals) {
        received += other.received
        unique += other.unique
        duplicates += other.duplicates
        reordered += other.reordered
    }

    /// Expected deliveries never seen.
    public func lost(expected: Int) -> Int { max(0, expected - unique) }
}
