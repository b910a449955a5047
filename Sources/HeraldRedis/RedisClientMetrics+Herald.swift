public import Herald
public import HeraldRedisClient

extension RedisClientMetrics {
    /// The Redis client's measurements under Herald's names (`herald_redis_command_*`).
    public init(_ metrics: HeraldMetrics) {
        self.init(commandDuration: metrics.redisCommandDuration, commandErrors: metrics.redisCommandErrors)
    }
}
