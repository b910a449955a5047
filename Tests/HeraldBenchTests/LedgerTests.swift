import HeraldBench
import NIOCore
import Testing

@Suite("Bench accounting")
struct LedgerTests {
    @Test func inOrderExactlyOnceIsClean() {
        var ledger = DeliveryLedger()
        for sequence in 0..<200 { ledger.record(stream: 1, sequence: sequence) }
        for sequence in 0..<10 { ledger.record(stream: 2, sequence: sequence) }
        #expect(ledger.totals == DeliveryTotals(received: 210, unique: 210, duplicates: 0, reordered: 0))
        #expect(ledger.totals.lost(expected: 210) == 0)
    }

    @Test func lossDuplicatesAndReorderingAreTold() {
        var ledger = DeliveryLedger()
        for sequence in [0, 1, 2, 4, 5, 5, 6, 8, 7, 9, 130, 64, 64] { ledger.record(stream: 0, sequence: sequence) }
        let totals = ledger.totals
        #expect(totals.received == 13)
        #expect(totals.duplicates == 2)  // 5 and 64 again
        #expect(totals.reordered == 2)  // 7 after 8, 64 after 130
        #expect(totals.unique == 11)
        #expect(totals.lost(expected: 12) == 1)  // 0…9 plus 64 and 130, without 3
    }

    @Test func payloadRoundTripsThroughAFrame() {
        let payload = BenchPayload(stream: 42, sequence: 1234, sentAt: 987_654_321_012)
        let data = payload.json(size: 64)
        #expect(data.utf8.count == 64)
        let frame = #"{"type":"message","scope":"room","room":"r42","data":"# + data + "}"
        let parsed = ByteBuffer(string: frame).withUnsafeReadableBytes { BenchPayload.parse(frame: $0) }
        #expect(parsed == payload)
        // The seed baseline writes JSON with spaces around its own fields; the data stays as sent.
        let spaced = #"{"type": "message", "scope": "room", "room": "r42", "data": "# + data + "}"
        #expect(ByteBuffer(string: spaced).withUnsafeReadableBytes { BenchPayload.parse(frame: $0) } == payload)
        #expect(ByteBuffer(string: #"{"type":"welcome","user":"b"}"#).withUnsafeReadableBytes { BenchPayload.parse(frame: $0) } == nil)
    }
}
