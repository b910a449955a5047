public import Herald
import HeraldRedisClient
import HeraldWire
public import NIOCore

/// The status board in Redis: each node's snapshot under `{prefix}:status:NODE` (expiring),
/// and the nodes by last post time in the sorted set `{prefix}:status-nodes`.
public final class RedisStatusBoard: StatusBoard {
    private let backplane: RedisBackplane

    public init(backplane: RedisBackplane) {
        self.backplane = backplane
    }

    private var nodesKey: String { backplane.layout.sharedPrefix + ":status-nodes" }
    private func snapshotKey(_ node: String) -> String { backplane.layout.sharedPrefix + ":status:" + node }

    public func post(node: String, snapshot: ByteBuffer, ttl: Duration) async {
        let now = WallClock.millisecondsSince1970()
        let milliseconds = max(1, ttl.components.seconds * 1000 + ttl.components.attoseconds / 1_000_000_000_000_000)
        // One round trip; a board that cannot be written is only a stale page, never an error.
        let replies = backplane.client.submit(pipeline: [
            .command(
                RESPCommand(arguments: [
                    ByteBuffer(string: "SET"), ByteBuffer(string: snapshotKey(node)), snapshot, ByteBuffer(string: "PX"),
                    ByteBuffer(string: String(milliseconds)),
                ])),
            .command(RESPCommand("ZADD", nodesKey, String(now), node)),
            .command(RESPCommand("ZREMRANGEBYSCORE", nodesKey, "-inf", String(now - milliseconds))),
        ])
        for reply in replies { _ = try? await reply.get() }
    }

    public func snapshots() async -> [String: ByteBuffer] {
        let now = WallClock.millisecondsSince1970()
        guard case .array(let names?) = try? await backplane.client.send(RESPCommand("ZRANGEBYSCORE", nodesKey, String(now - 60_000), "+inf")) else {
            return [:]
        }
        let nodes = names.compactMap(\.string).filter(Self.isNodeID).sorted().prefix(Self.maxNodes)
        guard !nodes.isEmpty, case .array(let values?) = try? await backplane.client.send(RESPCommand("MGET", nodes.map(snapshotKey))) else { return [:] }
        var snapshots: [String: ByteBuffer] = [:]
        for (node, value) in zip(nodes, values) {
            // Redis is input too: only a JSON object goes into the page's answer.
            // and one that names the node it is stored under (no entry can pose as another node).
            guard case .bulkString(let bytes?) = value, let object = try? JSONObject(parsing: bytes), case .success(let named?) = object.string("node"),
                named == node
            else {
                continue
            }
            snapshots[node] = bytes
        }
        return snapshots
    }

    /// Node ids as `herald serve` accepts them (1 to 64 of letters, digits, `-`, `_`, `.`).
    private static func isNodeID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                    || byte == UInt8(ascii: ".")
            }
    }
}
