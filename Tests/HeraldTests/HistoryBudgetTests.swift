import Herald
import HeraldWire
import NIOCore
import NIOPosix
import Testing

/// The in-memory broker's memory bounds (issue 11, H3): what a flood of messages may make a node
/// hold, whoever sends it.
@Suite("LocalBroker memory bounds")
struct HistoryBudgetTests {
    /// Counts deliveries; has no connections.
    final class CountingSink: DeliverySink, @unchecked Sendable {
        func deliver(_ envelope: Envelope) {}
        func membershipChanged(_ change: MembershipChange) -> EventLoopFuture<Void> {
            MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
        }
        func localConnectionCounts() -> [String: Int] { [:] }
    }

    let loop = MultiThreadedEventLoopGroup.singleton.any()

    func broker(_ configure: (inout HistoryConfiguration) -> Void = { _ in }) -> LocalBroker {
        var history = HistoryConfiguration()
        configure(&history)
        return LocalBroker(deliveringTo: CountingSink(), history: history)
    }

    /// A JSON string of `bytes` characters.
    func payload(_ bytes: Int) throws -> RawJSON {
        try RawJSON(validating: "\"" + String(repeating: "x", count: bytes) + "\"")
    }

    func interested(_ broker: LocalBroker, in targets: [DeliveryTarget]) async throws {
        try await broker.changeInterest(InterestChange(subscribe: targets), on: loop).get()
    }

    @Test func messagesToUsersNobodyCouldReadAreNotKept() async throws {
        let broker = broker()
        // The audit's flood: large messages to users who never connected.
        for index in 0..<50 {
            try await broker.publish(.message(to: .user("ghost-\(index)"), from: nil, data: payload(100_000)), on: loop)
        }
        #expect(broker.heldBytes.history == 0)
        // Offsets still advance: a later reader learns it missed something.
        let page = broker.history(of: .user("ghost-1"), since: 0, limit: 10)
        #expect(page.latest.offset == 1)
        #expect(page.entries.isEmpty)
        #expect(page.recovery(from: StreamPosition(offset: 0, epoch: page.latest.epoch)) == .historyExpired)
    }

    @Test func aChannelWithLocalInterestKeepsHistoryAndKeepsItForTheTTLAfterInterestEnds() async throws {
        let broker = broker()
        try await interested(broker, in: [.user("alice"), .room("lobby")])
        try await broker.publish(.message(to: .user("alice"), from: nil, data: payload(10)), on: loop)
        try await broker.publish(.message(to: .room("lobby"), from: nil, data: payload(10)), on: loop)
        // Alice disconnects: she may come back within the TTL and resume.
        try await broker.changeInterest(InterestChange(unsubscribe: [.user("alice"), .room("lobby")]), on: loop).get()
        try await broker.publish(.message(to: .user("alice"), from: nil, data: payload(10)), on: loop)
        let page = broker.history(of: .user("alice"), since: 0, limit: 10)
        #expect(page.entries.map(\.offset) == [1, 2])
        #expect(broker.history(of: .room("lobby"), since: 0, limit: 10).entries.count == 1)
    }

    @Test func oneChannelIsBoundedByBytes() async throws {
        let broker = broker { $0.maxChannelBytes = 50_000 }
        try await interested(broker, in: [.room("big")])
        for _ in 0..<20 {
            try await broker.publish(.message(to: .room("big"), from: nil, data: payload(10_000)), on: loop)
        }
        let page = broker.history(of: .room("big"), since: 0, limit: 100)
        #expect(page.latest.offset == 20)
        #expect(!page.entries.isEmpty)
        #expect(page.entries.count < 5)
        // The newest are the ones kept, contiguous up to the latest.
        #expect(page.entries.last?.offset == 20)
        #expect(broker.heldBytes.history <= 50_000)
        // A message larger than the channel's cap is never kept.
        try await broker.publish(.message(to: .room("big"), from: nil, data: payload(60_000)), on: loop)
        #expect(broker.history(of: .room("big"), since: 20, limit: 10).entries.isEmpty)
    }

    @Test func theNodeWideBudgetDropsTheOldestEntriesOfAnyChannelFirst() async throws {
        let broker = broker { $0.maxBytes = 200_000 }
        let rooms = (0..<40).map { DeliveryTarget.room("r\($0)") }
        try await interested(broker, in: rooms)
        for round in 0..<5 {
            for room in rooms {
                try await broker.publish(
                    .message(to: room, from: nil, data: try RawJSON(validating: "\"\(round)" + String(repeating: "y", count: 5_000) + "\"")), on: loop)
            }
            #expect(broker.heldBytes.history <= 200_000)
        }
        // The last room published keeps its newest message; the first rooms lost their old ones.
        let last = broker.history(of: rooms[39], since: 0, limit: 10)
        #expect(last.entries.last?.offset == 5)
        let first = broker.history(of: rooms[0], since: 0, limit: 10)
        #expect(first.entries.first.map { $0.offset > 1 } ?? true)
        #expect(first.recovery(from: StreamPosition(offset: 0, epoch: first.latest.epoch)) == .historyExpired)
    }

    @Test func unacknowledgedMessagesAreRefusedPastTheBudgetAndNeverDropped() async throws {
        let broker = broker { $0.maxUnacknowledgedBytes = 100_000 }
        var accepted = 0
        var refused: BrokerError?
        for index in 0..<30 {
            do {
                try await broker.publish(.message(to: .user("u\(index)"), from: nil, data: payload(10_000), requiresAck: true), on: loop)
                accepted += 1
            } catch let error as BrokerError {
                refused = error
                break
            }
        }
        #expect(refused?.kind == .storageFull)
        #expect(accepted >= 5 && accepted < 10)
        #expect(broker.heldBytes.unacknowledged <= 100_000)
        // Everything accepted is still there.
        for index in 0..<accepted {
            #expect(broker.localAcknowledgements.unacknowledged(for: "u\(index)").count == 1)
        }
        // Acknowledging frees room for the next one.
        let entry = try #require(broker.localAcknowledgements.unacknowledged(for: "u0").first)
        broker.localAcknowledgements.acknowledge(user: "u0", offset: entry.offset, epoch: nil)
        try await broker.publish(.message(to: .user("late"), from: nil, data: payload(10_000), requiresAck: true), on: loop)
        #expect(broker.localAcknowledgements.unacknowledged(for: "late").count == 1)
    }

    @Test func oneUsersUnacknowledgedMessagesAreBoundedByBytes() async throws {
        let broker = broker { $0.maxChannelBytes = 50_000 }
        for _ in 0..<20 {
            try await broker.publish(.message(to: .user("bob"), from: nil, data: payload(10_000), requiresAck: true), on: loop)
        }
        let pending = broker.localAcknowledgements.unacknowledged(for: "bob")
        #expect(pending.count < 5)
        #expect(pending.last?.offset == 20)
        #expect(broker.heldBytes.unacknowledged <= 50_000)
    }
}
