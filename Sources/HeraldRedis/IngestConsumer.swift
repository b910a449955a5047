import CoreMetrics
import Herald
import HeraldRedisClient
import HeraldWire
public import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle

/// The durable ingest queue: a backend appends events to a Redis Stream with nothing but a Redis
/// client, and the cluster's nodes, one consumer group, publish each event exactly once.
///
/// ```
/// XADD herald:ingest * target room:lobby data '{"text":"deploy done"}' [id KEY]
/// ```
///
/// `target` is `room:NAME`, `user:NAME` or `all`; `data` any JSON value; `id` an optional
/// idempotency key (default: the entry's id). Or `commands`: a batch in the shape of the HTTP
/// API's `POST /api/publish`, published whole (one pipelined write) or moved aside whole. Each node reads new entries with `XREADGROUP`,
/// publishes each through the broker with that idempotency key, and `XACK`s it only after the
/// publish succeeded. Entries left pending by a node that died are claimed by a live one after
/// `claimIdle` (`XAUTOCLAIM`) and published again — the idempotency key makes the retry a no-op
/// if the first publish went through. An entry that cannot be published (malformed, or failing
/// `maxAttempts` times) is moved to `{stream}:dead` with the reason, and acknowledged, so it
/// never blocks the queue.
public final class IngestConsumer: Service, Sendable {
    public struct Configuration: Sendable {
        /// The stream backends append to.
        public var stream: String
        public var group = "herald"
        /// How long an entry may stay pending with a silent consumer before another claims it.
        public var claimIdle: Duration = .seconds(30)
        /// Deliveries after which an entry is moved aside instead of retried.
        public var maxAttempts = 5
        /// Entries read per call.
        public var batch = 100

        public init(stream: String) {
            self.stream = stream
        }
    }

    public let configuration: Configuration
    private let backplane: RedisBackplane
    private let broker: any Broker
    private let client: RedisClient
    private let consumer: String
    private let logger: Logger
    private let metrics: HeraldMetrics

    /// Reads the queue in `backplane`'s Redis (on a connection of its own) and publishes each
    /// event through `broker`; counts publishes, dead letters and the group's lag in `metrics`.
    public init(configuration: Configuration, backplane: RedisBackplane, broker: any Broker, logger: Logger, metrics: HeraldMetrics = .disabled) {
        self.configuration = configuration
        self.metrics = metrics
        self.backplane = backplane
        self.broker = broker
        self.consumer = backplane.configuration.nodeID
        self.logger = logger
        // Its own connection: XREADGROUP BLOCK holds a connection for up to a second.
        var clientConfiguration = backplane.configuration.client
        clientConfiguration.commandTimeout = .seconds(5)
        clientConfiguration.metrics = RedisClientMetrics(metrics)
        self.client = RedisClient(url: backplane.url, configuration: clientConfiguration)
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            group.addTask { await self.consume() }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }

    private var deadStream: String { configuration.stream + ":dead" }

    private func consume() async {
        var backoff = Backoff(first: .milliseconds(100), cap: .seconds(2))
        var groupReady = false
        /// Entries this consumer read and did not acknowledge (a failed publish, a restart) are
        /// read again, first, before new ones: not left until another node claims them.
        var ownPendingFirst = true
        var lastClaim = ContinuousClock.now - configuration.claimIdle
        var lastLagReading = ContinuousClock.now - .seconds(1)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            // Both connections (the queue's, and the broker's that publishes) connect and
            // reconnect in their own tasks: an entry read before the broker is back would only
            // fail to publish. The broker reports Redis outages; this loop just waits.
            guard client.isConnected, backplane.isConnected else {
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            do {
                if !groupReady {
                    try await createGroup()
                    groupReady = true
                }
                if ownPendingFirst {
                    try await process(try await read(from: "0"), checkingAttempts: true)
                    ownPendingFirst = false
                }
                if ContinuousClock.now - lastClaim >= configuration.claimIdle / 2 {
                    try await claimAbandoned()
                    try await trimAcknowledged()
                    lastClaim = ContinuousClock.now
                }
                try await process(try await read(from: ">"))
                if metrics.isEnabled, ContinuousClock.now - lastLagReading >= .seconds(1) {
                    try await recordLag()
                    lastLagReading = ContinuousClock.now
                }
                backoff.reset()
            } catch let error as RedisError where Self.groupIsGone(error) {
                // Redis lost the group (restarted without persistence, the stream deleted or
                // the group destroyed): create it again, at once, or the queue stalls for good.
                ownPendingFirst = true
                if groupReady {
                    logger.notice(
                        "ingest queue: the consumer group \(configuration.group) of \(configuration.stream) is gone (\(error.serverCode ?? "")); creating it again"
                    )
                    groupReady = false
                } else {
                    // Gone again right after it was created: do not spin.
                    try? await Task.sleep(for: backoff.next())
                }
            } catch {
                if Task.isCancelled { return }
                ownPendingFirst = true
                if client.isConnected && backplane.isConnected { logger.warning("ingest queue: \(error)") }
                try? await Task.sleep(for: backoff.next())
            }
        }
    }

