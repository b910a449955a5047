import Foundation
import Herald
import HeraldServer
import Testing

/// Positions of a message frame: `(offset, epoch)`.
func position(_ frame: [String: Any]) throws -> (offset: Int, epoch: String) {
    guard let offset = frame["offset"] as? Int, let epoch = frame["epoch"] as? String else {
        throw TestFailure("no offset/epoch in \(frame)")
    }
    return (offset, epoch)
}

/// Reads message frames of `room` until `count` arrived (other frames skipped); their `data` and positions.
func messages(_ client: TestClient, count: Int, timeout: Double = 10) async throws -> [(data: Any, offset: Int, epoch: String)] {
    var result: [(Any, Int, String)] = []
    while result.count < count {
        let frame = try await client.nextPositioned(timeout: timeout)
        guard frame["type"] as? String == "message" else { continue }
        let (offset, epoch) = try position(frame)
        result.append((frame["data"] ?? NSNull(), offset, epoch))
    }
    return result
}

/// The first offset out of place against `expected` (or a count mismatch): `nil` when they match.
func misplaced(_ offsets: [Int], _ expected: ClosedRange<Int>) -> String? {
    if let pair = zip(offsets, expected).first(where: { $0 != $1 }) { return "got \(pair.0) where \(pair.1) belongs" }
    return offsets.count == expected.count ? nil : "got \(offsets.count) messages, expected \(expected.count)"
}

@Suite("Offsets, history and recovery on one node")
struct RecoveryTests {
    @Test func roomAndUserMessagesAreNumberedPerChannelBroadcastsAreNot() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R"}"#)
            _ = try await alice.next(type: "joined")
            for n in 1...3 {
                #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status == 202)
                #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":\#(n)}"#).status == 202)
            }
            #expect(try await server.http("POST", "/api/broadcast", body: #"{"data":"all"}"#).status == 202)
            var room: [(Int, String)] = []
            var user: [(Int, String)] = []
            for _ in 0..<6 {
                let frame = try await alice.nextPositioned()
                let (offset, epoch) = try position(frame)
                if frame["scope"] as? String == "room" { room.append((offset, epoch)) } else { user.append((offset, epoch)) }
            }
            #expect(room.map(\.0) == [1, 2, 3])
            #expect(user.map(\.0) == [1, 2, 3])
            #expect(Set(room.map(\.1)).count == 1 && Set(user.map(\.1)).count == 1 && room[0].1 != user[0].1)
            let broadcast = try await alice.nextPositioned()
            #expect(broadcast["offset"] == nil && broadcast["epoch"] == nil)

