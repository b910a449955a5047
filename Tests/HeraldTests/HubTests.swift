import Foundation
import Herald
import HeraldWire
import NIOCore
import NIOPosix
import Testing

@Suite("Hub fan-out through the LocalBroker")
struct HubTests {
    /// The seed's scenario: alice with two connections (on different loops), bob and carol; alice and bob in room R.
    struct Scenario {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let hub: Hub
        let broker: LocalBroker
        let roster: LocalRoster
        let a1, a2, b1, c1: RecordingConnection

        init() throws {
            (hub, broker, roster) = Hub.standalone(eventLoopGroup: group)
            let loops = Array(group.makeIterator())
            a1 = RecordingConnection(id: "a1", user: "alice", eventLoop: loops[0])
            a2 = RecordingConnection(id: "a2", user: "alice", eventLoop: loops[1])
            b1 = RecordingConnection(id: "b1", user: "bob", eventLoop: loops[1])
            c1 = RecordingConnection(id: "c1", user: "carol", eventLoop: loops[0])
        }

        var everyone: [RecordingConnection] { [a1, a2, b1, c1] }

        func start() async throws {
            for connection in everyone {
                try await connection.eventLoop.flatSubmit { try! self.hub.register(connection) }.get()
            }
            _ = try await roster.join(user: "alice", room: "R")
            _ = try await roster.join(user: "bob", room: "R")
        }

        func publish(_ target: DeliveryTarget, _ data: String) async throws {
            try await broker.publish(.message(to: target, from: "tester", data: try RawJSON(validating: data)), on: group.any())
            try await settle(group)
        }
    }

    func count(_ connection: RecordingConnection, containing needle: String) -> Int {
        connection.frames.filter { $0.contains(needle) }.count
    }

