import Herald
import HeraldWire
import NIOCore
import Synchronization
import Testing

/// The ``Broker`` contract, stated once and run against every backend (the model is
/// phoenix_pubsub's shared suite). A backend that passes it can carry Herald's guarantees:
/// scopes, per-channel order, contiguous offsets in an epoch, history and recovery windows,
/// idempotency, interest, acknowledgements, and failing fast while unavailable.
@Suite("Broker conformance", .serialized, .timeLimit(.minutes(1)))
struct BrokerConformanceTests {
    @Test(arguments: BackendKind.allCases)
    func eachScopeIsDeliveredWithItsTargetAndOnlyRoomsAndUsersArePositioned(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.room("lobby"), .user("ada"))
            let room = try #require(try await node.publish(.room("lobby"), #"{"n":1}"#))
            let user = try #require(try await node.publish(.user("ada"), #""hi""#))
            #expect(try await node.publish(.all, #"[1,2]"#) == nil, "broadcasts carry no position")
            try await eventually("three deliveries") { node.sink.deliveries.withLock { $0.count } == 3 }

            let lobby = try #require(node.sink.delivered(to: .room("lobby")).first)
            #expect(lobby.position == room)
            let frame = try json(lobby.frame)
            #expect(frame["type"] as? String == "message" && frame["scope"] as? String == "room" && frame["room"] as? String == "lobby")
            #expect(frame["from"] as? String == "sender")
            #expect(frame["offset"] as? Int == Int(room.offset) && frame["epoch"] as? String == room.epoch, "the node stamps the position it was given")
            #expect((frame["data"] as? [String: Any])?["n"] as? Int == 1, "data travels byte for byte")

            let direct = try #require(node.sink.delivered(to: .user("ada")).first)
            #expect(direct.position == user)
            #expect(try json(direct.frame)["scope"] as? String == "user")

