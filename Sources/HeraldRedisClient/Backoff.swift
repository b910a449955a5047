/// Delays between reconnection attempts: capped exponential backoff with full jitter, so many
/// nodes that lost the same Redis do not reconnect in step.
public struct Backoff: Sendable {
    public var first: Duration
    public var cap: Duration
    private var current: Duration

    public init(first: Duration = .milliseconds(50), cap: Duration = .seconds(2)) {
        self.first = first
        self.cap = cap
        self.current = first
    }

    /// The next delay: random in (0, current], then the current doubles up to the cap.
    public mutating func next() -> Duration {
        let nanoseconds = Int64(current / .nanoseconds(1))
        defer { current = min(current * 2, cap) }
        return .nanoseconds(Int64.random(in: 1...max(1, nanoseconds)))
    }

    /// After a success: start again from `first`.
    public mutating func reset() { current = first }
}
