import Herald
import HeraldWire
import NIOCore
import Synchronization
import Testing

@testable import HeraldRedis

/// Healing a channel after a pub/sub gap, without Redis: what the tracker delivers from a
/// history page and from the live messages it held.
@Suite("Stream tracker: healing a pub/sub gap")
struct StreamTrackerTests {
    private func envelope(_ offset: Int64, _ epoch: String) -> Envelope {
        Envelope(target: .room("R"), frame: ByteBuffer(string: "\(offset)@\(epoch)"), position: StreamPosition(offset: offset, epoch: epoch))
    }

    private func page(_ offsets: ClosedRange<Int64>, epoch: String, latest: Int64) -> HistoryPage {
        HistoryPage(
            latest: StreamPosition(offset: latest, epoch: epoch),
            entries: offsets.map {
                HistoryEntry(position: StreamPosition(offset: $0, epoch: epoch), body: ByteBuffer(string: "\($0)@\(epoch)"), positionIndex: nil)
            },
            oldest: offsets.lowerBound
        )
    }

    @Test func theGapIsFilledFromHistoryThenHeldMessagesFollowWithoutDuplicates() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(envelope(1, "e1"))
        tracker.suspend()
        tracker.received(envelope(4, "e1"))  // live, held while healing
        let outcome = tracker.healAfterResubscribing(.room("R"), with: page(2...4, epoch: "e1", latest: 4))
        #expect(outcome.delivered == 3 && outcome.lost == 0 && !outcome.epochChanged)
        #expect(sink.delivered.withLock { $0 } == ["1@e1", "2@e1", "3@e1", "4@e1"])
    }

    @Test func suspendingSomeChannelsLeavesTheOthersLive() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(message("A", 1))
        tracker.received(message("B", 1))
        tracker.suspend([.room("A")])  // A's shard is failing over; B's is not
        tracker.received(message("A", 2))
        tracker.received(message("B", 2))
        #expect(sink.delivered.withLock { $0 } == ["A1", "B1", "B2"], "B stays live, A waits")
        #expect(tracker.suspended().isEmpty, "nothing heals before its channels are subscribed again")
        tracker.resubscribed()
        #expect(tracker.suspended().map(\.target) == [.room("A")])
        _ = tracker.healAfterResubscribing(.room("A"), with: nil)
        #expect(sink.delivered.withLock { $0 } == ["A1", "B1", "B2", "A2"])
    }

    private func message(_ room: String, _ offset: Int64) -> Envelope {
        Envelope(target: .room(room), frame: ByteBuffer(string: "\(room)\(offset)"), position: StreamPosition(offset: offset, epoch: "e"))
    }

    private func page(_ room: String, _ offsets: ClosedRange<Int64>) -> HistoryPage {
        HistoryPage(
            latest: StreamPosition(offset: offsets.upperBound, epoch: "e"),
            entries: offsets.map {
                HistoryEntry(position: StreamPosition(offset: $0, epoch: "e"), body: ByteBuffer(string: "\(room)\($0)"), positionIndex: nil)
            },
            oldest: offsets.lowerBound
        )
    }

    /// Its shard fails again while its history is read: the page ends before the second gap,
    /// so the channel must not go live on it (what the second gap held would never come).
    @Test func aChannelLostAgainWhileHealingHealsAgain() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(message("A", 1))
        tracker.suspend([.room("A")])
        tracker.resubscribed()
        let toHeal = tracker.suspended()
        #expect(toHeal.map(\.target) == [.room("A")])
        tracker.suspend([.room("A")])  // lost again; 3 is published meanwhile and missed
        tracker.received(message("A", 4))  // subscribed again before the first heal ends: held
        _ = tracker.heal(.room("A"), with: page("A", 2...2), lostAt: toHeal[0].lostAt)
        tracker.received(message("A", 5))  // still held: not delivered past the gap
        #expect(sink.delivered.withLock { $0 } == ["A1", "A2"])
        #expect(tracker.suspended().isEmpty, "the second loss is not subscribed again yet")
        tracker.resubscribed()
        let again = tracker.suspended()
        #expect(again.map(\.target) == [.room("A")])
        _ = tracker.heal(.room("A"), with: page("A", 3...4), lostAt: again[0].lostAt)
        tracker.received(message("A", 6))
        #expect(sink.delivered.withLock { $0 } == ["A1", "A2", "A3", "A4", "A5", "A6"])
    }

    /// One shard is back (and every channel lost so far with it), then another fails before
    /// the healing reads: only the first one's channels heal; the other waits for its own.
    @Test func aChannelLostAfterTheResubscriptionWaitsForItsOwn() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(message("A", 1))
        tracker.received(message("B", 1))
        tracker.suspend([.room("A")])
        tracker.resubscribed()
        tracker.suspend([.room("B")])
        #expect(tracker.suspended().map(\.target) == [.room("A")])
        tracker.resubscribed()  // B's shard is back too
        #expect(Set(tracker.suspended().map(\.target)) == [.room("A"), .room("B")])
    }

    @Test func aNewEpochIsDeliveredFromItsFirstMessage() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(envelope(7, "old"))
        tracker.suspend()
        // Redis restarted without persistence; two messages were published in the new epoch
        // before this node resubscribed, a third arrived live after.
        tracker.received(envelope(3, "new"))
        let outcome = tracker.healAfterResubscribing(.room("R"), with: page(1...3, epoch: "new", latest: 3))
        #expect(outcome.epochChanged)
        #expect(outcome.delivered == 3 && outcome.lost == 0)
        #expect(sink.delivered.withLock { $0 } == ["7@old", "1@new", "2@new", "3@new"])
        tracker.received(envelope(3, "new"))  // a duplicate is dropped
        tracker.received(envelope(4, "new"))
        #expect(sink.delivered.withLock { $0 }.suffix(2) == ["3@new", "4@new"])
    }

    @Test func aNewEpochLongerThanTheHistoryCountsWhatItCannotGive() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(envelope(7, "old"))
        tracker.suspend()
        let outcome = tracker.healAfterResubscribing(.room("R"), with: page(6...8, epoch: "new", latest: 8))
        #expect(outcome.epochChanged)
        #expect(outcome.delivered == 3 && outcome.lost == 5)
    }
}

extension StreamTracker {
    /// Heals `target` as the broker does once every channel lost so far is subscribed again.
    fileprivate func healAfterResubscribing(_ target: DeliveryTarget, with page: HistoryPage?) -> Outcome {
        resubscribed()
        let lostAt = suspended().first { $0.target == target }?.lostAt ?? 0
        return heal(target, with: page, lostAt: lostAt)
    }
}