            let everyone = try #require(node.sink.delivered(to: .all).first)
            #expect(everyone.position == nil)
            let broadcast = try json(everyone.frame)
            #expect(broadcast["offset"] == nil && broadcast["scope"] as? String == "all")
        }
    }

    @Test(arguments: BackendKind.allCases)
    func aChannelsMessagesArriveInOrderWithContiguousOffsetsInOneEpoch(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.room("a"), .room("b"))
            var assigned: [StreamPosition] = []
            for index in 1...200 {
                assigned.append(try #require(try await node.publish(.room(index % 3 == 0 ? "b" : "a"), String(index))))
            }
            try await eventually("200 deliveries") { node.sink.deliveries.withLock { $0.count } == 200 }
            for room in ["a", "b"] {
                let delivered = node.sink.delivered(to: .room(room))
                let offsets = delivered.compactMap(\.position?.offset)
                #expect(offsets == Array(1...Int64(delivered.count)), "room \(room): offsets start at 1 and have no gap, in order")
                #expect(Set(delivered.compactMap(\.position?.epoch)).count == 1, "room \(room): one epoch")
                // Published order is delivered order.
                let data = delivered.compactMap { try? json($0.frame)["data"] as? Int }
                #expect(data == data.sorted())
            }
            #expect(assigned.filter { $0.offset == 1 }.count == 2, "each channel numbers its own messages")
        }
    }

    @Test(arguments: BackendKind.allCases)
    func historyAnswersWhatFollowsAnOffsetWithinItsWindow(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, configure: { $0.history.size = 5 }) { backend in
            let node = backend.node
            try await node.holds(.room("r"))
            let empty = try await node.broker.history(of: .room("never"), since: 0, limit: 10)
            #expect(empty.latest.offset == 0 && empty.entries.isEmpty, "a channel never published to is empty")
            #expect(empty.recovery(from: StreamPosition(offset: 0, epoch: empty.latest.epoch)) == .recovered)

            var last: StreamPosition?
            for index in 1...8 { last = try await node.publish(.room("r"), String(index)) }
            let latest = try #require(last)
            let page = try await node.broker.history(of: .room("r"), since: 5, limit: 10)
            #expect(page.latest == latest)
            #expect(page.entries.map(\.offset) == [6, 7, 8], "after `since`, oldest first")
            let entry = try #require(page.entries.first)
            let frame = try json(String(buffer: entry.frame))
            #expect(
                frame["offset"] as? Int == 6 && frame["epoch"] as? String == latest.epoch && frame["data"] as? Int == 6,
                "entries are stamped like live messages")
            #expect(try await node.broker.history(of: .room("r"), since: 5, limit: 2).entries.map(\.offset) == [6, 7], "at most `limit`")
            #expect(try await node.broker.history(of: .room("r"), since: 0, limit: 0).entries.isEmpty, "limit 0 reads the position only")

            #expect(page.recovery(from: StreamPosition(offset: 5, epoch: latest.epoch)) == .recovered)
            #expect(page.recovery(from: StreamPosition(offset: 3, epoch: "another")) == .epochChanged)
            #expect(page.recovery(from: StreamPosition(offset: 99, epoch: latest.epoch)) == .offsetAhead)

            // The window keeps at least the last `size` messages (a backend may keep more: Redis
            // trims its streams approximately); far enough back, a client cannot recover.
            for index in 9...400 { last = try await node.publish(.room("r"), String(index)) }
            let recent = try await node.broker.history(of: .room("r"), since: 395, limit: 100)
            #expect(recent.entries.map(\.offset) == [396, 397, 398, 399, 400])
            #expect(recent.recovery(from: StreamPosition(offset: 395, epoch: latest.epoch)) == .recovered)
            let window = try await node.broker.history(of: .room("r"), since: 1, limit: 1000)
            #expect(window.oldest > 2 && window.oldest <= 396, "the window starts within the last `size` plus what the backend keeps over")
            #expect(window.entries.first?.offset == window.oldest && window.entries.last?.offset == 400)
            #expect(window.recovery(from: StreamPosition(offset: 1, epoch: latest.epoch)) == .historyExpired)
        }
    }

    /// A client that joins a channel with no message yet is given a position it can recover
    /// from: the first messages continue that epoch instead of starting another.
    @Test(arguments: BackendKind.allCases)
    func aPositionReadBeforeTheFirstMessageStaysValidWhenMessagesCome(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let reader = backend.nodes[backend.nodes.count - 1]
            let publisher = backend.nodes[0]
            try await reader.holds(.room("quiet"))
            let joinedAt = try await reader.broker.position(of: .room("quiet"))
            #expect(joinedAt.offset == 0 && !joinedAt.epoch.isEmpty)
            #expect(try await publisher.broker.position(of: .room("quiet")) == joinedAt, "every node reads the same position")
            let first = try #require(try await publisher.publish(.room("quiet"), "1"))
            let second = try #require(try await publisher.publish(.room("quiet"), "2"))
            #expect(first == StreamPosition(offset: 1, epoch: joinedAt.epoch) && second.offset == 2)
            let page = try await reader.broker.history(of: .room("quiet"), since: joinedAt.offset, limit: 10)
            #expect(page.recovery(from: joinedAt) == .recovered)
            #expect(page.entries.map(\.offset) == [1, 2])
            #expect(try await reader.broker.position(of: .room("quiet")) == second)
        }
    }

    @Test(arguments: BackendKind.allCases)
    func aRetriedPublishWithTheSameKeyIsDeliveredOnce(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.room("r"))
            let first = try await node.publish(.room("r"), "1", key: "order-42")
            #expect(first != nil)
            #expect(try await node.publish(.room("r"), "1", key: "order-42") == nil, "a duplicate is accepted, not delivered, and gets no position")
            #expect(try await node.publish(.room("other"), "1", key: "order-42") != nil, "keys are per target")
            #expect(try await node.publish(.all, "1", key: "b-1") == nil)
            #expect(try await node.publish(.all, "1", key: "b-1") == nil)
            let next = try #require(try await node.publish(.room("r"), "2"))
            #expect(next.offset == 2, "a duplicate takes no offset")
            try await eventually("deliveries") { node.sink.delivered(to: .room("r")).count == 2 && node.sink.delivered(to: .all).count == 1 }
            try await node.publish(.room("r"), "3")
            try await eventually("the next message") { node.sink.delivered(to: .room("r")).count == 3 }
            #expect(node.sink.delivered(to: .room("r")).compactMap(\.position?.offset) == [1, 2, 3], "nothing was delivered twice")
            #expect(node.sink.delivered(to: .all).count == 1)
        }
    }

    @Test(arguments: BackendKind.allCases)
    func onceInterestIsDeclaredTheChannelReachesTheNode(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let publisher = backend.nodes[0]
            let watcher = backend.nodes[backend.nodes.count - 1]
            try await watcher.holds(.room("r"))
            // Published from the other node (or this one): delivered once interest completed.
            try await publisher.publish(.room("r"), "1")
            try await publisher.publish(.all, "2")
            try await eventually("the room message and the broadcast reach the watcher") {
                watcher.sink.delivered(to: .room("r")).count == 1 && watcher.sink.delivered(to: .all).count == 1
            }
            try await watcher.drops(.room("r"))
            try await publisher.publish(.room("r"), "3")
            try await publisher.publish(.all, "4")
            try await eventually("the broadcast still reaches every node") { watcher.sink.delivered(to: .all).count == 2 }
            if backend.nodes.count > 1 {
                // A node without interest is not sent the channel (the in-memory broker, one
                // node, delivers everything and its hub filters).
                #expect(watcher.sink.delivered(to: .room("r")).count == 1)
            }
        }
    }

    @Test(arguments: BackendKind.allCases)
    func acknowledgedMessagesWaitUntilAcknowledged(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.user("ada"))
            let first = try #require(try await node.publish(.user("ada"), #"{"bill":1}"#, ack: true))
            let second = try #require(try await node.publish(.user("ada"), #"{"bill":2}"#, ack: true))
            try await node.publish(.user("ada"), #""not kept""#)
            let store = node.broker.acknowledgements
            var waiting = try await store.unacknowledged(for: "ada", on: TestNode.loop).get()
            #expect(waiting.map(\.position) == [first, second])
            let frame = try json(String(buffer: try #require(waiting.first).frame))
            #expect(frame["ack"] as? Bool == true && frame["offset"] as? Int == Int(first.offset) && frame["epoch"] as? String == first.epoch)
            #expect(try await store.unacknowledged(for: "nobody", on: TestNode.loop).get().isEmpty)

            try await store.acknowledge(user: "ada", offset: first.offset, epoch: first.epoch)
            try await store.acknowledge(user: "ada", offset: 99, epoch: nil)  // nothing waits there: no effect
            waiting = try await store.unacknowledged(for: "ada", on: TestNode.loop).get()
            #expect(waiting.map(\.position) == [second])
            try await store.acknowledge(user: "ada", offset: second.offset, epoch: nil)  // the current epoch
            #expect(try await store.unacknowledged(for: "ada", on: TestNode.loop).get().isEmpty)
        }
    }

    @Test(arguments: BackendKind.allCases)
    func aBatchIsPublishedInOrderWithEachResultInItsPlace(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.room("a"), .user("ada"))
            var envelopes: [Envelope] = []
            for index in 1...100 {
                var envelope = Envelope.message(to: index % 10 == 0 ? .user("ada") : .room("a"), from: nil, data: try RawJSON(validating: String(index)))
                if index == 50 { envelope.idempotencyKey = "once" }
                envelopes.append(envelope)
            }
            // The key of #50 again: accepted without a position, not delivered twice.
            var repeated = Envelope.message(to: .user("ada"), from: nil, data: try RawJSON(validating: "50"))
            repeated.idempotencyKey = "once"
            envelopes.append(repeated)
            let results = try await node.broker.publish(batch: envelopes, on: TestNode.loop).get()
            #expect(results.count == 101)
            let positions = results.map { try? $0.get() }
            #expect(positions.prefix(100).allSatisfy { $0 != nil }, "every new message got a position")
            #expect(positions[100] == nil, "the repeated key: no position")
            #expect(positions.prefix(100).compactMap { $0 }.filter { $0.offset == 1 }.count == 2, "a room and a user channel")
            try await eventually("100 deliveries") { node.sink.deliveries.withLock { $0.count } == 100 }
            let room = node.sink.delivered(to: .room("a"))
            #expect(room.compactMap { try? json($0.frame)["data"] as? Int } == (1...100).filter { $0 % 10 != 0 }, "in the batch's order")
            #expect(room.compactMap(\.position?.offset) == Array(1...90))
            #expect(node.sink.delivered(to: .user("ada")).count == 10)
        }
    }

    @Test(arguments: BackendKind.allCases.filter(\.canBeUnavailable))
    func whileTheBackendIsUnavailablePublishesFailFast(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { backend in
            let node = backend.node
            try await node.holds(.room("r"))
            #expect(try await node.publish(.room("r"), "1") != nil)
            backend.makeUnavailable()
            let started = ContinuousClock.now
            await #expect(throws: BrokerError.self) { try await node.publish(.room("r"), "2") }
            await #expect(throws: BrokerError.self) { try await node.broker.history(of: .room("r"), since: 0, limit: 1) }
            await #expect(throws: BrokerError.self) { try await node.broker.position(of: .room("r")) }
            #expect(ContinuousClock.now - started < .seconds(5), "no publish waits for a backend that is gone")
        }
    }
}
