import Foundation

/// A real Redis Cluster for the tests: three masters with one replica each, `redis-server
/// --cluster-enabled yes` on ephemeral loopback ports joined by `redis-cli --cluster create`,
/// without persistence. A killed master is replaced by its replica within a few seconds
/// (`cluster-node-timeout` 1000 ms). Stopped (SIGKILL, directories removed) by ``stop()``.
public final class RedisClusterSetup: @unchecked Sendable {
    public let servers: [RedisServerProcess]

    /// - Parameter readyForFailover: wait until every master has a replica in sync, as a
    ///   failover needs; without, only until every node says the cluster is ok.
    public init(readyForFailover: Bool = true) async throws {
        var started: [RedisServerProcess] = []
        do {
            for _ in 0..<6 {
                started.append(
                    try await RedisServerProcess(arguments: [
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                        // The bus port must be given: the default, port + 10000, may not exist for an ephemeral port.
                        "--cluster-port", String(try RedisServerProcess.freePort()),
                    ]))
            }
        } catch {
            for server in started { server.stop() }
            throw error
        }
        servers = started
        let create = Process()
        create.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        create.arguments = ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "1", "--cluster-yes"]
        create.standardOutput = FileHandle.nullDevice
        create.standardError = FileHandle.nullDevice
        do {
            try create.run()
            create.waitUntilExit()
            guard create.terminationStatus == 0 else { throw RedisTestFailure("redis-cli --cluster create failed (\(create.terminationStatus))") }
            try await waitUntilHealthy(withReplicas: readyForFailover)
        } catch {
            stop()
            throw error
        }
    }

    /// `redis+cluster://127.0.0.1:P1,…` (every node as a seed).
    public var url: String { "redis+cluster://" + servers.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") }

    /// Waits (bounded) until every live node says the cluster is ok and sees three masters, each
    /// with a replica in sync.
    public func waitUntilHealthy(withReplicas: Bool = true, within seconds: Double = 30) async throws {
        let live = servers.filter(\.process.isRunning)
        for server in live {
            try await waitUntil("node \(server.port) says the cluster is ok", within: seconds) {
                redisCLI(port: server.port, ["CLUSTER", "INFO"]).contains("cluster_state:ok")
            }
        }
        guard withReplicas else { return }
        try await waitUntil("every master has a replica in sync", within: seconds) {
            let nodes = self.nodes(asSeenBy: live[0].port)
            let masters = nodes.filter { $0.isMaster && !$0.failed && !$0.slots.isEmpty }
            return masters.count == 3
                && masters.allSatisfy { master in
                    nodes.contains { !$0.isMaster && !$0.failed && $0.masterID == master.id }
                        && redisCLI(port: master.port, ["INFO", "replication"]).contains("state=online")
                }
        }
    }

    /// One line of `CLUSTER NODES`.
    public struct Node: Sendable {
        public var id: String
        public var port: Int
        public var isMaster: Bool
        public var failed: Bool
        public var masterID: String
        public var slots: [ClosedRange<Int>]
    }

    public func nodes(asSeenBy port: Int) -> [Node] {
        redisCLI(port: port, ["CLUSTER", "NODES"]).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 8, let address = fields[1].split(separator: "@").first, let port = address.split(separator: ":").last.flatMap({ Int($0) })
            else { return nil }
            let flags = fields[2].split(separator: ",")
            let slots = fields.dropFirst(8).compactMap { range -> ClosedRange<Int>? in
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                if bounds.count == 2 { return bounds[0]...bounds[1] }
                return bounds.count == 1 && !range.hasPrefix("[") ? bounds[0]...bounds[0] : nil
            }
            return Node(
                id: fields[0], port: port, isMaster: flags.contains("master"), failed: flags.contains("fail") || flags.contains("fail?"),
                masterID: fields[3], slots: slots)
        }
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    public func slot(of key: String) -> Int? {
        Int(redisCLI(port: servers.first { $0.process.isRunning }!.port, ["CLUSTER", "KEYSLOT", key]))
    }

    /// The live master serving `key`'s slot, and its replica.
    public func shard(of key: String) -> (master: RedisServerProcess, replica: RedisServerProcess)? {
        guard let slot = slot(of: key), let seer = servers.first(where: \.process.isRunning) else { return nil }
        let nodes = nodes(asSeenBy: seer.port)
        guard let master = nodes.first(where: { $0.isMaster && !$0.failed && $0.slots.contains { $0.contains(slot) } }),
            let replica = nodes.first(where: { !$0.isMaster && $0.masterID == master.id }),
            let masterServer = servers.first(where: { $0.port == master.port }), let replicaServer = servers.first(where: { $0.port == replica.port })
        else { return nil }
        return (masterServer, replicaServer)
    }

    /// Kills (SIGKILL) the master serving `key`'s slot and waits until its replica serves it.
    /// - Returns: how long the failover took, as seen by the test.
    @discardableResult
    public func killMasterAndAwaitFailover(servingSlotOf key: String, within seconds: Double = 30) async throws -> Duration {
        guard let (master, replica) = shard(of: key) else { throw RedisTestFailure("no master with a replica serves the slot of \(key)") }
        let started = ContinuousClock.now
        master.stop()
        try await waitUntil("the replica on \(replica.port) is promoted", within: seconds) {
            redisCLI(port: replica.port, ["ROLE"]).hasPrefix("master") && redisCLI(port: replica.port, ["CLUSTER", "INFO"]).contains("cluster_state:ok")
        }
        return ContinuousClock.now - started
    }

    /// Moves `key`'s slot, and every key in it, from its master to another master, as an
    /// operator resharding by hand does: `SETSLOT … IMPORTING` on the target, `MIGRATING` on the
    /// source, `MIGRATE` in batches of 100 keys, then `SETSLOT … NODE` everywhere.
    /// - Returns: the port of the master that serves the slot now.
    @discardableResult
    public func migrateSlot(of key: String) async throws -> Int {
        guard let slot = slot(of: key), let seer = servers.first(where: \.process.isRunning) else { throw RedisTestFailure("no live node") }
        let nodes = nodes(asSeenBy: seer.port)
        guard let source = nodes.first(where: { $0.isMaster && !$0.failed && $0.slots.contains { $0.contains(slot) } }),
            let target = nodes.first(where: { $0.isMaster && !$0.failed && $0.id != source.id && !$0.slots.isEmpty })
        else { throw RedisTestFailure("no source and target master for slot \(slot)") }
        func expectOK(_ port: Int, _ arguments: [String]) throws {
            let reply = redisCLI(port: port, arguments)
            guard reply == "OK" else { throw RedisTestFailure("\(arguments.joined(separator: " ")) on \(port) answered \(reply)") }
        }
        try expectOK(target.port, ["CLUSTER", "SETSLOT", String(slot), "IMPORTING", source.id])
        try expectOK(source.port, ["CLUSTER", "SETSLOT", String(slot), "MIGRATING", target.id])
        for _ in 0..<10_000 {
            let keys = redisCLI(port: source.port, ["CLUSTER", "GETKEYSINSLOT", String(slot), "100"]).split(separator: "\n").map(String.init)
            if keys.isEmpty { break }
            let reply = redisCLI(port: source.port, ["MIGRATE", "127.0.0.1", String(target.port), "", "0", "5000", "KEYS"] + keys)
            guard reply == "OK" || reply == "NOKEY" else { throw RedisTestFailure("MIGRATE answered \(reply)") }
            try await Task.sleep(for: .milliseconds(5))
        }
        for node in [target] + nodes.filter({ $0.isMaster && !$0.failed && $0.id != target.id }) {
            try expectOK(node.port, ["CLUSTER", "SETSLOT", String(slot), "NODE", target.id])
        }
        return target.port
    }

    public func stop() {
        for server in servers { server.stop() }
    }
}
