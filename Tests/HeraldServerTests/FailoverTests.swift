import Foundation
import HeraldTestSupport
import Synchronization
import Testing

/// A Redis deployment with failover, started for one test.
enum FailoverDeployment: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// A master, a replica and three sentinels.
    case sentinel
    /// Three masters with a replica each, `?sharding=none`: Herald's keys are in the slot of
    /// `{herald}`, whose master is killed.
    case cluster
    /// The same cluster sharded (the default): the master killed is the one serving the room's
    /// channel (`herald.room.{R}`).
    case shardedCluster

    var testDescription: String { rawValue }

    /// Starts it: the `--redis` URL, a way to kill the master Herald uses (waiting until its
    /// replica took over), and a way to stop everything.
    func start() async throws -> (url: String, killMaster: @Sendable () async throws -> Duration, stop: @Sendable () -> Void) {
        switch self {
        case .sentinel:
            let setup = try await RedisSentinelSetup()
            return (setup.url, { try await setup.killMasterAndAwaitFailover() }, { setup.stop() })
        case .cluster:
            let setup = try await RedisClusterSetup()
            return (setup.url + "?sharding=none", { try await setup.killMasterAndAwaitFailover(servingSlotOf: "{herald}") }, { setup.stop() })
        case .shardedCluster:
            let setup = try await RedisClusterSetup()
            return (setup.url, { try await setup.killMasterAndAwaitFailover(servingSlotOf: "{R}") }, { setup.stop() })
        }
    }
}

/// How Herald uses a Redis Cluster, and the key whose slot a test moves: the one of all of
/// Herald's keys, or the one of the room's channel.
enum ClusterSharding: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case none
    case channels

    var testDescription: String { rawValue }
    var movedKey: String { self == .none ? "{herald}" : "{R}" }
}

/// Two `herald serve` nodes on a real Redis deployment with failover (Sentinel, Redis Cluster)
/// whose master is killed with SIGKILL under traffic. Many processes and 10,000 messages: run
/// alone, as scripts/test does (`HERALD_FAILOVER_TESTS=1 swift test --skip-build --filter Failover`),
/// so that the other suites' timing is not starved on a small machine.
@Suite(
    "Failover: herald nodes through a Redis master's death", .serialized, .timeLimit(.minutes(3)),
    .enabled(if: ProcessInfo.processInfo.environment["HERALD_FAILOVER_TESTS"] == "1"))
