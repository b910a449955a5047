import NIOCore
import NIOPosix
import Synchronization

/// Sharded pub/sub over a Redis Cluster (Redis 7): each shard channel is subscribed with
/// `SSUBSCRIBE` on the master serving its slot, one ``RedisSubscriber`` (one connection) per
/// master, one command per slot. Publishes (`SPUBLISH`) then stay inside the slot's shard,
/// instead of being broadcast to every node of the cluster as `PUBLISH` is.
///
/// The slot map is the ``RedisClusterClient``'s. When it changes (a failover, a migration),
/// and when Redis unsubscribes a channel on its own (`sunsubscribe` pushes: its slot moved
/// away), the channels are subscribed again where they now live. Messages published meanwhile
/// were missed: `onLost` is told which channels stopped being subscribed (the others go on), and `onBack`
/// once every channel is subscribed again, so the owner heals from history.
public final class RedisClusterSubscriber: Sendable {
    public typealias Server = RedisSentinelAddress.Server

    private let cluster: RedisClusterClient
    private let group: any EventLoopGroup
    private let onMessage: @Sendable (RedisMessage) -> Void
    private let onLost: @Sendable ([String]) -> Void
    private let onBack: @Sendable () -> Void
    private let state = Mutex<State>(State())
    /// Held while deciding and telling `onLost` and `onBack`, so the owner hears them in order.
    private let telling = Mutex<Void>(())
    /// Subscriptions and moves, one at a time: a move never races a subscription of its channel.
    private let serial = SerialGate()

    final class Shard: Sendable {
        let address: Server
        let subscriber: RedisSubscriber
        let task = Mutex<Task<Void, Never>?>(nil)

        init(address: Server, subscriber: RedisSubscriber) {
            self.address = address
            self.subscriber = subscriber
        }
    }

    struct State {
        /// The channels wanted, and the master each is subscribed on (absent: not yet).
        var wanted: Set<String> = []
        var placed: [String: Server] = [:]
        var shards: [Server: Shard] = [:]
        var running = false
        /// `onLost` was told and `onBack` not yet.
        var degraded = false
        /// Shards whose connection is up with every channel subscribed (a reconnect's
        /// resubscription done): what `onBack` waits for.
        var ready: Set<Server> = []
        /// A rebalance was asked for (the map changed, Redis dropped channels) and one worker
        /// runs them, one at a time: a slot's worth of `sunsubscribe` pushes costs one.
        var rebalancePending = false
        var refreshPending = false
        var rebalancing = false
    }

    public init(
        cluster: RedisClusterClient,
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onMessage: @escaping @Sendable (RedisMessage) -> Void,
        onLost: @escaping @Sendable ([String]) -> Void = { _ in },
        onBack: @escaping @Sendable () -> Void = {}
    ) {
        self.cluster = cluster
        self.group = group
        self.onMessage = onMessage
        self.onLost = onLost
        self.onBack = onBack
        cluster.onMapChange { [weak self] in self?.requestRebalance(refreshingMap: false) }
    }

