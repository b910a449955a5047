public import NIOCore

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
///
/// One per connection, touched only on its event loop, so a plain value type.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var updated: NIODeadline

    public init(rate: Double, burst: Int, now: NIODeadline = .now()) {
        self.rate = rate
        self.burst = Double(burst)
        self.tokens = Double(burst)
        self.updated = now
    }

    /// Takes one token; `false` when the bucket is empty.
    public mutating func take(now: NIODeadline = .now()) -> Bool {
        let elapsed = Double((now - updated).nanoseconds) / 1e9
        if elapsed > 0 {
            tokens = min(burst, tokens + elapsed * rate)
            updated = now
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
