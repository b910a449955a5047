import Foundation
import HeraldRedisClient
import HeraldTestSupport
import NIOCore
import Testing

/// Offsets, history, recovery and healing across real `herald serve` processes and a real Redis.
@Suite("Cluster recovery: offsets and history in Redis", .serialized)
struct ClusterRecoveryTests {
    typealias Cluster = ClusterTests.Cluster

    @Test func twoNodesPublishingToOneRoomAtOnceGiveContiguousOffsets() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let watcher = try await cluster.client("watcher", on: 0)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/watcher").status == 200)
        let count = 150
        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in 0..<2 {
                group.addTask {
                    for n in 0..<count {
                        let status = try await cluster.http(node, "POST", "/api/rooms/R/publish", body: #"{"data":"n\#(node)-\#(n)"}"#).status
                        if status != 202 { throw TestFailure("publish answered \(status)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        let received = try await messages(watcher, count: 2 * count)
        #expect(misplaced(received.map(\.offset), 1...(2 * count)) == nil)
        #expect(Set(received.map(\.epoch)).count == 1)
        #expect(Set(received.compactMap { $0.data as? String }).count == 2 * count)
        // Each node's own messages keep their order within the stream.
        for node in 0..<2 {
            let mine = received.compactMap { $0.data as? String }.filter { $0.hasPrefix("n\(node)-") }
            #expect(mine == (0..<count).map { "n\(node)-\($0)" })
        }
        let history = try json(try await cluster.http(1, "GET", "/api/rooms/R/history?since=\(2 * count - 5)").body)
        #expect((history["messages"] as? [[String: Any]])?.compactMap { $0["offset"] as? Int } == Array((2 * count - 4)...(2 * count)))
        await watcher.close()
    }

    @Test func aClientAwayFromOneNodeRecoversOnAnother() async throws {
        let cluster = try await Cluster.start(nodes: 2, extra: ["--history-size", "20"])
        defer { cluster.stop() }
        var alice = try await cluster.client("alice", on: 0)
        try await alice.send(#"{"type":"join","room":"R"}"#)
        _ = try await alice.next(type: "joined")
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":0}"#).status == 202)
        let seen = try await messages(alice, count: 1)[0]
        await alice.close()

        for n in 1...10 { #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status == 202) }
        alice = try await cluster.client("alice", on: 1)
        try await alice.send(#"{"type":"join","room":"R","since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
        let joined = try await alice.next(type: "joined")
        #expect(joined["recovered"] as? Bool == true)
        #expect(try await messages(alice, count: 10).compactMap { $0.data as? Int } == Array(1...10))

        // Past the window (20 kept): recovered false, and the client knows to refetch.
        for n in 11...40 { #expect(try await cluster.http(0, "POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status == 202) }
        _ = try await messages(alice, count: 30)
        try await alice.send(#"{"type":"join","room":"R","since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
        let expired = try await alice.next(type: "joined")
        #expect(expired["recovered"] as? Bool == false)
        #expect(expired["reason"] as? String == "history_expired")
        await alice.close()
    }

    @Test func nodesHealTheGapWhenTheirPubSubConnectionsAreKilled() async throws {
        let cluster = try await Cluster.start(nodes: 2, extra: ["--history-size", "10000"])
        defer { cluster.stop() }
        let watchers = [try await cluster.client("w1", on: 0), try await cluster.client("w2", on: 1)]
        for user in ["w1", "w2"] { #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/\(user)").status == 200) }
        let total = 10_000
        let killer = Task {
            let redis = try await RedisConnection.connect(to: RedisURL(port: cluster.redis.port))
            var kills = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(150))
                if case .integer(let killed) = try await redis.send(RESPCommand("CLIENT", "KILL", "TYPE", "pubsub")) { kills += Int(killed) }
            }
            await redis.close()
            return kills
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<4 {
                group.addTask {
                    for n in stride(from: lane, to: total, by: 4) {
                        let status = try await cluster.http(n % 2, "POST", "/api/rooms/R/publish", body: #"{"data":\#(n)}"#).status
                        if status != 202 { throw TestFailure("publish \(n) answered \(status)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        killer.cancel()
        let kills = try await killer.value
        #expect(kills >= 2, "the pub/sub connections were never killed")
        for watcher in watchers {
            let received = try await messages(watcher, count: total, timeout: 20)
            #expect(misplaced(received.map(\.offset), 1...total) == nil, "\(watcher.label)")
            #expect(Set(received.compactMap { $0.data as? Int }).count == total)
        }
        for node in 0..<2 {
            let stats = try json(try await cluster.http(node, "GET", "/api/stats").body)
            #expect((stats["brokerReconnects"] as? Int ?? 0) >= 1)
        }
        for watcher in watchers { await watcher.close() }
    }

    @Test func aPublishRetriedOnAnotherNodeWithTheSameIdIsDeliveredOnce() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/alice").status == 200)
        for node in [0, 1, 1, 0] {
            #expect(try await cluster.http(node, "POST", "/api/rooms/R/publish", body: #"{"id":"k1","data":"once"}"#).status == 202)
            #expect(try await cluster.http(node, "POST", "/api/broadcast", body: #"{"id":"k1","data":"all-once"}"#).status == 202)
        }
        #expect(try await cluster.http(0, "POST", "/api/rooms/R/publish", body: #"{"id":"k2","data":"next"}"#).status == 202)
        var frames: [String] = []
        for _ in 0..<3 { frames.append(try await alice.next()) }
        #expect(frames.filter { $0.contains(#""data":"once""#) }.count == 1)
        #expect(frames.filter { $0.contains(#""data":"all-once""#) }.count == 1)
        #expect(frames.contains(#"{"type":"message","scope":"room","room":"R","data":"next"}"#))
        try await cluster.expectNothingElse(from: 0, [alice], "after the retried publishes")
        await alice.close()
    }

    @Test func theIngestQueueDeliversEveryEventOnceWhenAConsumingNodeIsKilled() async throws {
        let cluster = try await Cluster.start(nodes: 2, extra: ["--ingest-claim-idle", "1", "--history-size", "10000"])
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/alice").status == 200)
        let redis = try await RedisConnection.connect(to: RedisURL(port: cluster.redis.port))
        let total = 2000
        func append(_ range: Range<Int>) async throws {
            // Pipelined, as a backend with any Redis client would write them.
            let replies = range.map { n in redis.submit(RESPCommand("XADD", "herald:ingest", "*", "target", "room:R", "data", #"{"n":\#(n)}"#)) }
            for reply in replies { _ = try await reply.get() }
        }
        // A consumer that read 50 entries and died without acknowledging them, for sure: in one
        // transaction, so no node can read them first. A live node must claim them.
        try await redis.send(RESPCommand("MULTI"))
        for n in total..<(total + 50) {
            try await redis.send(RESPCommand("XADD", "herald:ingest", "*", "target", "room:R", "data", #"{"n":\#(n)}"#))
        }
        try await redis.send(RESPCommand("XREADGROUP", "GROUP", "herald", "ghost", "COUNT", "50", "STREAMS", "herald:ingest", ">"))
        try await redis.send(RESPCommand("EXEC"))
        try await append(0..<(total / 2))
        // A poison entry is moved aside; it does not block what follows.
        try await redis.send(RESPCommand("XADD", "herald:ingest", "*", "target", "nowhere", "data", "1"))
        // n2 dies while consuming: what it read and did not acknowledge is claimed by n1.
        cluster.nodes[1].stop(signal: SIGKILL)
        try await append((total / 2)..<total)

        let received = try await messages(alice, count: total + 50, timeout: 30)
        let numbers = received.compactMap { ($0.data as? [String: Any])?["n"] as? Int }
        #expect(Set(numbers).count == total + 50 && numbers.count == total + 50, "each event exactly once")
        try await cluster.expectNothingElse(from: 0, [alice], "after the ingest queue drained")
        let history = try json(try await cluster.http(0, "GET", "/api/rooms/R/history?limit=10000").body)
        #expect((history["messages"] as? [Any])?.count == total + 50)
        #expect(try await redis.send(RESPCommand("XLEN", "herald:ingest:dead")) == .integer(1))
        try await eventually("nothing left pending") {
            guard case .array(let summary?) = try await redis.send(RESPCommand("XPENDING", "herald:ingest", "herald")) else { return false }
            return summary.first == .integer(0)
        }
        // Acknowledged entries are trimmed: the stream does not grow forever (the last one
        // delivered stays, as the group's position).
        try await eventually("the acknowledged entries trimmed") {
            guard case .integer(let length) = try await redis.send(RESPCommand("XLEN", "herald:ingest")) else { return false }
            return length <= 1
        }
        await redis.close()
        await alice.close()
    }

    @Test func anAcknowledgedNotificationFollowsTheUserAcrossNodesUntilAcknowledged() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        #expect(try await cluster.http(0, "POST", "/api/users/bob/send", body: #"{"data":"must-arrive","ack":true}"#).status == 202)
        let onTwo = try await cluster.client("bob", on: 1)
        let frame = try await onTwo.nextPositioned()
        #expect(frame["data"] as? String == "must-arrive")
        #expect(frame["ack"] as? Bool == true, "the frame says it must be acknowledged")
        let (offset, epoch) = try position(frame)
        try await onTwo.send(#"{"type":"ack","offset":\#(offset),"epoch":"\#(epoch)","id":1}"#)
        #expect(try await onTwo.next() == #"{"type":"ok","id":1}"#)
        await onTwo.close()
        let onOne = try await cluster.client("bob", on: 0)
        #expect(try await cluster.http(0, "POST", "/api/users/bob/send", body: #"{"data":"next"}"#).status == 202)
        #expect(try await onOne.next() == #"{"type":"message","scope":"user","data":"next"}"#)
        await onOne.close()
    }

    @Test func aRedisRestartedWithoutPersistenceStartsNewEpochs() async throws {
        let cluster = try await Cluster.start(nodes: 1)
        defer { cluster.stop() }
        var alice = try await cluster.client("alice", on: 0)
        try await alice.send(#"{"type":"join","room":"R"}"#)
        _ = try await alice.next(type: "joined")
        #expect(try await cluster.http(0, "POST", "/api/rooms/R/publish", body: #"{"data":1}"#).status == 202)
        let seen = try await messages(alice, count: 1)[0]
        await alice.close()

        let restarted = try await cluster.restartRedisWithoutPersistence()
        defer { restarted.stop() }
        try await eventually("publishing works again", within: 15) {
            try await cluster.http(0, "POST", "/api/rooms/R/publish", body: #"{"data":2}"#).status == 202
        }
        alice = try await cluster.client("alice", on: 0)
        try await alice.send(#"{"type":"join","room":"R","since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
        let joined = try await alice.next(type: "joined")
        #expect(joined["recovered"] as? Bool == false)
        #expect(joined["reason"] as? String == "epoch_changed")
        #expect(joined["epoch"] as? String != seen.epoch)
        await alice.close()
    }

    @Test func theIngestQueueRecreatesItsGroupAfterRedisRestartsWithoutPersistence() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let before = try await RedisConnection.connect(to: RedisURL(port: cluster.redis.port))
        try await before.send(RESPCommand("XADD", "herald:ingest", "*", "target", "room:lobby", "data", #""before""#))
        try await eventually("the entry before the restart is in the room's history") {
            try await cluster.http(0, "GET", "/api/rooms/lobby/history").body.contains(#""data":"before""#)
        }
        // Both nodes are reading the queue as members of the group before Redis goes.
        try await eventually("both nodes joined the consumer group") {
            guard case .array(let consumers?) = try await before.send(RESPCommand("XINFO", "CONSUMERS", "herald:ingest", "herald")) else { return false }
            return consumers.count == 2
        }
        await before.close()

        // Redis restarts with nothing: no stream, no consumer group. A backend appends at once,
        // before the nodes are back: the entry must not be skipped (a group created from "$")
        // nor left pending until a claim (--ingest-claim-idle is 30 s here, past the waits).
        let restarted = try await cluster.restartRedisWithoutPersistence()
        defer { restarted.stop() }
        let redis = try await RedisConnection.connect(to: RedisURL(port: restarted.port))
        try await redis.send(RESPCommand("XADD", "herald:ingest", "*", "target", "room:lobby", "data", #""via ingest""#))
        try await eventually("the room entry appended right after the restart is in the room's history", within: 10) {
            try await cluster.http(0, "GET", "/api/rooms/lobby/history").body.contains(#""data":"via ingest""#)
        }
        // Connections need the roster: wait until n2 is back before alice connects there.
        try await eventually("n2 publishes again", within: 15) {
            try await cluster.http(1, "POST", "/api/broadcast", body: #"{"data":0}"#).status == 202
        }
        let alice = try await cluster.client("alice", on: 1)
        try await redis.send(RESPCommand("XADD", "herald:ingest", "*", "target", "user:alice", "data", #""to alice""#))
        #expect(try await messages(alice, count: 1, timeout: 10).first?.data as? String == "to alice")
        try await eventually("both entries acknowledged by the recreated group") {
            guard case .array(let summary?) = try await redis.send(RESPCommand("XPENDING", "herald:ingest", "herald")) else { return false }
            return summary.first == .integer(0)
        }
        guard case .array(let groups?) = try await redis.send(RESPCommand("XINFO", "GROUPS", "herald:ingest")) else {
            throw TestFailure("XINFO GROUPS did not answer an array")
        }
        #expect(groups.count == 1, "one consumer group, recreated once for the cluster")
        await redis.close()
        await alice.close()
    }

    @Test func aNodeThatMissedTheStartOfANewEpochHealsItFromTheEpochsFirstMessage() async throws {
        let cluster = try await Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 0)
        try await alice.send(#"{"type":"join","room":"R"}"#)
        _ = try await alice.next(type: "joined")
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"old epoch"}"#).status == 202)
        let first = try await messages(alice, count: 1)[0]

        // n1 is frozen while Redis restarts without persistence and n2 publishes twice: the
        // room's new epoch begins while n1 is away.
        kill(cluster.nodes[0].pid, SIGSTOP)
        let restarted = try await cluster.restartRedisWithoutPersistence()
        defer { restarted.stop() }
        try await eventually("n2 publishes again", within: 15) {
            try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"new 1"}"#).status == 202
        }
        #expect(try await cluster.http(1, "POST", "/api/rooms/R/publish", body: #"{"data":"new 2"}"#).status == 202)
        kill(cluster.nodes[0].pid, SIGCONT)

        // n1 resubscribes and heals from the new epoch's history: both, in order, once.
        let healed = try await messages(alice, count: 2, timeout: 15)
        #expect(healed.compactMap { $0.data as? String } == ["new 1", "new 2"])
        #expect(healed.map(\.offset) == [1, 2])
        #expect(Set(healed.map(\.epoch)).count == 1 && healed[0].epoch != first.epoch)
        try await cluster.expectNothingElse(from: 1, [alice], "after healing")
        await alice.close()
    }
}
