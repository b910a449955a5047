import Herald
import NIOCore
import Synchronization
import Testing

/// The ``Roster`` contract, stated once and run against every backend: memberships belong to
/// users and are announced to the nodes holding them before a change returns, limits hold,
/// presence counts connections across nodes and forgets a node that died, and an unavailable
/// store is reported as such (never as a limit).
@Suite("Roster conformance", .serialized, .timeLimit(.minutes(1)))
struct RosterConformanceTests {
    @Test(arguments: BackendKind.allCases)
    func membershipsAreStoredPerUserAndReportedOnce(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { (backend: TestBackend) async throws -> Void in
            let roster = backend.node.roster
            #expect(try await roster.join(user: "ada", room: "a") == true)
            #expect(try await roster.join(user: "ada", room: "a") == false, "a second join changes nothing")
            #expect(try await roster.join(user: "bob", room: "a") == true)
            #expect(try await roster.join(user: "ada", room: "b") == true)
            #expect(try await roster.members(of: "a") == ["ada", "bob"])
            #expect(try await roster.members(of: "nowhere") == [])
            #expect(try await roster.rooms(of: "ada") == ["a", "b"])
            #expect(try await roster.memberships(of: "ada", on: TestNode.loop).get() == ["a": .backend, "b": .backend], "the batched read answers the same")
            #expect(try await roster.memberships(of: "nobody", on: TestNode.loop).get() == [:])
            #expect(try await roster.roomCount() == 2)
            #expect(try await roster.leave(user: "ada", room: "b") == true)
            #expect(try await roster.leave(user: "ada", room: "b") == false, "a second leave changes nothing")
            #expect(try await roster.rooms(of: "ada") == ["a"])
            #expect(try await roster.roomCount() == 1, "a room without members no longer exists")
            let (members, online) = try await roster.presence(of: "a")
            #expect(members == ["ada", "bob"] && online == [])
        }
    }

