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
        let outcome = tracker.heal(.room("R"), with: page(2...4, epoch: "e1", latest: 4))
        #expect(outcome.delivered == 3 && outcome.lost == 0 && !outcome.epochChanged)
        #expect(sink.delivered.withLock { $0 } == ["1@e1", "2@e1", "3@e1", "4@e1"])
    }

    @Test func suspendingSomeChannelsLeavesTheOthersLive() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        func message(_ room: String, _ offset: Int64) -> Envelope {
            Envelope(target: .room(room), frame: ByteBuffer(string: "\(room)\(offset)"), position: StreamPosition(offset: offset, epoch: "e"))
        }
        tracker.received(message("A", 1))
        tracker.received(message("B", 1))
        tracker.suspend([.room("A")])  // A's shard is failing over; B's is not
        tracker.received(message("A", 2))
        tracker.received(message("B", 2))
        #expect(sink.delivered.withLock { $0 } == ["A1", "B1", "B2"], "B stays live, A waits")
        #expect(tracker.suspended().map(\.0) == [.room("A")])
        _ = tracker.heal(.room("A"), with: nil)
        #expect(sink.delivered.withLock { $0 } == ["A1", "B1", "B2", "A2"])
    }

    @Test func aNewEpochIsDeliveredFromItsFirstMessage() {
        let sink = CountingSink()
        let tracker = StreamTracker(sink: sink)
        tracker.received(envelope(7, "old"))
        tracker.suspend()
        // Redis restarted without persistence; two messages were published in the new epoch
        // before this node resubscribed, a third arrived live after.
        tracker.received(envelope(3, "new"))
        let outcome = tracker.heal(.room("R"), with: page(1...3, epoch: "new", latest: 3))
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
        let outcome = tracker.heal(.room("R"), with: page(6...8, epoch: "new", latest: 8))
        #expect(outcome.epochChanged)
        #expect(outcome.delivered == 3 && outcome.lost == 5)
    }
}