    /// The errors that mean the consumer group (or its stream) no longer exists in Redis.
    static func groupIsGone(_ error: RedisError) -> Bool {
        // NOGROUP: no such key or group. UNBLOCKED: the stream was deleted while XREADGROUP waited.
        error.serverCode == "NOGROUP" || error.serverCode == "UNBLOCKED"
    }

    private func createGroup() async throws {
        do {
            // From the start of the stream ("0"), not from its end ("$"): after Redis lost the group
            // (a restart without persistence) the stream holds only entries appended since, none of
            // them delivered yet, and "$" would skip them. Where the stream did survive, entries
            // read again are published with the same idempotency key, so none is delivered twice
            // within the history TTL.
            try await client.send(RESPCommand("XGROUP", "CREATE", configuration.stream, configuration.group, "0", "MKSTREAM"))
        } catch let error as RedisError where error.serverCode == "BUSYGROUP" {
            // Another node (or an earlier run) created it.
        }
    }

    /// Deletes the entries every consumer group of the stream has acknowledged, so the stream
    /// does not grow forever: those before the oldest pending entry and up to the last one
    /// delivered, of every group (a backend may run a group of its own on the stream).
    private func trimAcknowledged() async throws {
        let reply = try await client.evaluate(Self.trimScript, keys: [configuration.stream], arguments: [])
        if case .integer(let removed) = reply, removed > 0 {
            logger.debug("ingest queue: trimmed \(removed) acknowledged entries")
        }
    }

    /// KEYS: the stream. Trims it to the smallest of each group's oldest pending id and
    /// last-delivered id. Returns the entries removed.
    static let trimScript = RedisScript(
        """
        local function before(a, b)
          local am, as = string.match(a, '^(%d+)-(%d+)$')
          local bm, bs = string.match(b, '^(%d+)-(%d+)$')
          am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
          return am < bm or (am == bm and as < bs)
        end
        local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
        if not ok or #groups == 0 then return 0 end
        local keep = nil
        for _, group in ipairs(groups) do
          local name, last
          for i = 1, #group, 2 do
            if group[i] == 'name' then name = group[i + 1] elseif group[i] == 'last-delivered-id' then last = group[i + 1] end
          end
          if not name or not last then return 0 end
          local oldest = last
          local pending = redis.call('XPENDING', KEYS[1], name)
          if pending[1] > 0 and before(pending[2], oldest) then oldest = pending[2] end
          if keep == nil or before(oldest, keep) then keep = oldest end
        end
        return redis.call('XTRIM', KEYS[1], 'MINID', keep)
        """
    )

    /// `>`: new entries, waiting up to a second; `0`: this consumer's pending ones.
    private func read(from id: String) async throws -> [Entry] {
        var arguments = ["GROUP", configuration.group, consumer, "COUNT", String(configuration.batch)]
        if id == ">" { arguments += ["BLOCK", "1000"] }
        arguments += ["STREAMS", configuration.stream, id]
        let reply = try await client.send(RESPCommand("XREADGROUP", arguments))
        return Self.entries(inReadReply: reply)
    }