    /// A membership records who granted it: the user's own join depends on their token, the
    /// backend's stands on its own. The backend's grant replaces the user's; never the reverse.
    @Test(arguments: BackendKind.allCases)
    func membershipsRecordWhoGrantedThem(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let holder = backend.nodes[backend.nodes.count - 1]
            let roster = backend.nodes[0].roster
            try await holder.holds(.user("ada"))
            #expect(try await roster.join(user: "ada", room: "own", grant: .user) == true)
            #expect(try await roster.join(user: "ada", room: "own", grant: .user) == false)
            #expect(try await roster.join(user: "ada", room: "given") == true)
            #expect(try await roster.join(user: "ada", room: "given", grant: .user) == false, "a user's join never downgrades the backend's grant")
            #expect(try await roster.memberships(of: "ada", on: TestNode.loop).get() == ["own": .user, "given": .backend])
            #expect(try await roster.join(user: "ada", room: "own", grant: .backend) == true, "the backend's grant replaces the user's")
            #expect(try await roster.memberships(of: "ada", on: TestNode.loop).get() == ["own": .backend, "given": .backend])
            #expect(try await roster.leave(user: "ada", room: "own") == true)
            #expect(try await roster.join(user: "ada", room: "own", grant: .user) == true)
            #expect(try await roster.memberships(of: "ada", on: TestNode.loop).get() == ["own": .user, "given": .backend], "a leave forgets the grant")
            #expect(
                holder.sink.changes.withLock { $0 }.filter { $0.user == "ada" } == [
                    MembershipChange(user: "ada", room: "own", isMember: true, grant: .user),
                    MembershipChange(user: "ada", room: "given", isMember: true, grant: .backend),
                    MembershipChange(user: "ada", room: "own", isMember: true, grant: .backend),
                    MembershipChange(user: "ada", room: "own", isMember: false),
                    MembershipChange(user: "ada", room: "own", isMember: true, grant: .user),
                ],
                "every node holding the user hears who granted each change"
            )
        }
    }

    @Test(arguments: BackendKind.allCases)
    func limitsAreEnforcedAndReportedAsLimits(_ kind: BackendKind) async throws {
        let limited: (inout BackendSettings) -> Void = {
            $0.limits.maxRoomsPerUser = 2
            $0.limits.maxMembersPerRoom = 2
            $0.limits.maxRooms = 3
        }
        try await TestBackend.with(kind, configure: limited) { (backend: TestBackend) async throws -> Void in
            let roster = backend.node.roster
            #expect(try await roster.join(user: "ada", room: "a") == true)
            #expect(try await roster.join(user: "bob", room: "a") == true)
            await #expect { _ = try await roster.join(user: "carol", room: "a") } throws: { ($0 as? HubError)?.isMembershipLimit == true }
            #expect(try await roster.join(user: "ada", room: "b") == true)
            await #expect { _ = try await roster.join(user: "ada", room: "c") } throws: { ($0 as? HubError)?.isMembershipLimit == true }
            #expect(try await roster.join(user: "bob", room: "c") == true)
            await #expect { _ = try await roster.join(user: "dave", room: "d") } throws: { ($0 as? HubError)?.isMembershipLimit == true }
            #expect(try await roster.members(of: "a") == ["ada", "bob"], "a refused join stores nothing")
            #expect(try await roster.roomCount() == 3)
        }
    }

    @Test(arguments: BackendKind.allCases)
    func aChangeReachesTheNodeHoldingTheUserBeforeItReturnsInStoreOrder(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let holder = backend.nodes[backend.nodes.count - 1]
            let changer = backend.nodes[0]
            // The holder has a connection of ada's: it declared interest in her channel.
            try await holder.holds(.user("ada"))
            #expect(try await changer.roster.join(user: "ada", room: "a") == true)
            #expect(holder.sink.changes.withLock { $0 } == [MembershipChange(user: "ada", room: "a", isMember: true)], "applied before join returned")
            #expect(try await changer.roster.join(user: "ada", room: "b") == true)
            #expect(try await changer.roster.leave(user: "ada", room: "a"))
            #expect(try await changer.roster.join(user: "ada", room: "b") == false)
            #expect(
                holder.sink.changes.withLock { $0 }.filter { $0.user == "ada" } == [
                    MembershipChange(user: "ada", room: "a", isMember: true),
                    MembershipChange(user: "ada", room: "b", isMember: true),
                    MembershipChange(user: "ada", room: "a", isMember: false),
                ],
                "every change that took effect, in the order it was stored; a join that changed nothing is not announced"
            )
        }
    }

    @Test(arguments: BackendKind.allCases)
    func presenceCountsConnectionsOnEveryNode(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            for node in backend.nodes {
                node.roster.presenceChanged(user: "ada", delta: 1)
            }
            backend.nodes[0].roster.presenceChanged(user: "bob", delta: 2)
            let reader = backend.nodes[backend.nodes.count - 1].roster
            let nodes = backend.nodes.count
            try await eventually("every node's presence counted") {
                try await reader.connectionCounts(of: ["ada", "bob", "carol"]) == ["ada": nodes, "bob": 2, "carol": 0]
            }
            _ = try await reader.join(user: "ada", room: "r")
            _ = try await reader.join(user: "carol", room: "r")
            #expect(try await reader.presence(of: "r").online == ["ada"])
            backend.nodes[0].roster.presenceChanged(user: "bob", delta: -2)
            try await eventually("bob's last connection gone") { try await reader.connectionCounts(of: ["bob"]) == ["bob": 0] }
            if let totals = try await reader.clusterTotals() {
                #expect(totals.nodes == nodes, "a roster shared by nodes knows the live ones")
            }
        }
    }

    /// What presence events rely on: after any membership change or a user coming online or
    /// going offline anywhere, the roster's changes since an earlier version name the room (or
    /// say any room may have changed); with no change at all, no room.
    @Test(arguments: BackendKind.allCases)
    func presenceChangesNeverMissARoomThatChanged(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let watcher = backend.nodes[backend.nodes.count - 1].roster
            let changer = backend.nodes[0].roster
            _ = try await changer.join(user: "ada", room: "r")
            _ = try await changer.join(user: "bob", room: "s")
            #expect(try await watcher.presenceChanges(since: nil).rooms == nil, "the first call cannot tell")
            // Quiet once the nodes' start-up (their first heartbeats) is behind.
            var version = try await watcher.presenceChanges(since: nil).version
            try await eventually("no change reported while nothing changes") {
                let changes = try await watcher.presenceChanges(since: version)
                defer { version = changes.version }
                return changes.rooms == []
            }
            func changed(_ room: String) async throws {
                try await eventually("a change of \(room) reported") {
                    let changes = try await watcher.presenceChanges(since: version)
                    return changes.version != version && changes.rooms?.contains(room) ?? true
                }
                version = try await watcher.presenceChanges(since: nil).version
            }
            _ = try await changer.join(user: "carol", room: "r")
            try await changed("r")
            changer.presenceChanged(user: "bob", delta: 1)
            try await changed("s")
            _ = try await changer.leave(user: "ada", room: "r")
            try await changed("r")
            changer.presenceChanged(user: "bob", delta: -1)
            try await changed("s")
        }
    }

    /// Presence info lives while its user has connections on the node that recorded it, and
    /// every node can read it.
    @Test(arguments: BackendKind.allCases)
    func presenceInfoIsSharedWhileTheUserIsConnected(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind, nodes: kind.maxNodes) { backend in
            let holder = backend.nodes[0].roster
            let reader = backend.nodes[backend.nodes.count - 1].roster
            holder.presenceChanged(user: "ada", delta: 1)
            holder.presenceInfoChanged(user: "ada", info: #"{"name":"Ada"}"#)
            try await eventually("ada's info readable") { try await reader.presenceInfo(of: ["ada", "bob"]) == ["ada": #"{"name":"Ada"}"#] }
            holder.presenceChanged(user: "ada", delta: -1)
            try await eventually("ada's info gone with her last connection") { try await reader.presenceInfo(of: ["ada"]).isEmpty }
        }
    }

    @Test(arguments: BackendKind.allCases.filter(\.outlivesNodes))
    func aNodeThatStopsHeartbeatingStopsCountingAfterThePresenceTTL(_ kind: BackendKind) async throws {
        let secondNodeDies: (inout BackendSettings) -> Void = {
            $0.presenceTTL = .seconds(3)
            $0.silentNodes = [1]
        }
        try await TestBackend.with(kind, nodes: 2, configure: secondNodeDies) { backend in
            let (survivor, dying) = (backend.nodes[0], backend.nodes[1])
            survivor.roster.presenceChanged(user: "ada", delta: 1)
            dying.roster.presenceChanged(user: "ada", delta: 1)
            try await eventually("both counted") { try await survivor.roster.connectionCounts(of: ["ada"]) == ["ada": 2] }
            // The second node never heartbeats after its start, as if it was killed then: no
            // goodbye reaches the store.
            try await eventually("the dead node's connections expire", within: 10) {
                try await survivor.roster.connectionCounts(of: ["ada"]) == ["ada": 1]
            }
        }
    }

    @Test(arguments: BackendKind.allCases.filter(\.canBeUnavailable))
    func anUnavailableStoreIsReportedAsUnavailableNotAsALimit(_ kind: BackendKind) async throws {
        try await TestBackend.with(kind) { (backend: TestBackend) async throws -> Void in
            let roster = backend.node.roster
            #expect(try await roster.join(user: "ada", room: "a") == true)
            backend.makeUnavailable()
            let started = ContinuousClock.now
            await #expect { _ = try await roster.join(user: "ada", room: "b") } throws: { error in
                guard let error = error as? HubError else { return false }
                return !error.isMembershipLimit && !error.isConnectionLimit
            }
            await #expect(throws: HubError.self) { _ = try await roster.members(of: "a") }
            await #expect(throws: HubError.self) { _ = try await roster.memberships(of: "ada", on: TestNode.loop).get() }
            #expect(ContinuousClock.now - started < .seconds(5))
        }
    }
}
