import Synchronization

/// Hands each value to every open `AsyncStream` of a source (the client's messages, its events,
/// a room's messages). Bounded twice: the number of open streams, and each stream's buffer
/// (``Policy``), so an application that stops reading costs a fixed amount of memory.
final class StreamFanOut<Element: Sendable>: Sendable {
    enum Policy: Sendable {
        /// Keep the oldest: a full buffer refuses new values (messages: no reordering, no gap
        /// in what the consumer does get; the refused ones are reported and not acknowledged).
        case oldest(Int)
        /// Keep the newest: a full buffer forgets its oldest value (events: the latest state matters).
        case newest(Int)
    }

    private struct State {
        var streams: [UInt64: AsyncStream<Element>.Continuation] = [:]
        var nextKey: UInt64 = 0
        var finished = false
    }

    private let state = Mutex(State())
    private let policy: Policy
    private let limit: Int

    init(policy: Policy, limit: Int) {
        self.policy = policy
        self.limit = max(1, limit)
    }

    /// A new stream; `nil` when `limit` streams are open already. A stream opened after
    /// ``finish()`` is finished at once.
    func subscribe() -> AsyncStream<Element>? {
        let buffering: AsyncStream<Element>.Continuation.BufferingPolicy =
            switch policy {
            case .oldest(let size): .bufferingOldest(max(1, size))
            case .newest(let size): .bufferingNewest(max(1, size))
            }
        let (stream, continuation) = AsyncStream<Element>.makeStream(bufferingPolicy: buffering)
        let admitted: Bool? = state.withLock { state in
            if state.finished { return nil }
            guard state.streams.count < limit else { return false }
            let key = state.nextKey
            state.nextKey += 1
            state.streams[key] = continuation
            continuation.onTermination = { [weak self] _ in
                _ = self?.state.withLock { $0.streams.removeValue(forKey: key) }
            }
            return true
        }
        switch admitted {
        case nil:
            continuation.finish()
            return stream
        case false?:
            return nil
        case true?:
            return stream
        }
    }

    var isEmpty: Bool { state.withLock { $0.streams.isEmpty } }

    /// Yields `value` to every stream; returns whether at least one took it into its buffer.
    @discardableResult
    func yield(_ value: Element) -> Bool {
        // Yield outside the lock: a stream ending meanwhile runs onTermination, which takes it.
        let streams = state.withLock { Array($0.streams.values) }
        var taken = false
        for stream in streams {
            if case .enqueued = stream.yield(value) { taken = true }
        }
        return taken
    }

    /// Ends every stream, and every stream opened later.
    func finish() {
        let streams = state.withLock { state in
            state.finished = true
            defer { state.streams = [:] }
            return Array(state.streams.values)
        }
        for stream in streams { stream.finish() }
    }
}
