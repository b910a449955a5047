public import NIOCore

/// Redis Cluster's hash slots, and finding the master that serves one: every connection asks
/// the cluster's nodes in turn for the slot map (`CLUSTER SHARDS`), connects to the master
/// serving the slot of ``RedisClusterAddress/routingKey`` and checks with `ROLE` that it is a
/// master. A connection whose commands are answered `MOVED` or `READONLY` (the slot moved, or
/// the master was made a replica by a failover) is given up, so that the reconnect asks the
/// cluster again; `ASK` (a key already moved by a migration under way) fails the command only.
///
/// This serves clients whose keys all carry one hash tag (Herald's, in cluster mode): one
/// slot, one master at a time, no cross-node routing. The slot map is input like any other:
/// a malformed one is refused and the next node asked.
public enum RedisCluster {
    public static let slotCount = 16_384

    /// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag — the part between
    /// the first `{` and the next `}`, when that is not empty — modulo 16384.
    public static func slot(of key: String) -> Int {
        var key = key
        // Contiguous UTF-8 (almost always already): CRC16 over it without copying.
        return key.withUTF8 { bytes in
            var start = 0
            var end = bytes.count
            if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
                let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
            {
                start = open + 1
                end = close
            }
            return Int(crc16(UnsafeBufferPointer(rebasing: bytes[start..<end]))) % slotCount
        }
    }

    /// A short hash tag whose keys land in `slot` (`{tag}`): for a key per slot.
    public static func tag(ofSlot slot: Int) -> String { slotTags[slot] }

    /// The first base-36 number hashing to each slot (found once: about 170,000 CRCs).
    private static let slotTags: [String] = {
        var tags = [String?](repeating: nil, count: slotCount)
        var missing = slotCount
        var candidate = 0
        while missing > 0 {
            let text = String(candidate, radix: 36)
            let slot = Int(crc16(Array(text.utf8))) % slotCount
            if tags[slot] == nil {
                tags[slot] = text
                missing -= 1
            }
            candidate += 1
        }
        return tags.map { $0! }
    }()

    /// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster computes it.
    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    /// The master serving `slot` in a `CLUSTER SHARDS` reply (RESP3 maps or RESP2 lists):
    /// a node of role `master` and health `online` of the shard whose ranges hold the slot.
    public static func master(of slot: Int, in shards: RESPValue) -> RedisSentinelAddress.Server? {
        guard case .array(let list?) = shards else { return nil }
        for shard in list {
            guard let shardFields = fields(of: shard), case .array(let bounds?)? = shardFields["slots"], bounds.count % 2 == 0,
                case .array(let nodes?)? = shardFields["nodes"]
            else { continue }
            var holds = false
            for index in stride(from: 0, to: bounds.count, by: 2) {
                if case .integer(let low) = bounds[index], case .integer(let high) = bounds[index + 1], low <= slot, slot <= high { holds = true }
            }
            guard holds else { continue }
            if let master = nodes.lazy.compactMap(address(ofMaster:)).first { return master }
        }
        return nil
    }

    /// The master serving each slot (16384 entries, `nil` for a slot no online master serves)
    /// in a `CLUSTER SHARDS` reply; `nil` when the reply names no master at all, or its ranges
    /// add up to more than 8 × 16384 slots (overlapping ranges: not a real cluster's answer).
    public static func slotMasters(in shards: RESPValue) -> [RedisSentinelAddress.Server?]? {
        guard case .array(let list?) = shards else { return nil }
        var map = [RedisSentinelAddress.Server?](repeating: nil, count: slotCount)
        var any = false
        var budget = 8 * slotCount
        for shard in list {
            guard let shardFields = fields(of: shard), case .array(let bounds?)? = shardFields["slots"], bounds.count % 2 == 0,
                case .array(let nodes?)? = shardFields["nodes"], let master = nodes.lazy.compactMap(address(ofMaster:)).first
            else { continue }
            for index in stride(from: 0, to: bounds.count, by: 2) {
                guard case .integer(let low) = bounds[index], case .integer(let high) = bounds[index + 1], 0 <= low, low <= high, high < slotCount
                else { continue }
                budget -= Int(high - low + 1)
                guard budget >= 0 else { return nil }
                for slot in Int(low)...Int(high) { map[slot] = master }
                any = true
            }
        }
        return any ? map : nil
    }

