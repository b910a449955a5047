public import NIOCore
import Synchronization

/// Where each node posts a snapshot of its figures (an opaque JSON object, for the status
/// page) and reads every live node's: the node itself on its own, every node of the cluster
/// through Redis.
public protocol StatusBoard: Sendable {
    /// Posts `node`'s latest snapshot, kept for `ttl` unless posted again.
    func post(node: String, snapshot: ByteBuffer, ttl: Duration) async
    /// The latest snapshot of each node that posted within its TTL, by node id (at most
    /// ``maxNodes``). Fails soft: a board it cannot read answers what it has (possibly nothing).
    func snapshots() async -> [String: ByteBuffer]
}

extension StatusBoard {
    /// Snapshots read at most: a cluster larger than this shows its first nodes by id.
    public static var maxNodes: Int { 256 }
}

/// The board of a node on its own, in memory.
public final class LocalStatusBoard: StatusBoard {
    private let posted = Mutex<[String: (snapshot: ByteBuffer, expires: ContinuousClock.Instant)]>([:])

    public init() {}

    public func post(node: String, snapshot: ByteBuffer, ttl: Duration) async {
        let now = ContinuousClock.now
        posted.withLock { posted in
            posted = posted.filter { $0.value.expires > now }
            if posted.count < Self.maxNodes || posted[node] != nil { posted[node] = (snapshot, now + ttl) }
        }
    }

    public func snapshots() async -> [String: ByteBuffer] {
        let now = ContinuousClock.now
        return posted.withLock { $0.filter { $0.value.expires > now }.mapValues(\.snapshot) }
    }
}