            // The history API reads the same stream.
            let history = try json(try await server.http("GET", "/api/rooms/R/history?since=1&limit=10").body)
            #expect(history["offset"] as? Int == 3)
            #expect(history["epoch"] as? String == room[0].1)
            #expect((history["messages"] as? [[String: Any]])?.compactMap { $0["data"] as? Int } == [2, 3])
            #expect(try await server.http("GET", "/api/rooms/R/history?since=-1").status == 400)
            await alice.close()
        }
    }

    @Test func aClientThatWasAwayRecoversEveryMessageThenContinuesLive() async throws {
        try await TestServer.with { server in
            var alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R"}"#)
            _ = try await alice.next(type: "joined")
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":0}"#).status == 202)
            let seen = try await messages(alice, count: 1)[0]
            await alice.close()

            // Messages flow while alice is away.
            for n in 1...5 { #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status == 202) }
            alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R","id":1,"since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
            let joined = try await alice.next(type: "joined")
            #expect(joined["recovered"] as? Bool == true)
            #expect(joined["offset"] as? Int == 6)
            #expect(joined["epoch"] as? String == seen.epoch)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":6}"#).status == 202)
            let replayed = try await messages(alice, count: 6)
            #expect(replayed.map(\.offset) == [2, 3, 4, 5, 6, 7])
            #expect(replayed.compactMap { $0.data as? Int } == [1, 2, 3, 4, 5, 6])
            await alice.close()
        }
    }

    @Test func theSeamBetweenReplayAndLiveHasNoGapAndNoDuplicate() async throws {
        // History holds all 300: the publisher may run far ahead of the join (publishing calls
        // are answered on the event loop), and offset 10 must still be there to recover from.
        try await TestServer.with({ $0.history.size = 1_000 }) { server in
            // A member is connected: the room has a possible reader, so it keeps history.
            let member = try await TestClient.connect(port: server.port, query: "user=member")
            _ = try await member.next(type: "welcome")
            try await member.send(#"{"type":"join","room":"R"}"#)
            _ = try await member.next(type: "joined")
            let publisher = Task {
                for n in 1...300 {
                    _ = try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#)
                }
            }
            // Join with a position in the middle of the flow: everything after offset 0 of the
            // room's epoch (learned from the history API) must arrive once, in order.
            try await eventually("some messages published") {
                (try json(try await server.http("GET", "/api/rooms/R/history?limit=0").body)["offset"] as? Int ?? 0) >= 20
            }
            let epoch = try json(try await server.http("GET", "/api/rooms/R/history?limit=0").body)["epoch"] as? String ?? ""
            let alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R","since":{"offset":10,"epoch":"\#(epoch)"}}"#)
            #expect(try await alice.next(type: "joined")["recovered"] as? Bool == true)
            try await publisher.value
            let received = try await messages(alice, count: 290)
            #expect(misplaced(received.map(\.offset), 11...300) == nil)
            await alice.close()
            await member.close()
        }
    }

    @Test func aReconnectingClientResumesItsUserChannel() async throws {
        try await TestServer.with { server in
            var alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":0}"#).status == 202)
            let seen = try await messages(alice, count: 1)[0]
            await alice.close()
            for n in 1...3 { #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":\#(n)}"#).status == 202) }

            alice = try await TestClient.connect(port: server.port, query: "user=alice&since_offset=\(seen.offset)&since_epoch=\(seen.epoch)")
            let welcome = try await alice.nextPositioned()
            #expect(welcome["type"] as? String == "welcome")
            #expect(welcome["recovered"] as? Bool == true)
            #expect(welcome["offset"] as? Int == 4)
            #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":4}"#).status == 202)
            #expect(try await messages(alice, count: 4).compactMap { $0.data as? Int } == [1, 2, 3, 4])
            await alice.close()

            // Another epoch: told so in the welcome, nothing replayed, live messages flow.
            alice = try await TestClient.connect(port: server.port, query: "user=alice&since_offset=1&since_epoch=gone")
            let stale = try await alice.nextPositioned()
            #expect(stale["recovered"] as? Bool == false)
            #expect(stale["reason"] as? String == "epoch_changed")
            await alice.close()

            // A malformed position is a bad request, not an authentication failure: the connection
            // is served, and its welcome says recovery failed and where the channel stands.
            let queries = [
                "since_offset=x&since_epoch=e", "since_offset=-1&since_epoch=e", "since_offset=3", "since_epoch=e",
                "since_offset=1&since_epoch=" + String(repeating: "e", count: 201),
            ]
            // A channel with no message yet: its position (offset 0 and its epoch, empty with
            // Redis) is one a client may resume from.
            for query in ["since_offset=0&since_epoch=", "since_offset=0&since_epoch=whatever"] {
                let fresh = try await TestClient.connect(port: server.port, query: "user=newcomer&" + query)
                let welcome = try await fresh.nextPositioned()
                #expect(welcome["recovered"] as? Bool == true, "\(query)")
                await fresh.close()
            }
            let latest = try json(try await server.http("GET", "/api/users/alice/history").body)["offset"] as? Int ?? -1
            for (index, query) in queries.enumerated() {
                let malformed = try await TestClient.connect(port: server.port, query: "user=alice&" + query)
                let welcome = try await malformed.nextPositioned()
                #expect(welcome["type"] as? String == "welcome", "\(query)")
                #expect(welcome["recovered"] as? Bool == false, "\(query)")
                #expect(welcome["reason"] as? String == "invalid_position", "\(query)")
                #expect(welcome["offset"] as? Int == latest + index, "\(query): the channel's latest position")
                #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":"live"}"#).status == 202)
                #expect(try await malformed.nextPositioned()["data"] as? String == "live", "\(query): live messages flow")
                await malformed.close()
            }
        }
    }

    @Test func anAcknowledgedNotificationIsSentAgainUntilAcknowledged() async throws {
        try await TestServer.with { server in
            #expect(try await server.http("POST", "/api/users/bob/send", body: #"{"data":"must-arrive","ack":true}"#).status == 202)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":"x","ack":true}"#).status == 400)
            // bob was offline: his next connection gets it, and the one after (no ack yet).
            var offset = 0
            for _ in 0..<2 {
                let bob = try await TestClient.connect(port: server.port, query: "user=bob")
                _ = try await bob.next(type: "welcome")
                let frame = try await bob.nextPositioned()
                #expect(frame["data"] as? String == "must-arrive")
                #expect(frame["ack"] as? Bool == true, "the frame says it must be acknowledged")
                offset = try position(frame).offset
                await bob.close()
            }
            let bob = try await TestClient.connect(port: server.port, query: "user=bob")
            _ = try await bob.next(type: "welcome")
            _ = try await bob.next()
            try await bob.send(#"{"type":"ack","offset":\#(offset),"id":1}"#)
            #expect(try await bob.next() == #"{"type":"ok","id":1}"#)
            await bob.close()
            // Acknowledged: the next connection's first delivery is what is sent next.
            let again = try await TestClient.connect(port: server.port, query: "user=bob")
            _ = try await again.next(type: "welcome")
            #expect(try await server.http("POST", "/api/users/bob/send", body: #"{"data":"next"}"#).status == 202)
            #expect(try await again.next() == #"{"type":"message","scope":"user","data":"next"}"#)
            await again.close()
        }
    }

    @Test func roomsMatchingANoHistoryPatternKeepNone() async throws {
        try await TestServer.with({ $0.history.roomsWithoutHistory = ["live-*"] }) { server in
            let member = try await TestClient.connect(port: server.port, query: "user=member")
            _ = try await member.next(type: "welcome")
            for room in ["live-scores", "lobby"] {
                try await member.send(#"{"type":"join","room":"\#(room)"}"#)
                _ = try await member.next(type: "joined")
            }
            for room in ["live-scores", "lobby"] {
                #expect(try await server.http("POST", "/api/rooms/\(room)/publish", body: #"{"data":1}"#).status == 202)
            }
            let live = try json(try await server.http("GET", "/api/rooms/live-scores/history").body)
            #expect(live["offset"] as? Int == 1)  // numbered all the same
            #expect((live["messages"] as? [Any])?.isEmpty == true)
            let lobby = try json(try await server.http("GET", "/api/rooms/lobby/history").body)
            #expect((lobby["messages"] as? [Any])?.count == 1)
            await member.close()
        }
    }

    @Test func aRetriedPublishWithTheSameIdIsDeliveredOnce() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R"}"#)
            _ = try await alice.next(type: "joined")
            for _ in 0..<3 {
                #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"id":"order-42","data":"once"}"#).status == 202)
                #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"id":"order-42","data":"once"}"#).status == 202)
                #expect(try await server.http("POST", "/api/broadcast", body: #"{"id":"order-42","data":"once"}"#).status == 202)
            }
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"id":"order-43","data":"next"}"#).status == 202)
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"id":43,"data":"x"}"#).status == 400)
            // One of each (the same key on another target is another message), then the next.
            let frames = [try await alice.next(), try await alice.next(), try await alice.next(), try await alice.next()]
            #expect(frames.filter { $0.contains(#""data":"once""#) }.count == 3)
            #expect(frames.last == #"{"type":"message","scope":"room","room":"R","data":"next"}"#)
            let history = try json(try await server.http("GET", "/api/rooms/R/history").body)
            #expect(history["offset"] as? Int == 2)
            await alice.close()
        }
    }

    @Test func pastTheHistoryWindowOrAnotherEpochTheClientIsToldItCannotRecover() async throws {
        try await TestServer.with({ $0.history.size = 3 }) { server in
            // Alice is a member while the messages are published (the room has a reader, so it
            // keeps history), then joins again from older positions.
            let alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R"}"#)
            _ = try await alice.next(type: "joined")
            for n in 1...10 { #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status == 202) }
            _ = try await messages(alice, count: 10)
            let epoch = try json(try await server.http("GET", "/api/rooms/R/history").body)["epoch"] as? String ?? ""
            try await alice.send(#"{"type":"join","room":"R","since":{"offset":2,"epoch":"\#(epoch)"}}"#)
            let expired = try await alice.next(type: "joined")
            #expect(expired["recovered"] as? Bool == false)
            #expect(expired["reason"] as? String == "history_expired")
            #expect(expired["offset"] as? Int == 10)

            try await alice.send(#"{"type":"join","room":"R","since":{"offset":9,"epoch":"not-\#(epoch)"}}"#)
            let otherEpoch = try await alice.next(type: "joined")
            #expect(otherEpoch["recovered"] as? Bool == false)
            #expect(otherEpoch["reason"] as? String == "epoch_changed")

            // Within the window it recovers: the last 3 are kept.
            try await alice.send(#"{"type":"join","room":"R","since":{"offset":7,"epoch":"\#(epoch)"}}"#)
            #expect(try await alice.next(type: "joined")["recovered"] as? Bool == true)
            #expect(try await messages(alice, count: 3).map(\.offset) == [8, 9, 10])

            try await alice.send(#"{"type":"join","room":"R","since":{"offset":"x","epoch":"e"}}"#)
            #expect(try await alice.next(type: "error")["code"] as? String == "bad_request")
            await alice.close()
        }
    }
}
