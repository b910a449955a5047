import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Revoked credentials (token ids, `jti`) shared by the nodes of a cluster, each until an
/// expiry: a token revoked here is refused at connect and at refresh on every node, and every
/// connection using it is closed.
///
/// ``isRevoked(_:)`` is called on every connect and answers from memory, never from a store:
/// an implementation backed by a shared store keeps a copy in memory, told of each revocation
/// and reloaded after it may have missed some. Bounded: at ``limit`` live entries a revocation
/// is refused (``HubError`` with a limit), never dropped.
public protocol TokenDenylist: Sendable {
    /// Revokes `id` until `expiry` (seconds since 1970, UTC): stored, then announced to every
    /// node, whose ``DeliverySink/credentialsRevoked(_:)`` closes the connections using it.
    func revoke(_ id: String, until expiry: Int64) async throws(HubError)

    /// Whether `id` is revoked now.
    func isRevoked(_ id: String) -> Bool

    /// The most entries held at once.
    var limit: Int { get }
}

/// The denylist of a single node, in memory.
public final class LocalTokenDenylist: TokenDenylist {
    public let limit: Int
    private let sink: any DeliverySink
    private let entries = RevokedTokens()

    public init(limit: Int = 100_000, notifying sink: any DeliverySink) {
        self.limit = limit
        self.sink = sink
    }

    public func revoke(_ id: String, until expiry: Int64) async throws(HubError) {
        try entries.insert(id, until: expiry, limit: limit)
        sink.credentialsRevoked([id])
    }

    public func isRevoked(_ id: String) -> Bool {
        entries.contains(id)
    }
}

/// Token ids and their expiries, pruned of the expired ones as entries are added (a class
/// behind a lock: a denylist and its store's listener share it).
public final class RevokedTokens: Sendable {
    private let expiries = Mutex<[String: Int64]>([:])

    public init() {}

    /// Adds or extends `id`. Throws ``HubError`` (a limit) when `limit` live entries are held.
    public func insert(_ id: String, until expiry: Int64, now: Int64 = RevokedTokens.now(), limit: Int) throws(HubError) {
        try expiries.withLock { expiries throws(HubError) in
            if expiries.count >= limit { expiries = expiries.filter { $0.value > now } }
            guard expiries[id] != nil || expiries.count < limit else { throw HubError.denylistFull(limit: limit) }
            expiries[id] = max(expiries[id] ?? 0, expiry)
        }
    }

    /// Adds what a reload from the shared store found, keeping the later expiry of each id and
    /// forgetting only expired entries (never replacing: a revocation announced while the
    /// reload was under way must not be lost). Returns the ids it did not hold.
    @discardableResult
    public func merge(_ entries: [String: Int64], now: Int64 = RevokedTokens.now()) -> Set<String> {
        expiries.withLock { expiries in
            expiries = expiries.filter { $0.value > now }
            var added: Set<String> = []
            for (id, expiry) in entries where expiry > now {
                if let current = expiries[id] {
                    expiries[id] = max(current, expiry)
                } else {
                    expiries[id] = expiry
                    added.insert(id)
                }
            }
            return added
        }
    }

    public func contains(_ id: String, now: Int64 = RevokedTokens.now()) -> Bool {
        guard let expiry = expiries.withLock({ $0[id] }) else { return false }
        return expiry > now
    }

    public var count: Int { expiries.withLock { $0.count } }

    /// Seconds since 1970, UTC.
    public static func now() -> Int64 { Int64(time(nil)) }
}
