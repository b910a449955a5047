/// Polls `condition` (state in another process, no event to await), bounded by `seconds`.
public func waitUntil(_ what: String, within seconds: Double = 10, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw RedisTestFailure("never happened within \(seconds) s: \(what)")
}
