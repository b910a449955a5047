import Crypto

/// A Lua script run with `EVALSHA` (by its SHA-1, computed here once), falling back to `EVAL`
/// when the server does not know it yet (first use, or Redis restarted); `EVAL` also caches it
/// on the server for the next `EVALSHA`.
public struct RedisScript: Sendable, Equatable {
    public let source: String
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        self.sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}