    /// Every online master in a `CLUSTER SHARDS` reply.
    public static func masters(in shards: RESPValue) -> [RedisSentinelAddress.Server] {
        guard case .array(let list?) = shards else { return [] }
        return list.compactMap { shard in
            guard let shardFields = fields(of: shard), case .array(let nodes?)? = shardFields["nodes"] else { return nil }
            return nodes.lazy.compactMap(address(ofMaster:)).first
        }
    }

    /// The address of an online master node entry.
    private static func address(ofMaster entry: RESPValue) -> RedisSentinelAddress.Server? {
        guard let node = fields(of: entry), node["role"]?.string == "master", node["health"]?.string ?? "online" == "online",
            case .integer(let port)? = node["port"], (1...65535).contains(port)
        else { return nil }
        let endpoint = node["endpoint"]?.string ?? ""
        let host = endpoint.isEmpty || endpoint == "?" ? node["ip"]?.string ?? "" : endpoint
        guard (1...255).contains(host.utf8.count), host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        return RedisSentinelAddress.Server(host: host, port: Int(port))
    }

    /// A RESP3 map, or a RESP2 list of alternating names and values, by name.
    private static func fields(of value: RESPValue) -> [String: RESPValue]? {
        var result: [String: RESPValue] = [:]
        switch value {
        case .map(let pairs):
            for pair in pairs { if let name = pair.key.string { result[name] = pair.value } }
        case .array(let items?) where items.count % 2 == 0:
            for index in stride(from: 0, to: items.count, by: 2) { if let name = items[index].string { result[name] = items[index + 1] } }
        default:
            return nil
        }
        return result
    }

    /// Asks the cluster's nodes, in the order given, which master serves the routing key's slot.
    /// - Returns: `url` pointing at that master (credentials kept, no cluster).
    /// - Throws: ``RedisError/transport(_:)`` saying what each node answered, when none named it.
    public static func master(
        of url: RedisURL, in cluster: RedisClusterAddress, on group: any EventLoopGroup, connectTimeout: TimeAmount
    ) async throws(RedisError) -> RedisURL {
        let slot = slot(of: cluster.routingKey)
        var answers: [String] = []
        for seed in cluster.seeds.rotatedRandomly() {
            let reply: RESPValue
            do {
                let connection = try await RedisConnection.connect(
                    to: url.server(host: seed.host, port: seed.port), on: group, connectTimeout: connectTimeout, commandTimeout: .seconds(2))
                do {
                    reply = try await connection.send(RESPCommand("CLUSTER", "SHARDS"))
                } catch {
                    await connection.close()
                    throw error
                }
                await connection.close()
            } catch {
                answers.append("\(seed.host):\(seed.port): \(error)")
                continue
            }
            if let master = master(of: slot, in: reply) { return url.server(host: master.host, port: master.port) }
            answers.append("\(seed.host):\(seed.port) names no online master for slot \(slot)")
        }
        throw RedisError.transport(
            "no node of the Redis Cluster named the master of slot \(slot) (\(answers.joined(separator: "; "))); check the nodes' addresses, and that the cluster is up (CLUSTER INFO)"
        )
    }

    /// Connects to the master serving the routing key's slot, and makes sure it is one.
    static func connectToMaster(
        _ url: RedisURL,
        in cluster: RedisClusterAddress,
        on group: any EventLoopGroup,
        connectTimeout: TimeAmount,
        commandTimeout: TimeAmount?,
        onPush: @escaping @Sendable (RESPValue) -> Void
    ) async throws -> RedisConnection {
        let master = try await master(of: url, in: cluster, on: group, connectTimeout: connectTimeout)
        return try await RedisConnection.connect(
            toMaster: master, on: group, connectTimeout: connectTimeout, commandTimeout: commandTimeout, onPush: onPush,
            namedBy: "the cluster named \(master.host):\(master.port) the master of slot \(slot(of: cluster.routingKey))")
    }

    /// Error codes that mean the connection's server no longer serves the slot as master. Not
    /// `ASK`: during a migration the source still serves the slot, only some keys have moved;
    /// the command fails (the caller retries) and the connection stays, rather than every node
    /// reconnecting to the same master after every command until the move ends.
    static let redirections: Set<String> = ["MOVED", "READONLY"]
}