    /// Takes over entries another consumer left pending for longer than `claimIdle`.
    private func claimAbandoned() async throws {
        let idle = String(Int64(configuration.claimIdle / .milliseconds(1)))
        var cursor = "0-0"
        repeat {
            let reply = try await client.send(
                RESPCommand("XAUTOCLAIM", configuration.stream, configuration.group, consumer, idle, cursor, "COUNT", String(configuration.batch))
            )
            guard case .array(let parts?) = reply, parts.count >= 2, let next = parts[0].string else { return }
            let claimed = Self.entries(parts[1])
            if !claimed.isEmpty {
                logger.notice("ingest queue: claimed \(claimed.count) entries left pending by a silent consumer")
                try await process(claimed, checkingAttempts: true)
            }
            cursor = next
        } while cursor != "0-0" && !Task.isCancelled
    }

    private func process(_ entries: [Entry], checkingAttempts: Bool = false) async throws {
        for entry in entries {
            if checkingAttempts, let attempts = try await deliveries(of: entry.id), attempts > configuration.maxAttempts {
                try await moveAside(entry, reason: "not published after \(attempts - 1) attempts")
                continue
            }
            let envelopes: [Envelope]
            switch entry.envelopes() {
            case .failure(let problem):
                try await moveAside(entry, reason: problem.description)
                continue
            case .success(let value):
                envelopes = value
            }
            // Publish first, acknowledge after: a crash in between leaves the entry pending, and
            // its idempotency keys make the retry a no-op.
            if envelopes.count == 1 {
                try await broker.publish(envelopes[0], on: MultiThreadedEventLoopGroup.singleton.any())
            } else {
                let results = try await broker.publish(batch: envelopes, on: MultiThreadedEventLoopGroup.singleton.any()).get()
                for case .failure(let error) in results { throw error }
            }
            metrics.recordPublish(from: .ingest, count: envelopes.count)
            try await client.send(RESPCommand("XACK", configuration.stream, configuration.group, entry.id))
        }
    }

    /// `herald_ingest_lag_entries`: the group's `lag` (`XINFO GROUPS`, Redis 7+; left as it
    /// was when Redis cannot say).
    private func recordLag() async throws {
        let reply = try await client.send(RESPCommand("XINFO", "GROUPS", configuration.stream))
        guard case .array(let groups?) = reply else { return }
        for group in groups {
            let fields = Self.fields(of: group)
            guard case .bulkString(let name?)? = fields["name"], String(buffer: name) == configuration.group else { continue }
            if case .integer(let lag)? = fields["lag"] { metrics.ingestLag.record(lag) }
            return
        }
    }

    /// A map reply (RESP3) or a flat key/value array (RESP2) as a dictionary keyed by name.
    static func fields(of value: RESPValue) -> [String: RESPValue] {
        var fields: [String: RESPValue] = [:]
        switch value {
        case .map(let pairs):
            for (key, value) in pairs {
                if case .bulkString(let name?) = key { fields[String(buffer: name)] = value }
                if case .simpleString(let name) = key { fields[name] = value }
            }
        case .array(let items?):
            var index = 0
            while index + 1 < items.count {
                if case .bulkString(let name?) = items[index] { fields[String(buffer: name)] = items[index + 1] }
                index += 2
            }
        default:
            break
        }
        return fields
    }

    /// How many times the entry was delivered to a consumer (`XPENDING`), when it is pending.
    private func deliveries(of id: String) async throws -> Int? {
        let reply = try await client.send(RESPCommand("XPENDING", configuration.stream, configuration.group, id, id, "1"))
        guard case .array(let rows?) = reply, case .array(let row?)? = rows.first, row.count >= 4, case .integer(let count) = row[3] else { return nil }
        return Int(count)
    }

    private func moveAside(_ entry: Entry, reason: String) async throws {
        logger.error("ingest queue: entry moved to \(deadStream)", metadata: ["entry": "\(entry.id)", "reason": "\(reason)"])
        // The dead-letter stream keeps the latest 10,000 (roughly: trimmed by whole nodes).
        var arguments = [deadStream, "MAXLEN", "~", "10000", "*", "entry", entry.id, "reason", reason]
        for (field, value) in entry.fields { arguments += [field, value] }
        try await client.send(RESPCommand("XADD", arguments))
        try await client.send(RESPCommand("XACK", configuration.stream, configuration.group, entry.id))
        metrics.ingestDeadLetters.increment()
    }

