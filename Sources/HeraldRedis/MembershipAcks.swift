import NIOCore
import Synchronization

/// Membership changes this node sent, waiting for the nodes that hold the user's connections
/// to confirm they applied them.
///
/// The number of confirmations to expect is what `PUBLISH` returned (the nodes subscribed to
/// the user's channel); confirmations may arrive before that number does. Every wait is
/// bounded by `timeout` and the number of waits by `limit` (past it, changes are not awaited).
final class MembershipAcks: Sendable {
    private let timeout: TimeAmount
    private let limit: Int
    private let nextToken = Atomic<UInt64>(0)
    private let pending = Mutex<[String: Pending]>([:])

    struct Pending {
        var expected: Int?
        var received = 0
        let promise: EventLoopPromise<Bool>
        var timer: Scheduled<Void>?
    }

    init(timeout: TimeAmount, limit: Int = 10_000) {
        self.timeout = timeout
        self.limit = limit
    }

    /// A new token, and the future that tells whether every node confirmed in time (`false`
    /// after the timeout, or when too many changes are already waiting).
    func expect(on loop: any EventLoop) -> (token: String, confirmed: EventLoopFuture<Bool>) {
        let token = String(nextToken.add(1, ordering: .relaxed).newValue, radix: 36)
        let promise = loop.makePromise(of: Bool.self)
        let admitted = pending.withLock { state in
            guard state.count < limit else { return false }
            state[token] = Pending(promise: promise)
            return true
        }
        guard admitted else {
            promise.succeed(false)
            return (token, promise.futureResult)
        }
        let timer = loop.scheduleTask(in: timeout) { [self] in finish(token, confirmed: false) }
        pending.withLock { $0[token]?.timer = timer }
        return (token, promise.futureResult)
    }

    /// `PUBLISH` said how many nodes received the change.
    func expectConfirmations(_ count: Int, for token: String) {
        let done = pending.withLock { state -> Bool in
            guard var entry = state[token] else { return false }
            entry.expected = count
            state[token] = entry
            return entry.received >= count
        }
        if done { finish(token, confirmed: true) }
    }

    /// A node confirmed.
    func confirmed(_ token: String) {
        let done = pending.withLock { state -> Bool in
            guard var entry = state[token] else { return false }
            entry.received += 1
            state[token] = entry
            return entry.expected.map { entry.received >= $0 } ?? false
        }
        if done { finish(token, confirmed: true) }
    }

    /// Stops waiting (the change was not made).
    func cancel(_ token: String) { finish(token, confirmed: false) }

    private func finish(_ token: String, confirmed: Bool) {
        guard let entry = pending.withLock({ $0.removeValue(forKey: token) }) else { return }
        entry.timer?.cancel()
        entry.promise.succeed(confirmed)
    }
}
