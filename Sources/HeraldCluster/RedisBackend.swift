import Herald
import HeraldRedis
import HeraldRedisClient
public import HeraldServer
public import Logging
import NIOPosix
import ServiceLifecycle

/// How a node joins the cluster of nodes sharing one Redis: what `herald serve --redis` reads.
public struct RedisBackendConfiguration: Sendable {
    /// `redis://[[user]:password@]host[:port][/db]` of the Redis the cluster's nodes share.
    public var url: String
    /// Prefix of Herald's channels and keys in Redis, so several clusters can share one server.
    public var prefix = "herald"
    /// The Redis Stream backends append events to (`nil`: `{prefix}:ingest`); `""` turns the
    /// ingest queue off.
    public var ingestStream: String?
    /// How long an ingest entry may stay pending with a silent node before another claims it.
    public var ingestClaimIdle: Duration = .seconds(30)
    /// Deliveries after which an ingest entry is moved aside to `{stream}:dead`.
    public var ingestMaxAttempts = 5
    /// How long a node that stopped heartbeating (killed, cut off) still counts its users online.
    public var presenceTTL: Duration = .seconds(10)

    public init(url: String) {
        self.url = url
    }
}

/// The composition root of a clustered node: builds the Redis broker, roster and ingest
/// consumer around a hub and hands them to `HeraldServer`, which knows none of them.
public enum RedisBackend {
    /// The event loop of every Redis connection of the process, a thread of its own: a node
    /// saturated by its clients (a reconnect storm) still reads Redis's replies in time, so
    /// its command watchdog, its subscription confirmations and its reconnects to Redis are not
    /// starved by the very load they serve. Shared by every node of the process, never shut down
    /// (like NIO's singleton group).
    public static let eventLoop = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// A node of the cluster sharing `redis`: connects to Redis first.
    /// - Throws: `ConfigurationError` for a bad URL or configuration, `unavailable` when Redis
    ///   cannot be reached.
    public static func server(
        configuration: HeraldConfiguration,
        redis: RedisBackendConfiguration,
        logger: Logger = Logger(label: "herald")
    ) async throws(ConfigurationError) -> HeraldServer {
        var configuration = configuration
        let nodeID = configuration.nodeID ?? HeraldNode.randomNodeID()
        if let problem = HeraldNode.problem(withID: nodeID) { throw ConfigurationError("node id \(nodeID) \(problem)") }
        configuration.nodeID = nodeID
        let url: RedisURL
        do {
            url = try RedisURL(parsing: redis.url)
        } catch {
            throw ConfigurationError("--redis \(RedisURL.redacting(redis.url)): \(error)")
        }
        if url.cluster != nil, redis.prefix.contains(where: { $0 == "{" || $0 == "}" }) {
            throw ConfigurationError(
                "--redis-prefix \(redis.prefix): on a Redis Cluster Herald makes the prefix a hash tag ({\(redis.prefix)}); a prefix with { or } would split Herald's keys over several slots. Use one without braces"
            )
        }
        let hub = HeraldServer.makeHub(configuration: configuration, logger: logger)
        var backplaneConfiguration = RedisBackplane.Configuration(url: url, nodeID: nodeID)
        backplaneConfiguration.prefix = redis.prefix
        backplaneConfiguration.client.metrics = RedisClientMetrics(hub.metrics)
        let backplane = RedisBackplane(configuration: backplaneConfiguration, logger: logger, group: eventLoop)
        var brokerConfiguration = RedisBroker.Configuration()
        brokerConfiguration.history = configuration.history
        let broker = RedisBroker(configuration: brokerConfiguration, backplane: backplane, deliveringTo: hub, logger: logger)
        let roster = RedisRoster(backplane: backplane, limits: configuration.hub, presenceTTL: redis.presenceTTL, notifying: hub, logger: logger)
        let denylist = RedisTokenDenylist(backplane: backplane, limit: configuration.maxRevokedTokens, notifying: hub, logger: logger)
        do {
            await broker.connect()
            try await backplane.connect()
        } catch {
            throw ConfigurationError.unavailable(
                "cannot use Redis at \(url.location): \(error). Check that redis-server runs there and accepts connections, or fix --redis / HERALD_REDIS_URL"
            )
        }
        await roster.heartbeat()
        await denylist.reload()
        // Stopped in reverse: the ingest consumer first, the backplane's connections last.
        var services: [any Service] = [backplane, broker, roster, denylist]
        let stream = redis.ingestStream ?? backplane.layout.sharedPrefix + ":ingest"
        if !stream.isEmpty, url.cluster != nil, RedisCluster.slot(of: stream) != RedisCluster.slot(of: backplane.layout.sharedPrefix) {
            throw ConfigurationError(
                "--ingest-stream \(stream): in a Redis Cluster every key of Herald carries the hash tag \(backplane.layout.sharedPrefix) (to stay in one slot); name the stream \(backplane.layout.sharedPrefix):ingest or another name containing \(backplane.layout.sharedPrefix)"
            )
        }
        if !stream.isEmpty {
            var ingest = IngestConsumer.Configuration(stream: stream)
            ingest.claimIdle = redis.ingestClaimIdle
            ingest.maxAttempts = redis.ingestMaxAttempts
            services.append(IngestConsumer(configuration: ingest, backplane: backplane, broker: broker, logger: logger, metrics: hub.metrics))
        }
        return try await HeraldServer(
            configuration: configuration, hub: hub, broker: broker, roster: roster, denylist: denylist,
            statusBoard: RedisStatusBoard(backplane: backplane), services: services, logger: logger
        )
    }
}
