public import CoreMetrics
import NIOCore

/// Where a ``RedisClient`` reports its commands, through swift-metrics: the time from sending a
/// command to its reply, and the commands that failed. The names are the caller's (several
/// clients of one application usually share one pair).
public struct RedisClientMetrics: Sendable {
    /// Seconds from sending to the reply, errors included.
    public var commandDuration: Timer
    /// Error replies, timeouts, lost connections and commands refused while disconnected.
    public var commandErrors: Counter

    public init(commandDuration: Timer, commandErrors: Counter) {
        self.commandDuration = commandDuration
        self.commandErrors = commandErrors
    }

    /// Times `reply` from now and counts it when it fails.
    func observe(_ reply: EventLoopFuture<RESPValue>) {
        let start = NIODeadline.now()
        let duration = commandDuration
        let errors = commandErrors
        reply.whenComplete { result in
            duration.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
            if case .failure = result { errors.increment() }
        }
    }
}
