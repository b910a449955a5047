import Foundation
import HeraldTestSupport
import HeraldWire
import Testing

@testable import HeraldClient

/// The client's rules without a server: backoff, hints, frames, de-duplication, hostile input.
@Suite("HeraldClient without a server")
struct ClientUnitTests {
    @Test func backoffIsFullJitterDoublingToTheCap() {
        let base = Duration.milliseconds(250)
        let cap = Duration.seconds(8)
        #expect(ReconnectDelay.backoff(attempt: 0, base: base, cap: cap) { 0 } == .zero)
        #expect(ReconnectDelay.backoff(attempt: 0, base: base, cap: cap) { 0.5 } == .milliseconds(125))
        #expect(ReconnectDelay.backoff(attempt: 3, base: base, cap: cap) { 0.5 } == .seconds(1))
        #expect(ReconnectDelay.backoff(attempt: 10, base: base, cap: cap) { 0.5 } == .seconds(4))
        #expect(ReconnectDelay.backoff(attempt: 1000, base: base, cap: cap) { 0.999 } < cap)
        for attempt in 0..<40 {
            let delay = ReconnectDelay.backoff(attempt: attempt, base: base, cap: cap) { Double.random(in: 0..<1) }
            #expect(delay >= .zero && delay < cap)
        }
    }

    @Test func closeReasonHintsAreJittered() {
        #expect(ReconnectDelay.hint(inCloseReason: "retry in 3 s: cannot set the connection up", random: { 0.5 }) == .seconds(3))
        #expect(ReconnectDelay.hint(inCloseReason: "retry in 2s", random: { 0 }) == .seconds(1))
        #expect(ReconnectDelay.hint(inCloseReason: "retry in 1.5 s", random: { 1 }) == .milliseconds(2250))
        #expect(ReconnectDelay.hint(inCloseReason: "slow consumer", random: { 0.5 }) == nil)
        #expect(ReconnectDelay.hint(inCloseReason: "retry in soon", random: { 0.5 }) == nil)
        #expect(ReconnectDelay.hint(inCloseReason: "retry in 3 seconds", random: { 0.5 }) == nil)
    }

