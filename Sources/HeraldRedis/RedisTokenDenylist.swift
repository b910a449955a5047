public import Herald
import HeraldRedisClient
public import Logging
import NIOCore
public import ServiceLifecycle
import Synchronization

/// The token denylist of a cluster sharing one Redis: revoked ids in a sorted set scored by
/// expiry (`{prefix}:revoked-tokens`), announced on the control channel that every node
/// subscribes, and copied in each node's memory so that a connect never waits for Redis.
///
/// A node loads the whole set when it starts, each time its pub/sub connection comes back
/// (announcements made meanwhile were missed) and every ``reloadInterval`` (a safety net), and
/// merges it into its copy: a load never drops an entry it holds that has not expired. The limit
/// is checked in Redis, in the same script that adds, so the cluster holds at most ``limit``
/// live entries, and each node's copy no more (expired entries go as new ones come).
public final class RedisTokenDenylist: TokenDenylist, Service {
    public let limit: Int
    private let backplane: RedisBackplane
    private let sink: any DeliverySink
    private let logger: Logger
    private let entries = RevokedTokens()
    private let reloads: AsyncStream<Void>
    private let reloadRequests: AsyncStream<Void>.Continuation
    private var layout: RedisLayout { backplane.layout }

    public init(backplane: RedisBackplane, limit: Int = 100_000, notifying sink: any DeliverySink, logger: Logger) {
        self.backplane = backplane
        self.limit = limit
        self.sink = sink
        self.logger = logger
        let (reloads, reload) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.reloads = reloads
        self.reloadRequests = reload
        let entries = self.entries
        backplane.route(
            control: { payload in
                guard let (id, expiry) = Self.parse(String(buffer: payload)) else {
                    logger.warning("malformed control message ignored")
                    return
                }
                // Redis checked the limit; at it, the copy forgets its expired entries first.
                try? entries.insert(id, until: expiry, limit: limit)
                sink.credentialsRevoked([id])
            },
            back: { reload.yield() }
        )
        reload.yield()
    }

    public func revoke(_ id: String, until expiry: Int64) async throws(HubError) {
        let reply: RESPValue
        do {
            reply = try await backplane.client.evaluate(
                Self.revokeScript,
                keys: [layout.revokedTokensKey],
                arguments: [id, String(expiry), String(limit), layout.controlChannel, Self.message(id: id, expiry: expiry)]
            )
        } catch {
            throw HubError.unavailable("Redis: \(error)")
        }
        switch reply {
        case .integer(1): return
        case .integer(-1): throw HubError.denylistFull(limit: limit)
        default: throw HubError.unavailable("Redis answered the revoke script with \(reply)")
        }
    }

    private func requestReload() { reloadRequests.yield() }

    public func isRevoked(_ id: String) -> Bool {
        entries.contains(id)
    }

    /// How often the copy is reloaded besides the start and the pub/sub reconnects.
    public static let reloadInterval: Duration = .seconds(300)

    /// Reloads the copy at start, after each pub/sub reconnect and every ``reloadInterval``,
    /// until graceful shutdown; a reload that fails is tried again (capped backoff) until it
    /// succeeds.
    public func run() async throws {
        let reloads = self.reloads
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: Self.reloadInterval)
                        if !Task.isCancelled { self.requestReload() }
                    }
                }
                group.addTask {
                    for await _ in reloads {
                        var attempt = 0
                        while !Task.isCancelled, !(await self.reload()) {
                            try? await Task.sleep(for: .milliseconds(200 << min(attempt, 5)))
                            attempt += 1
                        }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// Replaces the copy with what Redis holds. Returns whether Redis answered.
    @discardableResult
    public func reload() async -> Bool {
        do {
            let reply = try await backplane.client.send(RESPCommand("ZRANGEBYSCORE", layout.revokedTokensKey, "(\(RevokedTokens.now())", "+inf", "WITHSCORES"))
            guard let loaded = Self.entries(reply) else { throw RedisError.unexpectedReply("Redis answered ZRANGEBYSCORE with \(reply)") }
            // Tokens revoked while this node was away: close their connections now.
            sink.credentialsRevoked(entries.merge(loaded))
            return true
        } catch {
            logger.warning("cannot load the revoked tokens from Redis; retrying", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// `{id, score, ...}` (RESP2) or `{{id, score}, ...}` (RESP3).
    static func entries(_ reply: RESPValue) -> [String: Int64]? {
        guard case .array(let items?) = reply else { return nil }
        var result: [String: Int64] = [:]
        var index = 0
        while index < items.count {
            if case .array(let pair?) = items[index], pair.count == 2 {
                guard let id = pair[0].string, let expiry = Self.seconds(pair[1]) else { return nil }
                result[id] = expiry
                index += 1
            } else {
                guard index + 1 < items.count, let id = items[index].string, let expiry = Self.seconds(items[index + 1]) else { return nil }
                result[id] = expiry
                index += 2
            }
        }
        return result
    }

    private static func seconds(_ value: RESPValue) -> Int64? {
        switch value {
        case .double(let score): Int64(exactly: score.rounded(.down))
        case .integer(let score): score
        default: value.string.flatMap { Double($0) }.map { Int64($0) }
        }
    }

    static func message(id: String, expiry: Int64) -> String { "revoke \(expiry) \(id)" }

    static func parse(_ message: String) -> (id: String, expiry: Int64)? {
        let parts = message.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "revoke", let expiry = Int64(parts[1]), !parts[2].isEmpty else { return nil }
        return (String(parts[2]), expiry)
    }

    /// KEYS: the revoked tokens. ARGV: id, expiry (seconds since 1970), limit, control channel,
    /// announcement. Forgets expired entries, refuses a new one past the limit (-1), keeps the
    /// later of two expiries, and announces it (1). Uses the server's clock.
    static let revokeScript = RedisScript(
        """
        local now = tonumber(redis.call('TIME')[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
        if not current and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
        if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
        redis.call('PUBLISH', ARGV[4], ARGV[5])
        return 1
        """
    )
}
