import Foundation
import Herald
import HeraldWire
import NIOCore
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What the official clients (`clients/js/herald.js`) need from the server: the time a message
/// was accepted (`ts`), a ping they can see the answer to, and the client served at `/herald.js`.
@Suite("Server support for clients")
struct ClientSupportTests {
    @Test func theAcceptedTimeGoesBeforeDataAndAfterThePosition() throws {
        let data = try RawJSON(validating: #"{"k":1}"#)
        let envelope = Envelope.message(to: .room("r"), from: "a", data: data, acceptedAt: 1_767_225_600_123)
        #expect(String(buffer: envelope.frame) == #"{"type":"message","scope":"room","room":"r","from":"a","ts":1767225600123,"data":{"k":1}}"#)
        let delivered = envelope.at(StreamPosition(offset: 7, epoch: "e")).deliveredFrame
        #expect(
            String(buffer: delivered) == #"{"type":"message","scope":"room","room":"r","from":"a","offset":7,"epoch":"e","ts":1767225600123,"data":{"k":1}}"#)
        let now = WallClock.millisecondsSince1970()
        #expect(abs(now - Int64(Date().timeIntervalSince1970 * 1000)) < 1000)
    }

    /// Every delivery carries `ts`; a message recovered after a reconnect carries the time it
    /// was published, not the time of the replay, and so does the history API.
    @Test func aRecoveredMessageShowsWhenItWasSentNotWhenItArrived() async throws {
        try await TestServer.with { server in
            var alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R"}"#)
            _ = try await alice.next(type: "joined")
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":0}"#).status == 202)
            let first = try await Self.nextMessage(alice)
            #expect(first["ts"] is Int)
            #expect(try await server.http("POST", "/api/broadcast", body: #"{"data":"all"}"#).status == 202)
            #expect(try await Self.nextMessage(alice)["ts"] is Int)
            let (offset, epoch) = try position(first)
            await alice.close()

            let before = Self.now()
            #expect(try await server.http("POST", "/api/rooms/R/publish", body: #"{"data":1}"#).status == 202)
            let after = Self.now()
            // Let the wall clock move well past the publish before the replay.
            try await Task.sleep(for: .milliseconds(50))
            alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"R","since":{"offset":\#(offset),"epoch":"\#(epoch)"}}"#)
            #expect(try await alice.next(type: "joined")["recovered"] as? Bool == true)
            let replayed = try await Self.nextMessage(alice)
            let replayedAt = Self.now()
            let ts = try #require(replayed["ts"] as? Int)
            #expect((before...after).contains(ts), "ts \(ts) is not the publish time \(before)...\(after)")
            #expect(replayedAt - ts >= 50)
            let history = try json(try await server.http("GET", "/api/rooms/R/history?since=\(offset)").body)
            #expect((history["messages"] as? [[String: Any]])?.first?["ts"] as? Int == ts)
            await alice.close()
        }
    }

    /// A `join` with `"since":"latest"` answers the room's position, so a client that has not
    /// received a message of the room yet can still resume from its join after a reconnect. A
    /// plain `join` stays as it was (the baselines' contract).
    @Test func aJoinSinceLatestTellsThePositionAClientResumesFrom() async throws {
        try await TestServer.with { server in
            var alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"quiet","id":0}"#)
            #expect(try await alice.nextRaw() == #"{"type":"joined","room":"quiet","id":0}"#)
            try await alice.send(#"{"type":"join","room":"quiet","since":"latest","id":1}"#)
            let joined = try await Self.next(alice, type: "joined")
            #expect(joined["id"] as? Int == 1 && joined["recovered"] == nil)
            let epoch = try #require(joined["epoch"] as? String)
            #expect(joined["offset"] as? Int == 0 && !epoch.isEmpty)
            await alice.close()

            for n in 1...3 { #expect(try await server.http("POST", "/api/rooms/quiet/publish", body: #"{"data":\#(n)}"#).status == 202) }
            alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"join","room":"quiet","since":{"offset":0,"epoch":"\#(epoch)"}}"#)
            let resumed = try await alice.next(type: "joined")
            #expect(resumed["recovered"] as? Bool == true && resumed["offset"] as? Int == 3 && resumed["epoch"] as? String == epoch)
            #expect(try await messages(alice, count: 3).map(\.offset) == [1, 2, 3])

            // Joining again (a member already) answers the latest position; what follows is after it.
            try await alice.send(#"{"type":"join","room":"quiet","since":"latest"}"#)
            #expect(try await Self.next(alice, type: "joined")["offset"] as? Int == 3)
            #expect(try await server.http("POST", "/api/rooms/quiet/publish", body: #"{"data":4}"#).status == 202)
            #expect(try await messages(alice, count: 1).map(\.offset) == [4])
            await alice.close()
        }
    }

    /// `?since=latest` makes the welcome tell the user channel's position, so a client can
    /// resume its direct messages before it has received one.
    @Test func aWelcomeTellsTheUserChannelsPositionWhenAsked() async throws {
        try await TestServer.with { server in
            var alice = try await TestClient.connect(port: server.port, query: "user=alice&since=latest")
            let welcome = try await alice.next(type: "welcome")
            let epoch = try #require(welcome["epoch"] as? String)
            #expect(welcome["offset"] as? Int == 0 && welcome["recovered"] == nil && !epoch.isEmpty)
            await alice.close()

            for n in 1...2 { #expect(try await server.http("POST", "/api/users/alice/send", body: #"{"data":\#(n)}"#).status == 202) }
            alice = try await TestClient.connect(port: server.port, query: "user=alice&since_offset=0&since_epoch=\(epoch)")
            let resumed = try await alice.next(type: "welcome")
            #expect(resumed["recovered"] as? Bool == true && resumed["offset"] as? Int == 2)
            #expect(try await messages(alice, count: 2).map(\.offset) == [1, 2])
            await alice.close()

            // Without the parameter the welcome stays as it was: no position.
            let bob = try await TestClient.connect(port: server.port, query: "user=bob")
            #expect(try await bob.next(type: "welcome")["offset"] == nil)
            await bob.close()
        }
    }

    @Test func aPingFrameIsAnsweredWithAPongCarryingItsID() async throws {
        try await TestServer.with { server in
            let alice = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await alice.next(type: "welcome")
            try await alice.send(#"{"type":"ping","id":{"n":[1, 2]}}"#)
            #expect(try await alice.next() == #"{"type":"pong","id":{"n":[1, 2]}}"#)
            try await alice.send(#"{"type":"ping"}"#)
            #expect(try await alice.next() == #"{"type":"pong"}"#)
            await alice.close()
        }
    }

    /// `/herald.js` and `/herald.d.ts` are the files in `clients/js/`, with a JavaScript
    /// content type, CORS for module scripts of other origins, and an ETag for revalidation.
    @Test func theJavaScriptClientIsServedWithItsDeclarations() async throws {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        try await TestServer.with { server in
            for (path, type) in [("herald.js", "text/javascript"), ("herald.d.ts", "application/typescript")] {
                let url = URL(string: "http://127.0.0.1:\(server.port)/\(path)")!
                let (body, response) = try await URLSession.shared.data(from: url)
                let http = try #require(response as? HTTPURLResponse)
                #expect(http.statusCode == 200)
                #expect(http.value(forHTTPHeaderField: "Content-Type")?.hasPrefix(type) == true)
                #expect(http.value(forHTTPHeaderField: "Access-Control-Allow-Origin") == "*")
                #expect(http.value(forHTTPHeaderField: "Cache-Control")?.contains("max-age") == true)
                #expect(body == (try Data(contentsOf: repository.appendingPathComponent("clients/js/\(path)"))))
                let tag = try #require(http.value(forHTTPHeaderField: "ETag"))

                var revalidation = URLRequest(url: url)
                revalidation.setValue("W/\"other\", \(tag)", forHTTPHeaderField: "If-None-Match")
                revalidation.cachePolicy = .reloadIgnoringLocalCacheData
                let (unchanged, notModified) = try await URLSession.shared.data(for: revalidation)
                #expect((notModified as? HTTPURLResponse)?.statusCode == 304)
                #expect(unchanged.isEmpty)

                var stale = URLRequest(url: url)
                stale.setValue("\"0000\"", forHTTPHeaderField: "If-None-Match")
                stale.cachePolicy = .reloadIgnoringLocalCacheData
                #expect(((try await URLSession.shared.data(for: stale)).1 as? HTTPURLResponse)?.statusCode == 200)
            }
        }
    }

    /// The next `message` frame as sent (with its position and time).
    private static func nextMessage(_ client: TestClient) async throws -> [String: Any] {
        try await next(client, type: "message")
    }

    /// The next frame of `type` as sent (with its position fields).
    private static func next(_ client: TestClient, type: String) async throws -> [String: Any] {
        for _ in 0..<100 {
            let frame = try await client.nextPositioned()
            if frame["type"] as? String == type { return frame }
        }
        throw TestFailure("no \(type) frame")
    }

    private static func now() -> Int { Int(Date().timeIntervalSince1970 * 1000) }
}
