public import NIOCore
import NIOPosix
import Synchronization

/// A command client of a whole Redis Cluster: each command goes to the master serving its key's
/// slot, over one pipelined ``RedisClient`` per master.
///
/// The slot map comes from `CLUSTER SHARDS` (asked of a master, or of the seeds when none
/// answers), at ``connect()``, every ``Configuration/refreshInterval`` while ``run()`` runs,
/// every half second while a master is unreachable (a failover is under way), and at once when
/// a command is answered `MOVED`. A command answered `MOVED` is sent once more where the new map
/// says (Redis did not run it); one answered `ASK` (its key already moved by a migration under
/// way) is sent once to the importing master, after `ASKING`. Nothing queues: a command for a
/// slot no reachable master serves fails at once, as with ``RedisClient``.
///
/// A caller that must do something on a connection before its first command for a slot (Herald
/// records which server holds the slot's data) sets ``setSlotPreparation(_:)``: its commands go
/// first in the same write, once per slot and connection, and again after the slot changed
/// hands.
public final class RedisClusterClient: Sendable {
    public struct Configuration: Sendable {
        /// The per-master clients' timeouts, backoff and metrics.
        public var client = RedisClient.Configuration()
        /// How often the slot map is asked for while nothing suggests it changed.
        public var refreshInterval: Duration = .seconds(5)

        public init() {}
    }

    /// Commands to send on `connection` before its first command for `slot`.
    public typealias SlotPreparation = @Sendable (_ slot: Int, _ connection: RedisConnection) -> [RESPCommand]

    public typealias Server = RedisSentinelAddress.Server

    /// One command and the slot it is for.
    public struct RoutedCommand: Sendable {
        public var command: PipelinedCommand
        public var slot: Int

        /// Routed by `key`'s slot (a script by its first key when `key` is nil).
        public init(_ command: PipelinedCommand, routedBy key: String? = nil) {
            self.command = command
            if let key {
                self.slot = RedisCluster.slot(of: key)
            } else if case .script(_, let keys, _) = command, let first = keys.first {
                self.slot = RedisCluster.slot(of: first)
            } else {
                self.slot = 0
            }
        }
    }

    public let url: RedisURL
    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let state = Mutex<State>(State())

    final class Master: Sendable {
        let address: Server
        let client: RedisClient
        let task = Mutex<Task<Void, Never>?>(nil)

        init(address: Server, client: RedisClient) {
            self.address = address
            self.client = client
        }
    }

    struct State {
        /// The master of each slot; empty until the first map.
        var slots: [Server?] = []
        var masters: [Server: Master] = [:]
        var running = false
        var scripts: [RedisScript] = []
        var preparations: [@Sendable (RedisConnection) async throws -> Void] = []
        var slotPreparation: SlotPreparation?
        /// The refresh under way, which later askers share.
        var refreshing: EventLoopFuture<Void>?
        var refreshedAt: ContinuousClock.Instant?
        var refreshes = 0
        var mapObservers: [@Sendable () -> Void] = []
    }

    /// - Parameters:
    ///   - url: a `redis+cluster://` URL (its seeds are asked for the map first).
    ///   - configuration: the per-master clients' settings and the map's refresh interval.
    ///   - group: the event loops the connections run on.
    public init(url: RedisURL, configuration: Configuration = .init(), on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        precondition(url.cluster != nil, "RedisClusterClient needs a redis+cluster:// URL")
        self.url = url
        self.configuration = configuration
        self.group = group
    }

    // MARK: - Life

    /// Reads the slot map and connects to every master.
    /// - Throws: ``RedisError`` when no node answers with a map, or a master cannot be reached.
    public func connect() async throws {
        try await refresh()
        let unreachable = state.withLock { $0.masters.values.filter { !$0.client.isConnected }.map(\.address) }
        guard unreachable.isEmpty else {
            throw RedisError.transport(
                "cannot connect to the Redis Cluster masters \(unreachable.map { "\($0.host):\($0.port)" }.joined(separator: ", ")); check that they are reachable from this host"
            )
        }
    }

