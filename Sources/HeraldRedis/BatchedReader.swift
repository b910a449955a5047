import DequeModule
import HeraldRedisClient
public import NIOCore
import Synchronization

/// Per-key reads (a user's rooms, a user's unacknowledged messages) gathered into batches, so a
/// storm of N connects costs about N / ``maxBatch`` script calls instead of N commands each
/// answered on its own.
///
/// No timer and no added latency: a request finds a free slot (at most ``maxInFlight`` batches
/// at Redis at once) and is sent at once, alone; requests arriving while every slot is busy
/// wait for the next batch, which leaves as soon as a slot frees. Requests for one key waiting
/// together share one read.
///
/// Bounded: one entry per distinct key waiting, and every waiting key belongs to a connection
/// being set up (bounded by the node's connection limit). Each batch is bounded by Redis's
/// command timeout: a failed batch fails its requests, and the next one is tried.
public final class BatchedReader<Value: Sendable>: Sendable {
    /// Reads the values of `keys`, in their order.
    public typealias Read = @Sendable (_ keys: [String]) -> EventLoopFuture<[Value]>

    public let maxBatch: Int
    public let maxInFlight: Int
    private let read: Read
    private let state = Mutex(State())

    private struct State {
        var waiting: [String: [EventLoopPromise<Value>]] = [:]
        var order = Deque<String>()
        var inFlight = 0
    }

    public init(maxBatch: Int = 256, maxInFlight: Int = 4, read: @escaping Read) {
        self.maxBatch = max(1, maxBatch)
        self.maxInFlight = max(1, maxInFlight)
        self.read = read
    }

    /// The value of `key`, completed on `loop`.
    public func value(of key: String, on loop: any EventLoop) -> EventLoopFuture<Value> {
        let promise = loop.makePromise(of: Value.self)
        let sendNow = state.withLock { state -> Bool in
            if state.waiting[key] == nil { state.order.append(key) }
            state.waiting[key, default: []].append(promise)
            guard state.inFlight < maxInFlight else { return false }
            state.inFlight += 1
            return true
        }
        if sendNow { sendNextBatch() }
        return promise.futureResult
    }

    /// Requests waiting for a batch (for tests and statistics).
    public var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Sends the next batch in this slot, and again when it is answered, until nothing waits.
    private func sendNextBatch() {
        let batch: [(key: String, promises: [EventLoopPromise<Value>])] = state.withLock { state in
            var batch: [(String, [EventLoopPromise<Value>])] = []
            while batch.count < maxBatch, let key = state.order.popFirst() {
                batch.append((key, state.waiting.removeValue(forKey: key) ?? []))
            }
            if batch.isEmpty { state.inFlight -= 1 }
            return batch
        }
        guard !batch.isEmpty else { return }
        read(batch.map(\.key)).whenComplete { [self] result in
            switch result {
            case .success(let values) where values.count == batch.count:
                for (entry, value) in zip(batch, values) {
                    for promise in entry.promises { promise.succeed(value) }
                }
            case .success(let values):
                let error = RedisError.unexpectedReply("a batched read of \(batch.count) keys was answered with \(values.count) values")
                for entry in batch { for promise in entry.promises { promise.fail(error) } }
            case .failure(let error):
                for entry in batch { for promise in entry.promises { promise.fail(error) } }
            }
            sendNextBatch()
        }
    }
}

/// Presence deltas gathered per user until the next batch leaves: a connect and a disconnect
/// of one user in between cancel out, and a storm of N connects costs about N / `maxBatch`
/// script calls. Like ``BatchedReader``: sent at once when a slot is free, no timer.
///
/// Bounded: one entry per user whose count changed since the last batch left.
final class DeltaBatcher: Sendable {
    typealias Send = @Sendable (_ deltas: [(String, Int)]) -> EventLoopFuture<Void>

    private let maxBatch: Int
    private let maxInFlight: Int
    private let send: Send
    private let state = Mutex(State())

    private struct State {
        var deltas: [String: Int] = [:]
        var inFlight = 0
    }

    init(maxBatch: Int = 512, maxInFlight: Int = 2, send: @escaping Send) {
        self.maxBatch = max(1, maxBatch)
        self.maxInFlight = max(1, maxInFlight)
        self.send = send
    }

    func add(_ delta: Int, for key: String) {
        let sendNow = state.withLock { state -> Bool in
            let sum = state.deltas[key, default: 0] + delta
            state.deltas[key] = sum == 0 ? nil : sum
            guard !state.deltas.isEmpty, state.inFlight < maxInFlight else { return false }
            state.inFlight += 1
            return true
        }
        if sendNow { sendNextBatch() }
    }

    private func sendNextBatch() {
        let batch: [(String, Int)] = state.withLock { state in
            var batch: [(String, Int)] = []
            batch.reserveCapacity(min(maxBatch, state.deltas.count))
            var index = state.deltas.startIndex
            while batch.count < maxBatch, index != state.deltas.endIndex {
                batch.append((state.deltas[index].key, state.deltas[index].value))
                index = state.deltas.index(after: index)
            }
            for (key, _) in batch { state.deltas[key] = nil }
            if batch.isEmpty { state.inFlight -= 1 }
            return batch
        }
        guard !batch.isEmpty else { return }
        send(batch).whenComplete { [self] _ in sendNextBatch() }
    }
}
