import Foundation
import Herald
import HeraldServer
import HeraldTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Presence events (`--presence-events`): members of a watched room whose connection asked
/// (`?presence_events=true`) are told who joined, left, came online and went offline, one
/// coalesced `presence_change` frame per window; on one node and across a cluster.
@Suite("Presence events", .serialized, .timeLimit(.minutes(2)))
struct PresenceEventsTests {
    /// Reads `presence_change` frames of `room` (skipping other frames) until `done` holds for
    /// everything read so far; returns the frames.
    static func presenceChanges(
        _ client: TestClient, room: String, timeout: Double = 10, until done: ([[String: Any]]) -> Bool
    ) async throws -> [[String: Any]] {
        var changes: [[String: Any]] = []
        while !done(changes) {
            let frame = try await client.next(type: "presence_change", timeout: timeout)
            #expect(frame["room"] as? String == room, "only the watched room: \(frame)")
            changes.append(frame)
        }
        return changes
    }

    static func names(_ changes: [[String: Any]], _ list: String) -> Set<String> {
        Set(changes.flatMap { $0[list] as? [String] ?? [] })
    }

    @Test func membersOfAWatchedRoomAreToldOfJoinsLeavesAndOnlineChanges() async throws {
        try await TestServer.with({ $0.presenceEvents = PresenceEventsConfiguration(rooms: ["chat-*"], window: .milliseconds(100)) }) { server in
            let alice = try await TestClient.connect(port: server.port, query: "user=alice&presence_events=true")
            #expect(try await alice.next(type: "welcome")["presence_events"] as? [String] == ["chat-*"], "the welcome names the watched rooms")
            let carol = try await TestClient.connect(port: server.port, query: "user=carol")
            #expect(try await carol.next(type: "welcome")["presence_events"] == nil, "a client that did not ask is not told")
            try await alice.send(#"{"type":"join","room":"chat-1","id":1}"#)
            _ = try await alice.next(type: "joined")
            let state = try await alice.next(type: "presence_state")
            #expect(state["room"] as? String == "chat-1" && state["members"] as? [String] == ["alice"] && state["online"] as? [String] == ["alice"])
            try await carol.send(#"{"type":"join","room":"chat-1","id":1}"#)
            _ = try await carol.next(type: "joined")
            _ = try await Self.presenceChanges(alice, room: "chat-1") { Self.names($0, "joined").contains("carol") }
            try await alice.send(#"{"type":"join","room":"other","id":2}"#)
            _ = try await alice.next(type: "joined")

            let bob = try await TestClient.connect(port: server.port, query: "user=bob")
            _ = try await bob.next(type: "welcome")
            try await bob.send(#"{"type":"join","room":"other","id":1}"#)
            _ = try await bob.next(type: "joined")
            try await bob.send(#"{"type":"join","room":"chat-1","id":2}"#)
            _ = try await bob.next(type: "joined")
            let joins = try await Self.presenceChanges(alice, room: "chat-1") { Self.names($0, "joined").contains("bob") }
            #expect(Self.names(joins, "online").contains("bob"), "bob joined online: \(joins)")

            await bob.close()
            let offline = try await Self.presenceChanges(alice, room: "chat-1") { Self.names($0, "offline").contains("bob") }
            #expect(Self.names(offline, "left").isEmpty, "going offline is not leaving: \(offline)")

            #expect(try await server.http("DELETE", "/api/rooms/chat-1/members/bob").status == 200)
            let left = try await Self.presenceChanges(alice, room: "chat-1") { Self.names($0, "left").contains("bob") }
            #expect(Self.names(left, "joined").isEmpty)

            // Carol did not ask: her next frame is the room's next message, not a presence event.
            #expect(try await server.http("POST", "/api/rooms/chat-1/publish", body: #"{"data":"after"}"#).status == 202)
            #expect(try await carol.nextJSON()["data"] as? String == "after")
            #expect(try await alice.next(type: "message")["data"] as? String == "after")
            await alice.close()
            await carol.close()
        }
    }

    /// A hundred members connecting at once are a handful of frames, each naming many of them.
    @Test func aThunderingHerdIsCoalescedIntoFewFrames() async throws {
        try await TestServer.with({ $0.presenceEvents = PresenceEventsConfiguration(rooms: ["herd"], window: .milliseconds(500)) }) { server in
            let users = (0..<100).map { "u\($0)" }
            for user in users + ["watcher"] { #expect(try await server.http("PUT", "/api/rooms/herd/members/\(user)").status == 200) }
            let watcher = try await TestClient.connect(port: server.port, query: "user=watcher&presence_events=true")
            _ = try await watcher.next(type: "welcome")
            try await watcher.send(#"{"type":"join","room":"herd","id":1}"#)
            let state = try await watcher.next(type: "presence_state")
            #expect((state["members"] as? [String])?.count == users.count + 1 && state["online"] as? [String] == ["watcher"])

            let clients = try await withThrowingTaskGroup(of: TestClient.self) { group in
                for user in users { group.addTask { try await TestClient.connect(port: server.port, query: "user=\(user)") } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let online = try await Self.presenceChanges(watcher, room: "herd") { Self.names($0, "online").count == users.count }
            #expect(Self.names(online, "online") == Set(users))
            #expect(online.count <= 10, "100 arrivals in \(online.count) frames")
            for client in clients { await client.close() }
            let offline = try await Self.presenceChanges(watcher, room: "herd") { Self.names($0, "offline").count == users.count }
            #expect(offline.count <= 10, "100 departures in \(offline.count) frames")
            #expect((server.node.presenceNotifier?.eventsSent.load(ordering: .relaxed) ?? 0) <= 21)
            await watcher.close()
        }
    }

    /// A token's `info` claim (a display name) travels with the user's presence: in the state a
    /// joiner gets and in the event telling others the user came online. An oversized claim is
    /// refused like any malformed token.
    @Test func theTokensInfoTravelsWithPresence() async throws {
        let secret = "presence-info-secret-0123456789abcdef"
        func token(_ user: String, info: [String: String]?) async throws -> String {
            var claims = HeraldClaims(sub: user, exp: Date().addingTimeInterval(600), rooms: ["team"])
            claims.info = info.map(InfoClaim.init)
            return try await Authenticator.jwt(secret: secret).mint(claims)
        }
        try await TestServer.with({
            $0.jwtSecret = secret
            $0.apiKey = "presence-api-key"
            $0.presenceEvents = PresenceEventsConfiguration(rooms: ["team"], window: .milliseconds(100))
        }) { server in
            let ada = try await TestClient.connect(port: server.port, query: "token=\(try await token("ada", info: ["name": "Ada L."]))&presence_events=true")
            _ = try await ada.next(type: "welcome")
            try await ada.send(#"{"type":"join","room":"team","id":1}"#)
            let state = try await ada.next(type: "presence_state")
            #expect((state["info"] as? [String: Any])?["ada"] as? [String: String] == ["name": "Ada L."], "\(state)")

            let bob = try await TestClient.connect(port: server.port, query: "token=\(try await token("bob", info: ["name": "Bob \"B\"", "avatar": "/b.png"]))")
            _ = try await bob.next(type: "welcome")
            try await bob.send(#"{"type":"join","room":"team","id":1}"#)
            _ = try await bob.next(type: "joined")
            let joined = try await Self.presenceChanges(ada, room: "team") { Self.names($0, "joined").contains("bob") }
            let info = joined.compactMap { ($0["info"] as? [String: Any])?["bob"] as? [String: String] }.first
            #expect(info == ["name": "Bob \"B\"", "avatar": "/b.png"], "\(joined)")

            // An info claim past its bounds, or of another shape (another system's claim), is
            // ignored: the token is good, the user appears without info.
            let huge = Dictionary(uniqueKeysWithValues: (0..<17).map { ("k\($0)", "v") })
            let eve = try await TestClient.connect(port: server.port, query: "token=\(try await token("eve", info: huge))&presence_events=true")
            _ = try await eve.next(type: "welcome")
            try await eve.send(#"{"type":"join","room":"team","id":1}"#)
            let eveState = try await eve.next(type: "presence_state")
            #expect((eveState["info"] as? [String: Any])?["eve"] == nil && (eveState["online"] as? [String])?.contains("eve") == true, "\(eveState)")
            for other in ["42", #""name""#, #"{"name":7}"#, "[]"] {
                #expect(try JSONDecoder().decode(InfoClaim.self, from: Data(other.utf8)).values == nil, "\(other)")
            }
            #expect(try JSONDecoder().decode(InfoClaim.self, from: Data(#"{"name":"Ada"}"#.utf8)).values == ["name": "Ada"])
            await eve.close()
            await ada.close()
            await bob.close()
        }
    }

    /// Across nodes sharing Redis: a member on one node hears of a user on another coming
    /// online, joining, and going offline when that node is killed (after the presence TTL).
    @Test func eventsCrossNodesAndANodesDeathIsSeen() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let arguments = ["--redis", redis.url, "--presence-ttl", "3", "--presence-events", "room-*", "--presence-window", "200", "--log-level", "warning"]
        let n1 = try await HeraldNodeProcess(arguments: arguments + ["--node-id", "n1"])
        defer { n1.stop() }
        let n2 = try await HeraldNodeProcess(arguments: arguments + ["--node-id", "n2"])
        defer { n2.stop() }
        let alice = try await TestClient.connect(port: n1.port, query: "user=alice&presence_events=1")
        _ = try await alice.next(type: "welcome")
        try await alice.send(#"{"type":"join","room":"room-a","id":1}"#)
        _ = try await alice.next(type: "joined")
        #expect(try await alice.next(type: "presence_state")["members"] as? [String] == ["alice"])

        let bob = try await TestClient.connect(port: n2.port, query: "user=bob")
        _ = try await bob.next(type: "welcome")
        try await bob.send(#"{"type":"join","room":"room-a","id":1}"#)
        _ = try await bob.next(type: "joined")
        let joined = try await Self.presenceChanges(alice, room: "room-a") { Self.names($0, "joined").contains("bob") }
        #expect(Self.names(joined, "online").contains("bob"))

        n2.stop(signal: SIGKILL)
        let gone = try await Self.presenceChanges(alice, room: "room-a", timeout: 15) { Self.names($0, "offline").contains("bob") }
        #expect(Self.names(gone, "left").isEmpty, "a dead node's users go offline, they stay members")
        await alice.close()
    }
}