    /// Keeps every master's connection up and the slot map fresh until the task is cancelled.
    public func run() async {
        let masters = state.withLock { state in
            state.running = true
            return Array(state.masters.values)
        }
        for master in masters { start(master) }
        var sinceRefresh = Duration.zero
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(500))
            sinceRefresh += .milliseconds(500)
            let degraded = state.withLock { state in state.slots.isEmpty || state.masters.values.contains { !$0.client.isConnected } }
            if degraded || sinceRefresh >= configuration.refreshInterval {
                sinceRefresh = .zero
                _ = try? await refreshed().get()
            }
        }
        let all = state.withLock { state in
            state.running = false
            return Array(state.masters.values)
        }
        for master in all { master.task.withLock { $0 }?.cancel() }
        for master in all { await master.client.close() }
    }

    public func close() async {
        for master in state.withLock({ Array($0.masters.values) }) {
            master.task.withLock { $0 }?.cancel()
            await master.client.close()
        }
    }

    /// Whether there is a map and every master in it is connected.
    public var isConnected: Bool {
        state.withLock { state in !state.slots.isEmpty && !state.masters.isEmpty && state.masters.values.allSatisfy { $0.client.isConnected } }
    }

    /// The masters' connections that are up.
    public var connections: [RedisConnection] { state.withLock { Array($0.masters.values) }.compactMap(\.client.currentConnection) }

    /// The masters of the current map.
    public var masters: Set<Server> { Set(state.withLock { $0.slots }.compactMap { $0 }) }

    /// Times the slot map was read.
    public var refreshCount: Int { state.withLock { $0.refreshes } }

    /// The master serving `slot` in the current map.
    public func master(of slot: Int) -> Server? {
        state.withLock { state in state.slots.indices.contains(slot) ? state.slots[slot] : nil }
    }

    // MARK: - Set-up of every master's connections

    /// Loads `scripts` on every master's connections, now and after reconnects.
    public func preload(_ scripts: [RedisScript]) async {
        let masters = state.withLock { state in
            for script in scripts where !state.scripts.contains(script) { state.scripts.append(script) }
            return Array(state.masters.values)
        }
        for master in masters { await master.client.preload(scripts) }
    }

    /// Runs `preparation` on every master's connections before they are used (see
    /// ``RedisClient/prepareEachConnection(_:)``).
    public func prepareEachConnection(_ preparation: @escaping @Sendable (RedisConnection) async throws -> Void) async throws {
        let masters = state.withLock { state in
            state.preparations.append(preparation)
            return Array(state.masters.values)
        }
        for master in masters { try await master.client.prepareEachConnection(preparation) }
    }

    /// Calls `observer` after each read of the map that changed it (a failover, a migration).
    public func onMapChange(_ observer: @escaping @Sendable () -> Void) {
        state.withLock { $0.mapObservers.append(observer) }
    }

    public func setSlotPreparation(_ preparation: @escaping SlotPreparation) {
        state.withLock { $0.slotPreparation = preparation }
    }

    // MARK: - Commands

    /// Sends `command` to the master of `key`'s slot.
    public func submit(_ command: RESPCommand, routedBy key: String) -> EventLoopFuture<RESPValue> {
        submit(pipeline: [RoutedCommand(.command(command), routedBy: key)])[0]
    }

    @discardableResult
    public func send(_ command: RESPCommand, routedBy key: String) async throws -> RESPValue {
        try await submit(command, routedBy: key).get()
    }

    /// Runs `script` on the master of its first key's slot (every key must share that slot).
    public func evaluate(_ script: RedisScript, keys: [String], arguments: [ByteBuffer]) -> EventLoopFuture<RESPValue> {
        submit(pipeline: [RoutedCommand(.script(script, keys: keys, arguments: arguments))])[0]
    }

    public func evaluate(_ script: RedisScript, keys: [String], arguments: [String]) async throws -> RESPValue {
        try await evaluate(script, keys: keys, arguments: arguments.map { ByteBuffer(string: $0) }).get()
    }

    /// Sends the commands, one pipeline per master; each future holds its command's reply.
    /// Commands for one master keep their order; commands for different masters have none.
    public func submit(pipeline commands: [RoutedCommand]) -> [EventLoopFuture<RESPValue>] {
        submit(pipeline: commands, redirected: false)
    }

    private func submit(pipeline commands: [RoutedCommand], redirected: Bool) -> [EventLoopFuture<RESPValue>] {
        guard !commands.isEmpty else { return [] }
        let (slots, masters, prepare) = state.withLock { ($0.slots, $0.masters, $0.slotPreparation) }
        var results = [EventLoopFuture<RESPValue>?](repeating: nil, count: commands.count)
        var byMaster: [Server: [Int]] = [:]
        for (index, command) in commands.enumerated() {
            if slots.indices.contains(command.slot), let server = slots[command.slot], masters[server] != nil {
                byMaster[server, default: []].append(index)
            } else {
                requestRefresh()
                results[index] = group.any().makeFailedFuture(
                    RedisError.transport(
                        "no reachable master of the Redis Cluster serves slot \(command.slot) (the cluster is down or being reconfigured); the command was not sent"
                    ))
            }
        }
        for (server, indices) in byMaster {
            let master = masters[server]!
            let routed = indices.map { commands[$0] }
            let fresh = FreshSlots()
            var preparing: (@Sendable (RedisConnection) -> [RESPCommand])?
            if let prepare {
                preparing = { connection in
                    let slots = Self.unprepared(routed, on: connection)
                    fresh.record(connection, slots)
                    return slots.flatMap { prepare($0, connection) }
                }
            }
            let (preparation, replies) = master.client.submit(pipeline: routed.map(\.command), preparedBy: preparing)
            // A preparation that failed is tried again before the slot's next command.
            preparation.whenFailure { _ in fresh.forget() }
            for (index, reply) in zip(indices, replies) {
                results[index] = redirected ? reply : follow(reply, of: commands[index], from: master)
            }
        }
        return results.map { $0! }
    }

    /// The slots `commands` use that `connection` has not prepared yet, marked prepared (this
    /// runs on the connection's event loop, just before the write that prepares them).
    private static func unprepared(_ commands: [RoutedCommand], on connection: RedisConnection) -> [Int] {
        connection.notes.preparedSlots.withLock { prepared in
            var fresh: [Int] = []
            for command in commands where prepared.insert(command.slot).inserted { fresh.append(command.slot) }
            return fresh
        }
    }

    /// The slots one write prepared, and on which connection: forgotten there if it failed.
    final class FreshSlots: Sendable {
        private let state = Mutex<(connection: RedisConnection?, slots: [Int])>((nil, []))

        func record(_ connection: RedisConnection, _ slots: [Int]) { state.withLock { $0 = (connection, slots) } }

        func forget() {
            let (connection, slots) = state.withLock { $0 }
            connection?.notes.preparedSlots.withLock { $0.subtract(slots) }
        }
    }

    /// Follows a `MOVED` (new map, then once more) or an `ASK` (once, to the importing master);
    /// a connection problem asks for a new map (a failover may be under way).
    private func follow(_ reply: EventLoopFuture<RESPValue>, of command: RoutedCommand, from master: Master) -> EventLoopFuture<RESPValue> {
        reply.flatMapError { [self] error in
            guard let redisError = error as? RedisError else { return reply }
            switch redisError {
            case .server(code: "MOVED", _):
                // Another command may have refreshed the map already: then resend at once.
                if let now = self.master(of: command.slot), now != master.address {
                    return submit(pipeline: [command], redirected: true)[0]
                }
                return refreshed().flatMap { [self] in submit(pipeline: [command], redirected: true)[0] }
            case .server(code: "ASK", let message):
                guard let target = Self.address(inRedirection: message), let importing = state.withLock({ $0.masters[target] }) else { return reply }
                let (_, replies) = importing.client.submit(pipeline: [.command(RESPCommand("ASKING")), command.command], preparedBy: nil)
                return replies[1]
            case .server(code: "READONLY", _), .server(code: "CLUSTERDOWN", _), .transport:
                requestRefresh()
                return reply
            default:
                return reply
            }
        }
    }

    /// `host:port` of `MOVED 3999 127.0.0.1:6381` or `ASK 3999 127.0.0.1:6381`.
    static func address(inRedirection message: String) -> Server? {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        let host = String(parts[2][..<colon])
        guard (1...255).contains(host.utf8.count) else { return nil }
        return Server(host: host, port: port)
    }

    // MARK: - The slot map

    /// Reads the slot map now (sharing a read under way).
    public func refreshMap() async throws {
        try await refreshed().get()
    }

    /// Asks for a new map in the background, unless one was read within the last 200 ms.
    private func requestRefresh() {
        let recent = state.withLock { state in state.refreshedAt.map { ContinuousClock.now - $0 < .milliseconds(200) } ?? false }
        if !recent { _ = refreshed() }
    }

    /// A refresh of the map: the one under way, or a new one.
    private func refreshed() -> EventLoopFuture<Void> {
        let loop = group.any()
        let (future, promise) = state.withLock { state -> (EventLoopFuture<Void>, EventLoopPromise<Void>?) in
            if let refreshing = state.refreshing { return (refreshing, nil) }
            let promise = loop.makePromise(of: Void.self)
            state.refreshing = promise.futureResult
            return (promise.futureResult, promise)
        }
        guard let promise else { return future }
        promise.completeWithTask { [self] in
            defer { state.withLock { $0.refreshing = nil } }
            try await refresh()
        }
        return promise.futureResult
    }

    /// Reads the map from a master (or the seeds), connects to new masters, drops the clients of
    /// servers that are masters no more, and forgets what connections prepared of slots that
    /// changed hands.
    private func refresh() async throws {
        let known = state.withLock { Array($0.masters.values) }
        var map: [Server?]?
        var answers: [String] = []
        for master in known.shuffled() where map == nil {
            do {
                map = RedisCluster.slotMasters(in: try await master.client.send(RESPCommand("CLUSTER", "SHARDS")))
            } catch {
                answers.append("\(master.address.host):\(master.address.port): \(error)")
            }
        }
        if map == nil, let cluster = url.cluster {
            for seed in cluster.seeds.rotatedRandomly() where map == nil {
                do {
                    let connection = try await RedisConnection.connect(
                        to: url.server(host: seed.host, port: seed.port), on: group, connectTimeout: configuration.client.connectTimeout,
                        commandTimeout: .seconds(2))
                    defer { Task { await connection.close() } }
                    map = RedisCluster.slotMasters(in: try await connection.send(RESPCommand("CLUSTER", "SHARDS")))
                    if map == nil { answers.append("\(seed.host):\(seed.port) names no online master") }
                } catch {
                    answers.append("\(seed.host):\(seed.port): \(error)")
                }
            }
        }
        guard var map else {
            throw RedisError.transport(
                "no node of the Redis Cluster answered with its slot map (\(answers.joined(separator: "; "))); check the nodes' addresses, and that the cluster is up (CLUSTER INFO)"
            )
        }
        // A slot the answer does not name (its master failed and no replica is promoted yet, or
        // the answering node does not know yet) keeps its previous master: a partial answer
        // does not take slots away.
        let previous = state.withLock { $0.slots }
        if previous.count == map.count {
            for slot in map.indices where map[slot] == nil { map[slot] = previous[slot] }
        }
        // New masters are connected before the map sends them commands.
        let newcomers = Set(map.compactMap { $0 }).filter { server in state.withLock { $0.masters[server] == nil } }
        var made: [Server: Master] = [:]
        for server in newcomers {
            let master = await makeMaster(server)
            try? await master.client.connect()
            made[server] = master
        }
        let (gone, running, observers) = state.withLock { state -> ([Master], Bool, [@Sendable () -> Void]) in
            let old = state.slots
            var gone: [Master] = []
            for (server, master) in made {
                if state.masters[server] == nil { state.masters[server] = master } else { gone.append(master) }  // lost a race
            }
            state.slots = map
            let serving = Set(map.compactMap { $0 })
            let unused = state.masters.filter { !serving.contains($0.key) }.map(\.value)
            for master in unused { state.masters[master.address] = nil }
            gone += unused
            if old.count == map.count {
                let moved = map.indices.filter { old[$0] != map[$0] }
                if !moved.isEmpty {
                    for master in state.masters.values {
                        master.client.currentConnection?.notes.preparedSlots.withLock { $0.subtract(moved) }
                    }
                }
            }
            state.refreshedAt = .now
            state.refreshes += 1
            return (gone, state.running, old == map ? [] : state.mapObservers)
        }
        if running { for master in made.values where !gone.contains(where: { $0 === master }) { start(master) } }
        for master in gone {
            master.task.withLock { $0 }?.cancel()
            await master.client.close()
        }
        for observer in observers { observer() }
    }

    /// A client of `server`, with the scripts and preparations every connection gets.
    private func makeMaster(_ server: Server) async -> Master {
        let (scripts, preparations) = state.withLock { ($0.scripts, $0.preparations) }
        let client = RedisClient(url: url.server(host: server.host, port: server.port), configuration: configuration.client, on: group)
        // Registered before it connects (no connection yet: nothing is sent).
        await client.preload(scripts)
        for preparation in preparations { try? await client.prepareEachConnection(preparation) }
        return Master(address: server, client: client)
    }

    private func start(_ master: Master) {
        master.task.withLock { task in
            guard task == nil else { return }
            task = Task { await master.client.run() }
        }
    }
}
