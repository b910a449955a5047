/// How long to wait before the next connection attempt (docs/protocol.md, "Overload: come
/// back later"): clients that all lost the same node must not come back in step.
public enum ReconnectDelay {
    /// Full jitter: random in `0..<min(cap, base * 2^attempt)`, as herald.js's `backoffDelay`.
    public static func backoff(attempt: Int, base: Duration, cap: Duration, random: () -> Double) -> Duration {
        let exponent = min(max(attempt, 0), 30)
        let ceiling = min(cap, base * (1 << exponent))
        let fraction = min(max(random(), 0), 0.999_999_999)
        return .nanoseconds(Int64(Double(ceiling / .nanoseconds(1)) * fraction))
    }

    /// The server's hint in a 1013 close reason (`retry in N s: …`) jittered by a factor of 0.5
    /// to 1.5; `nil` when the reason has no hint.
    public static func hint(inCloseReason reason: String, random: () -> Double) -> Duration? {
        guard reason.hasPrefix("retry in ") else { return nil }
        var rest = reason.dropFirst("retry in ".count)
        let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard !number.isEmpty, let seconds = Double(number), seconds.isFinite else { return nil }
        rest = rest.dropFirst(number.count)
        if rest.first == " " { rest = rest.dropFirst() }
        guard rest.first == "s", rest.dropFirst().first.map({ !$0.isLetter && !$0.isNumber }) ?? true else { return nil }
        let fraction = min(max(random(), 0), 1)
        return .milliseconds(Int64(seconds * 1000 * (0.5 + fraction)))
    }
}