    @Test func requestFramesCarryTheirIDAndJoinsTheirPosition() throws {
        let data = try RawJSON(validating: #"{"k":[1, 2]}"#)
        #expect(RequestBody.publish(room: "lobby", data: data).text(id: 7, since: nil) == #"{"type":"publish","room":"lobby","data":{"k":[1, 2]},"id":7}"#)
        #expect(
            RequestBody.join("a\"b").text(id: 1, since: StreamPosition(offset: 17, epoch: "e1"))
                == #"{"type":"join","room":"a\"b","since":{"offset":17,"epoch":"e1"},"id":1}"#)
        #expect(RequestBody.ack(offset: 3, epoch: "e").text(id: 2, since: nil) == #"{"type":"ack","offset":3,"epoch":"e","id":2}"#)
    }

    @Test func serverFramesAreParsedOrRefused() throws {
        let frame = try InboundFrame(text: #"{"type":"joined","room":"r","id":4,"recovered":false,"reason":"history_expired","offset":20,"epoch":"e"}"#)
        #expect(frame.type == "joined")
        #expect(frame.requestID == 4)
        #expect(frame.bool("recovered") == false)
        #expect(frame.position == StreamPosition(offset: 20, epoch: "e"))
        #expect(try InboundFrame(text: #"{"type":"presence","members":["a","b"]}"#).strings("members") == ["a", "b"])
        #expect(throws: HeraldClientError.self) { try InboundFrame(text: "not json") }
        #expect(throws: HeraldClientError.self) { try InboundFrame(text: #"{"no":"type"}"#) }
        #expect(throws: HeraldClientError.self) { try InboundFrame(text: "[1,2]") }
    }

    @Test func duplicatesAreDroppedByOffsetWithinAnEpoch() {
        var positions = ChannelPositions(limit: 10)
        var room: [Bool] = []
        for (offset, epoch) in [(1, "e"), (2, "e"), (2, "e"), (1, "e"), (1, "f")] {
            room.append(positions.accept(.room("r"), offset: Int64(offset), epoch: epoch, requiresAck: false))
        }
        // A new epoch: the history restarted, offsets start again.
        #expect(room == [true, true, false, false, true])
        // recovered:false moves the floor; an ack:true message below it that was never processed still counts.
        positions.giveUp(.user, latest: StreamPosition(offset: 10, epoch: "u"))
        var user: [Bool] = []
        user.append(positions.accept(.user, offset: 5, epoch: "u", requiresAck: false))
        user.append(positions.accept(.user, offset: 5, epoch: "u", requiresAck: true))
        #expect(positions.resume(.user) == StreamPosition(offset: 10, epoch: "u"))
        user.append(positions.accept(.user, offset: 11, epoch: "u", requiresAck: false))
        #expect(user == [false, true, true])
        #expect(positions.resume(.user) == StreamPosition(offset: 11, epoch: "u"))
    }

    @Test func positionsForgetTheLeastRecentlyUsedChannel() {
        var positions = ChannelPositions(limit: 3)
        for room in ["a", "b", "c"] { _ = positions.accept(.room(room), offset: 1, epoch: "e", requiresAck: false) }
        _ = positions.accept(.room("a"), offset: 2, epoch: "e", requiresAck: false)
        _ = positions.accept(.room("d"), offset: 1, epoch: "e", requiresAck: false)
        #expect(positions.count == 3)
        #expect(positions.resume(.room("b")) == nil)
        #expect(positions.resume(.room("a"))?.offset == 2)
    }

    /// A client fed frames by hand: hostile input is reported and ignored, duplicates dropped,
    /// rooms re-joined with `since` after a welcome, replies matched by id.
    @Test(.timeLimit(.minutes(1))) func hostileInputIsReportedAndIgnored() async throws {
        let client = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .user("zoe"))
        let core = client.core
        let events = client.events
        let messages = client.messages
        let (generation, outbox) = try #require(core.beginConnecting(url: "test"))
        var sent = outbox.makeAsyncIterator()

        let room = client.room("r")
        async let joined = room.join()  // queued until the welcome
        try await waitUntil("the join to be queued") { client.sizes.queued == 1 }
        core.receive(#"{"type":"welcome","user":"zoe","connection":"n-1","node":"n","heartbeat":25}"#, generation: generation)
        let joinFrame = try #require(await sent.next())
        #expect(joinFrame.hasPrefix(#"{"type":"join","room":"r","since":"latest","id":"#))
        let id = try #require(try InboundFrame(text: joinFrame).requestID)
        core.receive(#"{"type":"joined","room":"r","id":\#(id)}"#, generation: generation)
        #expect(try await joined.recovered == nil)

        for hostile in [
            "not json", "[]", #"{"type":7}"#, #"{"type":"surprise"}"#, #"{"type":"ok","id":999999}"#, #"{"type":"ok","id":"x"}"#,
            #"{"type":"message","scope":"room","room":"other","offset":1,"epoch":"e","data":1}"#,
            #"{"type":"message","scope":"nowhere","data":1}"#, #"{"type":"message","scope":"user"}"#,
            #"{"type":"welcome","user":"zoe","connection":"n-2","node":"n","heartbeat":25}"#,
        ] {
            core.receive(hostile, generation: generation)
        }
        core.receiveBinary(generation: generation)
        for offset in [1, 2, 2, 1, 3] {
            core.receive(
                #"{"type":"message","scope":"room","room":"r","offset":\#(offset),"epoch":"e","ts":5,"data":{"n":\#(offset)}}"#, generation: generation)
        }
        var received: [Int] = []
        for await message in messages {
            received.append(try message.decode(Numbered.self).n)
            if received.count == 3 { break }
        }
        #expect(received == [1, 2, 3])
        #expect(client.statistics.duplicates == 2)
        #expect(room.position == StreamPosition(offset: 3, epoch: "e"))

        var errors: [HeraldClientError] = []
        for await event in events {
            if case .error(let error) = event { errors.append(error) }
            if errors.count == 9 { break }
        }
        #expect(errors.allSatisfy { $0.code == "unexpected_frame" }, "\(errors)")

        // After a reconnect the room is joined again from its last offset.
        _ = core.connectionEnded(generation: generation, closeCode: 1012, reason: "server shutting down")
        let (second, outbox2) = try #require(core.beginConnecting(url: "test"))
        var sent2 = outbox2.makeAsyncIterator()
        core.receive(#"{"type":"welcome","user":"zoe","connection":"n-3","node":"n","heartbeat":25}"#, generation: second)
        let rejoin = try #require(await sent2.next())
        #expect(rejoin.hasPrefix(#"{"type":"join","room":"r","since":{"offset":3,"epoch":"e"},"id":"#))
        // A live message that overtakes the reply (the user is still a member) is ignored: the
        // replay after the reply brings it, in order, after the ones it overtook.
        let frame = { (offset: Int) in #"{"type":"message","scope":"room","room":"r","offset":\#(offset),"epoch":"e","data":{"n":\#(offset)}}"# }
        core.receive(frame(5), generation: second)
        let rejoinID = try #require(try InboundFrame(text: rejoin).requestID)
        core.receive(#"{"type":"joined","room":"r","id":\#(rejoinID),"recovered":true,"offset":5,"epoch":"e"}"#, generation: second)
        for offset in [4, 5, 6] { core.receive(frame(offset), generation: second) }
        received = []
        for await message in messages {
            received.append(try message.decode(Numbered.self).n)
            if received.count == 3 { break }
        }
        #expect(received == [4, 5, 6])
        core.shutdown(nil)
        await #expect(throws: HeraldClientError.self) { try await room.publish(1) }
    }

    @Test(.timeLimit(.minutes(1))) func boundsRefuseRequestsAtOnce() async throws {
        var configuration = HeraldClient.Configuration()
        configuration.maxQueuedRequests = 2
        configuration.requestTimeout = .milliseconds(200)
        let client = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .user("zoe"), configuration: configuration)
        let room = client.room("r")
        let first = Task { try await room.publish(1) }
        let second = Task { try await room.publish(2) }
        try await waitUntil("two queued requests") { client.sizes.queued == 2 }
        await #expect(throws: HeraldClientError.queueFull(limit: 2)) { try await room.publish(3) }
        // Not running: the queued requests time out when the ticks of run() see them.
        client.core.tick(now: .now + .seconds(1))
        await #expect(throws: HeraldClientError.self) { try await first.value }
        await #expect(throws: HeraldClientError.self) { try await second.value }
        #expect(client.sizes == HeraldClient.Sizes(pending: 0, queued: 0, positions: 0, rooms: 1))
    }

    @Test func closeCodesDecideBetweenRetryingAndStopping() {
        var configuration = HeraldClient.Configuration()
        configuration.random = { 0.5 }
        let core = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .user("zoe"), configuration: configuration).core
        guard case .retry(let hinted) = core.retry(closeCode: 1013, reason: "retry in 3 s: cannot set the connection up") else {
            Issue.record("1013 stopped the client")
            return
        }
        #expect(hinted == .seconds(3), "the server's hint, times the jitter factor")
        guard case .retry(let backedOff) = core.retry(closeCode: nil, reason: "connection refused") else {
            Issue.record("a refused connection stopped the client")
            return
        }
        #expect(backedOff == .milliseconds(250), "attempt 1 (the hinted wait counted as one): half of 500 ms")
        guard case .retry(let second) = core.retry(closeCode: 1012, reason: "server shutting down") else { return }
        #expect(second == .milliseconds(500), "attempt 2: half of 1 s")
        for code: UInt16 in [4001, 4003, 1002, 1007, 1008] {
            guard case .stop(let error) = core.retry(closeCode: code, reason: "token revoked") else {
                Issue.record("\(code) did not stop the client")
                continue
            }
            #expect(error == .stopped(closeCode: code, reason: "token revoked"))
        }
        // A token provider gets one more chance after `token expired`, not two.
        let refreshing = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .tokenProvider { "t" }).core
        guard case .retry = refreshing.retry(closeCode: 4001, reason: "token expired") else {
            Issue.record("an expired token was not retried with a fresh one")
            return
        }
        guard case .stop = refreshing.retry(closeCode: 4001, reason: "token expired") else {
            Issue.record("a second expired token was retried")
            return
        }
    }

    /// Presence frames keep a joined room's presence; hostile ones change nothing they cannot.
    @Test(.timeLimit(.minutes(1))) func presenceFramesKeepTheRoomsPresence() async throws {
        var configuration = HeraldClient.Configuration()
        configuration.random = { 0 }  // a resync asks at once
        let client = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .user("zoe"), configuration: configuration)
        let core = client.core
        let (generation, outbox) = try #require(core.beginConnecting(url: "test"))
        var sent = outbox.makeAsyncIterator()
        let room = client.room("r")
        async let joined = room.join()
        try await waitUntil("the join to be queued") { client.sizes.queued == 1 }
        core.receive(#"{"type":"welcome","user":"zoe","connection":"n-1","node":"n","heartbeat":25,"presence_events":["r*"]}"#, generation: generation)
        #expect(client.welcome?.hasPresenceEvents("r") == true && client.welcome?.hasPresenceEvents("x") == false)
        let joinFrame = try #require(await sent.next())
        let id = try #require(try InboundFrame(text: joinFrame).requestID)
        core.receive(#"{"type":"joined","room":"r","id":\#(id)}"#, generation: generation)
        _ = try await joined
        core.receive(#"{"type":"presence_state","room":"r","members":["a","b"],"online":["a"],"info":{"a":{"name":"A"}}}"#, generation: generation)
        #expect(room.presenceState == PresenceUpdate(room: "r", members: ["a", "b"], online: ["a"], info: ["a": ["name": "A"]], change: nil))
        core.receive(#"{"type":"presence_change","room":"r","joined":["c"],"left":["a"],"online":["c","b"],"offline":["a"]}"#, generation: generation)
        let change = PresenceChange(joined: ["c"], left: ["a"], online: ["c", "b"], offline: ["a"], omitted: 0)
        #expect(room.presenceState == PresenceUpdate(room: "r", members: ["b", "c"], online: ["b", "c"], info: [:], change: change))
        for hostile in [
            #"{"type":"presence_change","room":"r","joined":"x","left":[1],"info":[]}"#, #"{"type":"presence_change","room":"elsewhere","joined":["z"]}"#,
            #"{"type":"presence_state"}"#,
        ] {
            core.receive(hostile, generation: generation)
        }
        #expect(room.presenceState?.members == ["b", "c"] && room.presenceState?.online == ["b", "c"])
        #expect(client.room("elsewhere").presenceState == nil, "a room not joined keeps nothing")
        // A change the server cut short: the client asks for the whole state and applies it.
        core.receive(#"{"type":"presence_change","room":"r","joined":["d"],"left":[],"online":[],"offline":[],"omitted":1500}"#, generation: generation)
        let ask = try #require(await sent.next())
        #expect(ask.hasPrefix(#"{"type":"presence","room":"r""#), "\(ask)")
        let askID = try #require(try InboundFrame(text: ask).requestID)
        core.receive(#"{"type":"presence","room":"r","members":["b","c","d","e"],"online":["e"],"id":\#(askID)}"#, generation: generation)
        try await waitUntil("the whole state") { room.presenceState?.members == ["b", "c", "d", "e"] }
        #expect(room.presenceState?.change == nil && room.presenceState?.online == ["e"])
    }

    @Test(.timeLimit(.minutes(1))) func silentConnectionsArePingedThenDropped() async throws {
        var configuration = HeraldClient.Configuration()
        configuration.heartbeat = .milliseconds(100)
        configuration.pongTimeout = .milliseconds(100)
        let client = HeraldClient(url: URL(string: "ws://127.0.0.1:9/ws")!, credentials: .user("zoe"), configuration: configuration)
        let core = client.core
        let (generation, outbox) = try #require(core.beginConnecting(url: "test"))
        var sent = outbox.makeAsyncIterator()
        core.receive(#"{"type":"welcome","user":"zoe","connection":"n-1","node":"n","heartbeat":25}"#, generation: generation)
        let start = ContinuousClock.now
        core.tick(now: start + .milliseconds(50))
        core.tick(now: start + .milliseconds(150))
        let ping = try #require(await sent.next())
        let pingID = try #require(try InboundFrame(text: ping).requestID)
        #expect(ping == #"{"type":"ping","id":\#(pingID)}"#)
        // The pong (any frame) keeps the connection.
        core.receive(#"{"type":"pong","id":\#(pingID)}"#, generation: generation)
        core.tick(now: .now + .milliseconds(50))
        #expect(core.localClose(generation) == nil)
        // Silence after the next ping: the connection is given up on.
        let later = ContinuousClock.now + .milliseconds(200)
        core.tick(now: later)
        #expect(await sent.next()?.hasPrefix(#"{"type":"ping","id":"#) == true)
        core.tick(now: later + .milliseconds(150))
        #expect(core.localClose(generation)?.1 == "heartbeat timeout: nothing received")
        #expect(await sent.next() == nil, "the outbox ends: the connection closes")
    }
}