    @Test func eachScopeReachesExactlyTheRightConnectionsOnce() async throws {
        let s = try Scenario()
        try await s.start()

        try await s.publish(.room("R"), #""to-room""#)
        #expect([s.a1, s.a2, s.b1, s.c1].map { count($0, containing: "to-room") } == [1, 1, 1, 0])

        try await s.publish(.user("alice"), #""to-alice""#)
        #expect([s.a1, s.a2, s.b1, s.c1].map { count($0, containing: "to-alice") } == [1, 1, 0, 0])

        try await s.publish(.all, #""to-all""#)
        #expect([s.a1, s.a2, s.b1, s.c1].map { count($0, containing: "to-all") } == [1, 1, 1, 1])

        try await s.publish(.room("nobody-here"), #""lost""#)
        try await s.publish(.user("dave"), #""lost""#)
        #expect(s.everyone.allSatisfy { count($0, containing: "lost") == 0 })
        try await s.group.shutdownGracefully()
    }

    @Test func theFrameIsEncodedOnceWithScopeAndSender() async throws {
        let s = try Scenario()
        try await s.start()
        try await s.publish(.room("R"), #"{"x": 1}"#)
        let frame = try #require(s.b1.frames.first)
        #expect(s.b1.frames.count == 1)
        // The broker numbered the room's first message and inserted its position before the
        // accepted time and the data.
        #expect(frame.hasPrefix(#"{"type":"message","scope":"room","room":"R","from":"tester","offset":1,"epoch":""#))
        #expect(frame.contains(#"","ts":"#))
        #expect(frame.hasSuffix(#","data":{"x": 1}}"#))
        try await s.group.shutdownGracefully()
    }

    @Test func membershipBelongsToTheUserAndLeavingStopsDelivery() async throws {
        let s = try Scenario()
        try await s.start()
        _ = try await s.roster.leave(user: "alice", room: "R")
        try await s.publish(.room("R"), #""after-leave""#)
        #expect([s.a1, s.a2, s.b1].map { count($0, containing: "after-leave") } == [0, 0, 1])
        _ = try await s.roster.leave(user: "bob", room: "R")
        #expect(s.roster.roomCount() == 0)
        #expect(s.hub.localRoomCount == 0)
        try await s.group.shutdownGracefully()
    }

    @Test func unregisterRemovesFromEveryIndex() async throws {
        let s = try Scenario()
        try await s.start()
        try await s.a1.eventLoop.submit { s.hub.unregister(s.a1) }.get()
        #expect(s.hub.connectionCount(of: "alice") == 1)
        #expect(s.hub.connectionCount == 3)
        try await s.publish(.all, #""x""#)
        #expect(s.a1.frames.isEmpty)
        try await s.a2.eventLoop.submit { s.hub.unregister(s.a2) }.get()
        let presence = try await s.roster.presence(of: "R")
        #expect(presence.online == ["bob"])
        #expect(presence.members == ["alice", "bob"])  // membership outlives connections
        try await s.group.shutdownGracefully()
    }

    @Test func deliveriesInOneTurnShareOneFlush() async throws {
        let s = try Scenario()
        try await s.start()
        let loop = s.c1.eventLoop
        // Publish 50 messages from c1's loop within one task: they must be flushed together.
        try await loop.submit {
            for n in 0..<50 {
                _ = s.broker.publish(.message(to: .user("carol"), from: nil, data: try! RawJSON(validating: String(n))), on: loop)
            }
        }.get()
        try await settle(s.group)
        #expect(s.c1.frames.count == 50)
        #expect(s.c1.flushCount == 1)
        try await s.group.shutdownGracefully()
    }

    /// Every connection is pinged once per heartbeat interval, but the pings are spread over
    /// the interval (one slice of connections per tick) rather than sent all at once.
    @Test func heartbeatsAreSpreadOverTheInterval() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = HubConfiguration()
        configuration.heartbeat = .seconds(1)  // 10 slices of 100 ms
        let (hub, _, _) = Hub.standalone(configuration: configuration, eventLoopGroup: group)
        let loop = group.any()
        let connections = (0..<200).map { RecordingConnection(id: "c\($0)", user: "u\($0)", eventLoop: loop) }
        for connection in connections {
            try await loop.flatSubmit { try! hub.register(connection) }.get()
        }
        let heartbeat = Task { try await hub.run() }
        defer { heartbeat.cancel() }
        // Polled (nothing to await): bounded to 10 s, far above the 1 s it takes.
        let deadline = ContinuousClock.now + .seconds(10)
        while !connections.allSatisfy({ !$0.pingTimes.isEmpty }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(connections.allSatisfy { !$0.pingTimes.isEmpty }, "every connection pinged within 10 s")
        let times = connections.map { $0.pingTimes[0] }.sorted()
        // Ticks are 100 ms apart: pings more than 50 ms apart belong to different ticks.
        var ticks: [Int] = [1]
        for (earlier, later) in zip(times, times.dropFirst()) {
            if later - earlier > .milliseconds(50) { ticks.append(1) } else { ticks[ticks.count - 1] += 1 }
        }
        #expect(ticks.count >= 8, "pinged in \(ticks.count) ticks: \(ticks)")
        #expect(ticks.max()! <= 60, "pinged in \(ticks.count) ticks: \(ticks)")
        try await group.shutdownGracefully()
    }

    /// A loop that was behind (here: blocked for 1.5 s) may not have read the pongs that
    /// arrived meanwhile: the first heartbeat after it closes nobody; the next ones judge again.
    @Test func aHeartbeatRunningLateJudgesNobody() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = HubConfiguration()
        configuration.heartbeat = .milliseconds(100)  // one slice: a tick every 100 ms
        let (hub, _, _) = Hub.standalone(configuration: configuration, eventLoopGroup: group)
        let loop = group.any()
        let connection = RecordingConnection(id: "c", user: "u", eventLoop: loop)
        try await loop.flatSubmit { try! hub.register(connection) }.get()
        let heartbeat = Task { try await hub.run() }
        defer { heartbeat.cancel() }
        try await waitFor("heartbeats on time") { connection.heartbeats.count >= 3 }
        let blockEnded = try await loop.submit { () -> ContinuousClock.Instant in
            usleep(1_500_000)
            return .now
        }.get()
        try await waitFor("two heartbeats after the block") { connection.heartbeats.filter { $0.at >= blockEnded }.count >= 2 }
        let after = connection.heartbeats.filter { $0.at >= blockEnded }
        #expect(after[0].judging == false, "the late tick must not judge")
        #expect(after[1].judging == true, "the next tick on time judges again")
        #expect(connection.heartbeats.filter { $0.at < blockEnded }.contains { $0.judging })
        try await group.shutdownGracefully()
    }

    @Test func connectionLimitsRefuse() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = HubConfiguration()
        configuration.maxConnectionsPerUser = 2
        configuration.maxConnections = 3
        let hub = Hub.standalone(configuration: configuration, eventLoopGroup: group).hub
        let loop = group.next()
        let connections = (0..<4).map { RecordingConnection(id: "c\($0)", user: $0 < 3 ? "alice" : "bob", eventLoop: loop) }
        try await loop.submit {
            _ = try hub.register(connections[0])
            _ = try hub.register(connections[1])
            #expect(throws: HubError.self) { _ = try hub.register(connections[2]) }
            _ = try hub.register(connections[3])
            let extra = RecordingConnection(id: "x", user: "carol", eventLoop: loop)
            #expect { _ = try hub.register(extra) } throws: { ($0 as? HubError)?.isConnectionLimit == true }
        }.get()
        #expect(hub.connectionCount == 3)
        #expect(hub.statistics.snapshot().connectionsRefused == 2)
        try await group.shutdownGracefully()
    }

    @Test func tokenBucketAllowsBurstThenRate() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var bucket = TokenBucket(rate: 10, burst: 3, now: start)
        var results: [Bool] = []
        for _ in 0..<4 { results.append(bucket.take(now: start)) }
        #expect(results == [true, true, true, false])
        results = [bucket.take(now: start + .milliseconds(100)), bucket.take(now: start + .milliseconds(100))]
        #expect(results == [true, false])  // 100 ms at 10/s refills one token
        results = (0..<4).map { _ in bucket.take(now: start + .seconds(10)) }
        #expect(results == [true, true, true, false])  // never more than the burst
    }
}

/// Polls `condition` every 10 ms until it holds; fails after `seconds`.
private func waitFor(_ what: String, within seconds: Int64 = 10, _ condition: @escaping @Sendable () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting for \(what)")
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