    /// Keeps every shard connection up, and the channels where the map says, until cancelled.
    public func run() async {
        let shards = state.withLock { state in
            state.running = true
            return Array(state.shards.values)
        }
        for shard in shards { start(shard) }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            // Channels not placed yet (no master then, or a subscription that failed); a map
            // change rebalances at once (the observer), so the placed ones are not checked here.
            if state.withLock({ $0.wanted.count != $0.placed.count }) { requestRebalance(refreshingMap: false) }
            checkHealth()
        }
        let all = state.withLock { state in
            state.running = false
            return Array(state.shards.values)
        }
        for shard in all { shard.task.withLock { $0 }?.cancel() }
        for shard in all { await shard.subscriber.close() }
    }

    /// Whether every wanted channel is subscribed on a connected master.
    public var isConnected: Bool {
        state.withLock { state in
            state.wanted.count == state.placed.count && Set(state.placed.values).isSubset(of: state.ready)
        }
    }

    /// The master each channel is subscribed on (for tests and diagnostics).
    public var placement: [String: Server] { state.withLock { $0.placed } }

    /// Subscribes `channels` on their slots' masters; returns once Redis confirmed them.
    /// - Throws: ``RedisError`` when a slot has no reachable master (the channel stays wanted
    ///   and is subscribed once the map names one) or a master did not confirm.
    public func subscribe(_ channels: [String]) async throws {
        guard !channels.isEmpty else { return }
        state.withLock { $0.wanted.formUnion(channels) }
        try await serial.run { try await place(channels) }
    }

    public func unsubscribe(_ channels: [String]) async throws {
        guard !channels.isEmpty else { return }
        try await serial.run {
            let byShard = state.withLock { state -> [Server: [String]] in
                state.wanted.subtract(channels)
                var byShard: [Server: [String]] = [:]
                for channel in channels { if let server = state.placed.removeValue(forKey: channel) { byShard[server, default: []].append(channel) } }
                return byShard
            }
            for (server, names) in byShard { try await state.withLock { $0.shards[server] }?.subscriber.sunsubscribe(names) }
        }
    }

    /// Subscribes each of `channels` that is wanted on its slot's master.
    private func place(_ channels: [String]) async throws {
        var byServer: [Server: [String]] = [:]
        var unserved = 0
        for channel in channels {
            guard let server = cluster.master(of: RedisCluster.slot(of: channel)) else {
                unserved += 1
                continue
            }
            byServer[server, default: []].append(channel)
        }
        var failure: (any Error)?
        for (server, candidates) in byServer {
            // Unsubscribed meanwhile (its unsubscription went first through the gate): not placed.
            let names = state.withLock { state in candidates.filter { state.wanted.contains($0) } }
            guard !names.isEmpty else { continue }
            let shard: Shard
            do {
                shard = try await self.shard(for: server)
            } catch {
                failure = error
                continue
            }
            do {
                try await shard.subscriber.ssubscribe(names)
                state.withLock { state in
                    for name in names where state.wanted.contains(name) { state.placed[name] = server }
                }
            } catch {
                // Not subscribed there: a reconnect must not subscribe them there again.
                shard.subscriber.forget(shardChannels: names)
                failure = error
            }
        }
        if let failure { throw failure }
        if unserved > 0 {
            throw RedisError.transport(
                "no master of the Redis Cluster serves the slots of \(unserved) channels (the cluster is down or being reconfigured); they are subscribed once one does"
            )
        }
    }

    /// Asks the rebalance worker for a rebalance (and first a new map), starting it if needed.
    private func requestRebalance(refreshingMap: Bool) {
        let start = state.withLock { state in
            state.rebalancePending = true
            if refreshingMap { state.refreshPending = true }
            defer { state.rebalancing = true }
            return !state.rebalancing
        }
        guard start else { return }
        Task {
            while true {
                let refresh = state.withLock { state -> Bool? in
                    guard state.rebalancePending else {
                        state.rebalancing = false
                        return nil
                    }
                    defer { (state.rebalancePending, state.refreshPending) = (false, false) }
                    return state.refreshPending
                }
                guard let refresh else { return }
                if refresh { try? await cluster.refreshMap() }
                await rebalance()
            }
        }
    }

    /// Moves channels placed where the map no longer says, places those not placed, closes
    /// the shards left without channels, and tells `onBack` when all is subscribed again.
    private func rebalance() async {
        try? await serial.run {
            let (misplaced, unplaced) = state.withLock { state -> ([String: Server], [String]) in
                var misplaced: [String: Server] = [:]
                for (channel, server) in state.placed where cluster.master(of: RedisCluster.slot(of: channel)) != server {
                    misplaced[channel] = server
                }
                for channel in misplaced.keys { state.placed[channel] = nil }
                return (misplaced, state.wanted.filter { state.placed[$0] == nil })
            }
            lost(Array(misplaced.keys))
            var byOld: [Server: [String]] = [:]
            for (channel, server) in misplaced { byOld[server, default: []].append(channel) }
            for (server, names) in byOld { try? await state.withLock { $0.shards[server] }?.subscriber.sunsubscribe(names) }
            if !unplaced.isEmpty { try? await place(unplaced) }
            let masters = cluster.masters
            let idle = state.withLock { state -> [Shard] in
                let used = Set(state.placed.values)
                let idle = state.shards.values.filter { !used.contains($0.address) && !masters.contains($0.address) }
                for shard in idle {
                    state.shards[shard.address] = nil
                    state.ready.remove(shard.address)
                }
                return idle
            }
            for shard in idle {
                shard.task.withLock { $0 }?.cancel()
                await shard.subscriber.close()
            }
        }
        checkHealth()
    }

    /// The subscriber of `server`, connected (made now if there is none).
    /// - Throws: ``RedisError`` when a new one cannot connect (its channels are placed later).
    private func shard(for server: Server) async throws -> Shard {
        if let existing = state.withLock({ $0.shards[server] }) { return existing }
        let subscriber = RedisSubscriber(
            url: cluster.url.server(host: server.host, port: server.port),
            on: group,
            onMessage: onMessage,
            onReconnect: { [weak self] in
                guard let self else { return }
                state.withLock { _ = $0.ready.insert(server) }
                checkHealth()
            },
            onDisconnect: { [weak self] in
                guard let self else { return }
                // A shard being closed (no channels, no longer a master) loses nothing.
                let held = state.withLock { state -> [String] in
                    state.ready.remove(server)
                    guard state.shards[server] != nil else { return [] }
                    return state.placed.filter { $0.value == server }.map(\.key)
                }
                lost(held)
            },
            onShardChannelDropped: { [weak self] channel in
                guard let self else { return }
                // Redis dropped it (its slot moved): missed messages until it is back.
                state.withLock { _ = $0.placed.removeValue(forKey: channel) }
                lost([channel])
                requestRebalance(refreshingMap: true)
            }
        )
        try await subscriber.connect()
        // Made inside the gate (place runs there): no other can have been made meanwhile.
        let (shard, running) = state.withLock { state -> (Shard, Bool) in
            let shard = Shard(address: server, subscriber: subscriber)
            state.shards[server] = shard
            state.ready.insert(server)
            return (shard, state.running)
        }
        if running { start(shard) }
        return shard
    }

    private func start(_ shard: Shard) {
        shard.task.withLock { task in
            guard task == nil else { return }
            task = Task { await shard.subscriber.run() }
        }
    }

    /// `channels` stopped being subscribed: they miss messages until `onBack`.
    private func lost(_ channels: [String]) {
        guard !channels.isEmpty else { return }
        // Told in order with `onBack`: an `onBack` decided before this loss is told before it,
        // so the owner never takes it as covering channels lost after it.
        telling.withLock { _ in
            state.withLock { $0.degraded = true }
            onLost(channels)
        }
    }

    private func checkHealth() {
        telling.withLock { _ in
            let tell = state.withLock { state in
                guard state.degraded, state.wanted.count == state.placed.count, Set(state.placed.values).isSubset(of: state.ready) else { return false }
                state.degraded = false
                return true
            }
            if tell { onBack() }
        }
    }
}

/// Runs async bodies one at a time, in arrival order.
final class SerialGate: Sendable {
    private let state = Mutex<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func run<Result: Sendable>(_ body: () async throws -> Result) async throws -> Result {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let enter = state.withLock { state -> Bool in
                if state.busy {
                    state.waiting.append(continuation)
                    return false
                }
                state.busy = true
                return true
            }
            if enter { continuation.resume() }
        }
        defer {
            let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if state.waiting.isEmpty {
                    state.busy = false
                    return nil
                }
                return state.waiting.removeFirst()
            }
            next?.resume()
        }
        return try await body()
    }
}