    // MARK: - Entries

    struct Entry {
        var id: String
        var fields: [(String, String)]

        func field(_ name: String) -> String? { fields.last { $0.0 == name }?.1 }

        /// Why an entry cannot be published.
        struct Problem: Error, CustomStringConvertible {
            let description: String
        }

        /// The message the entry asks for, or why it cannot be published.
        /// The messages the entry asks for: one (`target`, `data`, `id`), or a batch (`commands`,
        /// the HTTP API's batch shape). A batch is published whole or not at all: one malformed
        /// command moves the entry aside, so the producer fixes and adds it again.
        func envelopes() -> Result<[Envelope], Problem> {
            if let commands = field("commands") {
                let elements: [RawJSON]
                do {
                    let object = try JSONObject(parsing: ByteBuffer(string: #"{"commands":"# + commands + "}"))
                    guard case .success(let array?) = object.array("commands", limit: PublishCommand.maxBatch) else {
                        return .failure(Problem(description: "commands must be a JSON array of at most \(PublishCommand.maxBatch) commands"))
                    }
                    elements = array
                } catch {
                    return .failure(Problem(description: "commands is not JSON: \(error)"))
                }
                switch PublishCommand.batch(elements) {
                case .failure(let problem):
                    return .failure(Problem(description: problem.message))
                case .success(let commands):
                    var envelopes: [Envelope] = []
                    for (index, command) in commands.enumerated() {
                        switch command {
                        case .failure(let problem):
                            return .failure(Problem(description: "command \(index): \(problem.message)"))
                        case .success(var envelope):
                            // Retried entries must not deliver twice: each command's key is its
                            // own id, or the entry's id and the command's place.
                            envelope.idempotencyKey = "ingest:" + (envelope.idempotencyKey ?? "\(field("id") ?? id)/\(index)")
                            envelopes.append(envelope)
                        }
                    }
                    return .success(envelopes)
                }
            }
            return envelope().map { [$0] }
        }

        func envelope() -> Result<Envelope, Problem> {
            guard let target = field("target") else { return .failure(Problem(description: "missing field target")) }
            let destination: DeliveryTarget
            if target == "all" {
                destination = .all
            } else if target.hasPrefix("room:"), Name.problem(String(target.dropFirst(5))) == nil {
                destination = .room(String(target.dropFirst(5)))
            } else if target.hasPrefix("user:"), Name.problem(String(target.dropFirst(5))) == nil {
                destination = .user(String(target.dropFirst(5)))
            } else {
                return .failure(Problem(description: "target must be all, room:NAME or user:NAME, not \(target.prefix(100))"))
            }
            guard let text = field("data") else { return .failure(Problem(description: "missing field data")) }
            let data: RawJSON
            do {
                data = try RawJSON(validating: text)
            } catch {
                return .failure(Problem(description: "data is not JSON: \(error)"))
            }
            var envelope = Envelope.message(to: destination, from: nil, data: data)
            envelope.idempotencyKey = "ingest:" + (field("id") ?? id)
            return .success(envelope)
        }
    }

    /// Entries of an `XREADGROUP` reply (a RESP3 map or a RESP2 array of [stream, entries]).
    static func entries(inReadReply reply: RESPValue) -> [Entry] {
        switch reply {
        case .map(let pairs): return pairs.flatMap { entries($0.value) }
        case .array(let streams?):
            return streams.flatMap { stream -> [Entry] in
                guard case .array(let pair?) = stream, pair.count == 2 else { return [] }
                return entries(pair[1])
            }
        default: return []
        }
    }

    /// `[[id, [field, value, ...]], ...]`; entries deleted meanwhile (nil fields) are skipped.
    static func entries(_ value: RESPValue) -> [Entry] {
        guard case .array(let items?) = value else { return [] }
        return items.compactMap { item in
            guard case .array(let pair?) = item, pair.count == 2, let id = pair[0].string, case .array(let flat?) = pair[1] else { return nil }
            var fields: [(String, String)] = []
            var index = 0
            while index + 1 < flat.count {
                if let name = flat[index].string, let value = flat[index + 1].string { fields.append((name, value)) }
                index += 2
            }
            return Entry(id: id, fields: fields)
        }
    }
}