struct FailoverTests {
    @Test(arguments: FailoverDeployment.allCases)
    func aMasterKilledDuringTenThousandMessagesLosesNothingSilently(_ deployment: FailoverDeployment) async throws {
        let setup = try await deployment.start()
        defer { setup.stop() }
        let stage = try await TwoNodeStage(redis: setup.url)
        defer { stage.stop() }
        let (ports, watchers, seen) = (stage.ports, stage.watchers, stage.seen)

        // 10,000 messages from 4 publishers over both nodes, each retried (with its id) until
        // accepted: a publish refused while there is no master is answered 503 at once.
        let total = 10_000
        let accepted = Tally()
        let refused = Tally()
        let killer = Task {
            while accepted.value.load(ordering: .relaxed) < 3_000 { try await Task.sleep(for: .milliseconds(5)) }
            return try await setup.killMaster()
        }
        try await stage.publish(total, accepted: accepted, refused: refused)
        let failover = try await killer.value
        print("\(deployment): failover took \(failover) as the test saw it; \(refused.value.load(ordering: .relaxed)) publish attempts refused meanwhile")

        for watcher in watchers {
            // Every message, once and in order within each epoch. The failover begins one new epoch
            // (the promoted replica may lack the old master's last writes, whose offsets must not
            // be given again): a client sees the epoch change. A message whose publish the dying
            // master applied but did not answer is published again by the retry in the new epoch.
            var received: [(data: Int, offset: Int, epoch: String)] = []
            var distinct = Set<Int>()
            while distinct.count < total {
                guard let frame = try? await watcher.nextPositioned(timeout: 10) else {
                    let missing = Set(0..<total).subtracting(distinct).sorted()
                    var epochs: [String] = []
                    for message in received where epochs.last != message.epoch { epochs.append(message.epoch) }
                    let switchAt = received.firstIndex { $0.epoch != received[0].epoch }
                    Issue.record(
                        "\(watcher.label): missing \(missing.prefix(20)) of \(missing.count); epochs \(epochs); switch at index \(switchAt.map(String.init) ?? "-"), around: \(switchAt.map { Array(received[max(0, $0 - 5)..<min(received.count, $0 + 5)]).map { "\($0.data)@\($0.offset)" } } ?? [])"
                    )
                    break
                }
                guard frame["type"] as? String == "message", let data = frame["data"] as? Int, data >= 0 else { continue }
                let (offset, epoch) = try position(frame)
                received.append((data, offset, epoch))
                distinct.insert(data)
            }
            var epochs: [String] = []
            for message in received where epochs.last != message.epoch { epochs.append(message.epoch) }
            #expect(epochs.count == 2, "\(watcher.label): epochs \(epochs): the new master began one new epoch, which never goes back")
            for epoch in epochs {
                let mine = received.filter { $0.epoch == epoch }
                let first = mine.first!.offset
                #expect(misplaced(mine.map(\.offset), first...(first + mine.count - 1)) == nil, "\(watcher.label), epoch \(epoch): in order, no gap")
                // The first epoch from 2 (1 is the message before the stream); the one the
                // failover begins from 2 too (its offset 1 stands for what the promoted replica
                // may lack).
                #expect(first == 2, "\(watcher.label): an epoch is seen from its first message")
                #expect(Set(mine.map(\.data)).count == mine.count, "\(watcher.label), epoch \(epoch): no duplicate")
            }
            print("\(watcher.label): \(received.count) messages for \(total) distinct, epochs \(epochs.count)")
        }

        // The client that went away asks to recover: what Redis may have lost is reported.
        let back = try await TestClient.connect(port: ports[0], query: "user=late", label: "late@n1")
        _ = try await back.next(type: "welcome")
        try await back.send(#"{"type":"join","room":"R","since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
        let joined = try await back.next(type: "joined")
        // The promoted replica may lack the old master's last writes: the room began a new epoch
        // there, and recovering across it is refused as it is after a lost history.
        #expect(joined["recovered"] as? Bool == false)
        #expect(joined["reason"] as? String == "epoch_changed")
        #expect(joined["epoch"] as? String != seen.epoch)
        await back.close()
        for node in 0..<2 {
            let stats = try json(try await httpRequest(port: ports[node], "GET", "/api/stats").body)
            #expect((stats["brokerReconnects"] as? Int ?? 0) >= 1, "n\(node + 1) reconnected to the new master")
        }
        for watcher in watchers { await watcher.close() }
    }
}

extension FailoverTests {
    @Test(arguments: ClusterSharding.allCases)
    func heraldsSlotMigratedUnderTrafficLosesNothingAndKeepsItsEpoch(_ sharding: ClusterSharding) async throws {
        let cluster = try await RedisClusterSetup(readyForFailover: false)
        defer { cluster.stop() }
        let stage = try await TwoNodeStage(redis: cluster.url + "?sharding=" + sharding.rawValue)
        defer { stage.stop() }
        let (ports, watchers, seen) = (stage.ports, stage.watchers, stage.seen)

        let total = 3_000
        let accepted = Tally()
        let refused = Tally()
        let mover = Task {
            while accepted.value.load(ordering: .relaxed) < 1_000 { try await Task.sleep(for: .milliseconds(5)) }
            return try await cluster.migrateSlot(of: sharding.movedKey)
        }
        try await stage.publish(total, accepted: accepted, refused: refused)
        let target = try await mover.value
        #expect(cluster.shard(of: sharding.movedKey)?.master.port == target, "the slot moved")
        print("slot migration (sharding \(sharding)): \(refused.value.load(ordering: .relaxed)) publish attempts refused while it moved")

        // The data moved whole: one epoch, every message once and in order.
        for watcher in watchers {
            // The first message (-1), then the stream.
            let received = try await messages(watcher, count: total + 1, timeout: 20)
            #expect(Set(received.map(\.epoch)).count == 1, "\(watcher.label): the migration kept the epoch")
            #expect(misplaced(received.map(\.offset), 1...(total + 1)) == nil, "\(watcher.label)")
            #expect(Set(received.compactMap { $0.data as? Int }).count == total + 1)
        }
        // And the history moved with it: a client away since before recovers everything.
        let back = try await TestClient.connect(port: ports[0], query: "user=late", label: "late@n1")
        _ = try await back.next(type: "welcome")
        try await back.send(#"{"type":"join","room":"R","since":{"offset":\#(seen.offset),"epoch":"\#(seen.epoch)"}}"#)
        let joined = try await back.next(type: "joined")
        #expect(joined["recovered"] as? Bool == true)
        #expect(Set(try await messages(back, count: total).compactMap { $0.data as? Int }).count == total)
        await back.close()
        for watcher in watchers { await watcher.close() }
    }
}

extension FailoverTests {
    /// A master that fails over and later comes back as master, with the same process (its
    /// `run_id` unchanged, its data resynchronised from the replica that lacked B 4 and 5): B 4
    /// and 5 must not be given again as offsets of the epoch the client saw them in, or the
    /// client coming back from 5 would be told it recovered, with nothing to replay.
    @Test func aMasterThatComesBackAsMasterDoesNotReuseOffsetsItsReplicaLacked() async throws {
        let setup = try await RedisSentinelSetup()
        defer { setup.stop() }
        let node = try await HeraldNodeProcess(arguments: ["--redis", setup.url, "--node-id", "n1", "--presence-ttl", "3", "--log-level", "warning"])
        defer { node.stop() }
        #expect(try await httpRequest(port: node.port, "PUT", "/api/rooms/B/members/late").status == 200)
        func publish(_ room: String, _ data: Int, within seconds: Double = 30) async throws {
            try await waitUntil("a publish to \(room) is accepted", within: seconds) {
                (try? await httpRequest(port: node.port, "POST", "/api/rooms/\(room)/publish", body: #"{"id":"\#(room)\#(data)","data":\#(data)}"#).status)
                    == 202
            }
        }
        let late = try await TestClient.connect(port: node.port, query: "user=late", label: "late")
        _ = try await late.next(type: "welcome")
        for n in 1...3 { try await publish("B", n) }
        // B 4 and 5 reach the client from the master, but never its replica: the replica's link
        // is cut (while it is stopped, so that it does not reconnect and catch up) before.
        kill(setup.replica.pid, SIGSTOP)
        #expect(redisCLI(port: setup.master.port, ["CLIENT", "KILL", "TYPE", "replica"]) == "1")
        for n in 4...5 { try await publish("B", n) }
        let seen = try await messages(late, count: 5)
        #expect(seen.map(\.offset) == [1, 2, 3, 4, 5])
        // The client goes away: no node reads or writes B while the replica is master.
        await late.close()
        kill(setup.master.pid, SIGSTOP)
        kill(setup.replica.pid, SIGCONT)
        try await waitUntil("the sentinels promote the replica", within: 30) { setup.masterPort() == setup.replica.port }
        try await publish("A", 1)
        // The old master comes back, is made a replica (and resynchronised), then master again.
        kill(setup.master.pid, SIGCONT)
        try await waitUntil("the old master replicates the new one", within: 30) {
            let info = redisCLI(port: setup.master.port, ["INFO", "replication"])
            return info.contains("role:slave") && info.contains("master_link_status:up")
        }
        try await waitUntil("the sentinels fail back", within: 30) {
            _ = redisCLI(port: setup.sentinels[0].port, ["SENTINEL", "FAILOVER", RedisSentinelSetup.masterName])
            for _ in 0..<20 where setup.masterPort() != setup.master.port { try await Task.sleep(for: .milliseconds(100)) }
            return setup.masterPort() == setup.master.port
        }
        // Two new messages to B. Had they been given offsets 4 and 5 of the old epoch, the client
        // coming back from 5 would be told it recovered, with nothing to replay: a silent loss.
        for n in 6...7 { try await publish("B", n) }
        let back = try await TestClient.connect(port: node.port, query: "user=late", label: "late again")
        _ = try await back.next(type: "welcome")
        try await back.send(#"{"type":"join","room":"B","since":{"offset":5,"epoch":"\#(seen[4].epoch)"}}"#)
        let joined = try await back.next(type: "joined")
        #expect(joined["recovered"] as? Bool == false, "\(joined)")
        #expect(joined["reason"] as? String == "epoch_changed")
        await back.close()
    }
}

/// Two `herald serve` nodes on `redis`, a watcher on each (members of room R, as is `late`), and
/// `late`'s position after the room's first message (data -1), taken before it went away.
private struct TwoNodeStage {
    let nodes: [HeraldNodeProcess]
    let watchers: [TestClient]
    let seen: (data: Any, offset: Int, epoch: String)
    var ports: [Int] { nodes.map(\.port) }

    init(redis: String) async throws {
        var nodes: [HeraldNodeProcess] = []
        do {
            for index in 1...2 {
                nodes.append(
                    try await HeraldNodeProcess(arguments: [
                        "--redis", redis, "--node-id", "n\(index)", "--presence-ttl", "3", "--history-size", "10000", "--log-level", "warning",
                    ]))
            }
        } catch {
            for node in nodes { node.stop() }
            throw error
        }
        self.nodes = nodes
        let ports = nodes.map(\.port)
        watchers = [
            try await TestClient.connect(port: ports[0], query: "user=w1", label: "w1@n1"),
            try await TestClient.connect(port: ports[1], query: "user=w2", label: "w2@n2"),
        ]
        for watcher in watchers { _ = try await watcher.next(type: "welcome") }
        for user in ["w1", "w2", "late"] { #expect(try await httpRequest(port: ports[0], "PUT", "/api/rooms/R/members/\(user)").status == 200) }
        let late = try await TestClient.connect(port: ports[1], query: "user=late", label: "late@n2")
        _ = try await late.next(type: "welcome")
        #expect(try await httpRequest(port: ports[0], "POST", "/api/rooms/R/publish", body: #"{"id":"first","data":-1}"#).status == 202)
        seen = try await messages(late, count: 1)[0]
        await late.close()
    }

    /// Publishes data 0..<total to R from 4 publishers over both nodes, each retried with its id
    /// on 503 (which must come fast) until accepted, for 60 s at most each.
    func publish(_ total: Int, accepted: Tally, refused: Tally) async throws {
        let ports = self.ports
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<4 {
                group.addTask {
                    for n in stride(from: lane, to: total, by: 4) {
                        let deadline = ContinuousClock.now + .seconds(60)
                        while true {
                            let started = ContinuousClock.now
                            let status = try await httpRequest(port: ports[n % 2], "POST", "/api/rooms/R/publish", body: #"{"id":"m\#(n)","data":\#(n)}"#)
                                .status
                            if status == 202 { break }
                            if status != 503 { throw TestFailure("publish \(n) answered \(status)") }
                            #expect(ContinuousClock.now - started < .seconds(3), "a refused publish is answered fast")
                            refused.value.add(1, ordering: .relaxed)
                            if ContinuousClock.now > deadline { throw TestFailure("publish \(n) refused for 60 s") }
                            try await Task.sleep(for: .milliseconds(20))
                        }
                        accepted.value.add(1, ordering: .relaxed)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    func stop() {
        for node in nodes { node.stop() }
    }
}

/// A counter tasks share (`Atomic` itself cannot be captured).
private final class Tally: Sendable {
    let value = Atomic<Int>(0)
}
