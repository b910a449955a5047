/// Where a Redis server is and how to log in: `redis://[[user]:password@]host[:port][/db]`,
/// or, for a master that Redis Sentinel watches,
/// `redis+sentinel://[[user]:password@]sentinel1[:port],sentinel2[:port]/MASTER[/db]`, or, for
/// the master of one hash slot of a Redis Cluster, `redis+cluster://[[user]:password@]node1[:port],node2[:port]`.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    /// The server (with Sentinel: the first sentinel, until a connection resolves the master).
    public var host: String
    public var port: Int
    /// Credentials and database of the server (with Sentinel: of the master; sentinels are
    /// asked without credentials).
    public var user: String?
    public var password: String?
    public var database: Int
    /// Set when the server is the master Sentinel names: every connection asks the sentinels
    /// where it is first.
    public var sentinel: RedisSentinelAddress?
    /// Set when the server is the master serving one hash slot of a Redis Cluster: every
    /// connection asks the cluster (`CLUSTER SHARDS`) which master serves it first.
    public var cluster: RedisClusterAddress?

    public init(host: String = "127.0.0.1", port: Int = 6379, user: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// `text` with the credentials of a `scheme://user:password@host` URL replaced by `***`, for
    /// messages and logs.
    public static func redacting(_ text: String) -> String {
        guard let scheme = text.firstRange(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@") else { return text }
        return String(text[..<scheme.upperBound]) + "***" + String(text[at...])
    }

    /// Parses `redis://…` or `redis+sentinel://…`. `rediss://` (TLS) is refused: this client
    /// speaks plain TCP.
    public init(parsing text: String) throws(RedisError) {
        if text.hasPrefix("rediss://") || text.hasPrefix("rediss+sentinel://") {
            throw RedisError.invalidConfiguration(
                "rediss:// (TLS) is not supported by Herald's Redis client; use redis:// on a trusted network or a TLS tunnel")
        }
        if text.hasPrefix("redis+sentinel://") {
            try self.init(parsingSentinel: text)
            return
        }
        if text.hasPrefix("redis+cluster://") {
            try self.init(parsingCluster: text)
            return
        }
        guard text.hasPrefix("redis://") else {
            throw RedisError.invalidConfiguration("a Redis URL starts with redis:// or redis+sentinel://, got \(Self.redacting(text))")
        }
        try self.init(parsingServer: text)
    }

    private init(parsingServer text: String) throws(RedisError) {
        var rest = Substring(text.dropFirst("redis://".count))
        self.init()
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                self.user = user.isEmpty ? nil : Self.decode(user)
                self.password = Self.decode(credentials[credentials.index(after: colon)...])
            } else {
                self.password = Self.decode(credentials)
            }
        }
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !db.isEmpty {
                guard let number = Int(db), number >= 0 else { throw RedisError.invalidConfiguration("the database in a Redis URL is a number, got \(db)") }
                database = number
            }
        }
        (host, port) = try Self.address(rest, defaultPort: 6379, in: text)
    }

    /// `redis+sentinel://[credentials@]s1[:port],s2[:port]/MASTER[/db]`: parsed as a server URL
    /// would be, the sentinels (port 26379 by default) standing for the host.
    private init(parsingSentinel text: String) throws(RedisError) {
        let rest = Substring(text.dropFirst("redis+sentinel://".count))
        var hosts = rest
        var path = Substring("")
        let at = rest.lastIndex(of: "@")
        let afterCredentials = at.map { rest.index(after: $0) } ?? rest.startIndex
        if let slash = rest[afterCredentials...].firstIndex(of: "/") {
            hosts = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard let name = parts.first, !name.isEmpty, parts.count <= 2 else {
            throw RedisError.invalidConfiguration(
                "a Sentinel URL names the master after the sentinels: redis+sentinel://host:26379,host:26380/mymaster[/db], got \(Self.redacting(text))")
        }
        guard name.utf8.count <= 256, name.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != "%" }) else {
            throw RedisError.invalidConfiguration("the master name in a Sentinel URL is printable ASCII without spaces, got \(name)")
        }
        let credentials = at.map { String(rest[..<$0]) + "@" } ?? ""
        let database = parts.count == 2 ? "/" + String(parts[1]) : ""
        let listed = hosts[afterCredentials...].split(separator: ",", omittingEmptySubsequences: false)
        guard !listed.isEmpty, listed.count <= 16, !listed.contains(where: \.isEmpty) else {
            throw RedisError.invalidConfiguration("a Sentinel URL lists 1 to 16 sentinels separated by commas, got \(Self.redacting(text))")
        }
        var sentinels: [RedisSentinelAddress.Server] = []
        for entry in listed {
            let (host, port) = try Self.address(entry, defaultPort: 26379, in: text)
            sentinels.append(.init(host: host, port: port))
        }
        // Credentials and database as in a server URL; host and port stand in for the master
        // until it is resolved.
        try self.init(parsingServer: "redis://" + credentials + sentinels[0].host + ":" + String(sentinels[0].port) + database)
        sentinel = RedisSentinelAddress(sentinels: sentinels, masterName: String(name))
    }

    /// `redis+cluster://[credentials@]n1[:port],n2[:port][?sharding=channels|none]`: the nodes
    /// to ask first (port 6379 by default); the cluster has only database 0. `sharding=none`
    /// keeps every key in one slot (one master serves Herald); the default spreads room and
    /// user channels over the slots.
    private init(parsingCluster text: String) throws(RedisError) {
        var rest = Substring(text.dropFirst("redis+cluster://".count))
        var sharded = true
        let hostsStart = rest.lastIndex(of: "@").map { rest.index(after: $0) } ?? rest.startIndex
        if let question = rest[hostsStart...].firstIndex(of: "?") {
            switch rest[rest.index(after: question)...] {
            case "sharding=channels": sharded = true
            case "sharding=none": sharded = false
            default:
                throw RedisError.invalidConfiguration(
                    "a Redis Cluster URL takes one option, ?sharding=channels (the default: channels spread over the slots) or ?sharding=none (everything in one slot), got \(Self.redacting(text))"
                )
            }
            rest = rest[..<question]
        }
        let at = rest.lastIndex(of: "@")
        var hosts = rest[(at.map { rest.index(after: $0) } ?? rest.startIndex)...]
        if hosts.hasSuffix("/") || hosts.hasSuffix("/0") { hosts = hosts[..<hosts.lastIndex(of: "/")!] }
        guard !hosts.contains("/") else {
            throw RedisError.invalidConfiguration(
                "a Redis Cluster URL lists nodes only (a cluster has only database 0): redis+cluster://host:6379,host:6380, got \(Self.redacting(text))")
        }
        let listed = hosts.split(separator: ",", omittingEmptySubsequences: false)
        guard !listed.isEmpty, listed.count <= 64, !listed.contains(where: \.isEmpty) else {
            throw RedisError.invalidConfiguration("a Redis Cluster URL lists 1 to 64 nodes separated by commas, got \(Self.redacting(text))")
        }
        var seeds: [RedisSentinelAddress.Server] = []
        for entry in listed {
            let (host, port) = try Self.address(entry, defaultPort: 6379, in: text)
            seeds.append(.init(host: host, port: port))
        }
        let credentials = at.map { String(rest[..<$0]) + "@" } ?? ""
        try self.init(parsingServer: "redis://" + credentials + seeds[0].host + ":" + String(seeds[0].port))
        cluster = RedisClusterAddress(seeds: seeds, sharded: sharded)
    }

    /// `host[:port]` or `[v6]:port`.
    private static func address(_ text: Substring, defaultPort: Int, in url: String) throws(RedisError) -> (String, Int) {
        var rest = text
        var port = defaultPort
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                throw RedisError.invalidConfiguration("invalid port in Redis URL \(Self.redacting(url))")
            }
            port = number
            rest = rest[..<colon]
        }
        return (rest.isEmpty ? "127.0.0.1" : String(rest.filter { $0 != "[" && $0 != "]" }), port)
    }

    /// This URL with the server at `host:port` and no Sentinel (a resolved master).
    public func server(host: String, port: Int) -> RedisURL {
        var url = self
        url.host = host
        url.port = port
        url.sentinel = nil
        url.cluster = nil
        return url
    }

    public var description: String {
        let login = password == nil ? "" : "\(user ?? ""):***@"
        if let cluster {
            return "redis+cluster://\(login)\(cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ","))\(cluster.sharded ? "" : "?sharding=none")"
        }
        if let sentinel {
            return "redis+sentinel://\(login)\(sentinel.sentinels.map { "\($0.host):\($0.port)" }.joined(separator: ","))/\(sentinel.masterName)/\(database)"
        }
        return "redis://\(login)\(host):\(port)/\(database)"
    }

    /// Where the server is, for messages: `host:port`, or the master's name and its sentinels.
    public var location: String {
        if let cluster {
            return
                "the master of slot \(RedisCluster.slot(of: cluster.routingKey)) (Redis Cluster at \(cluster.seeds.map { "\($0.host):\($0.port)" }.joined(separator: ",")))"
        }
        guard let sentinel else { return "\(host):\(port)" }
        return "master \(sentinel.masterName) (Sentinel at \(sentinel.sentinels.map { "\($0.host):\($0.port)" }.joined(separator: ",")))"
    }

    private static func decode(_ text: Substring) -> String {
        // Percent-decoding for passwords with reserved characters.
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"), let high = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), high != utf8.endIndex,
                let low = utf8.index(high, offsetBy: 1, limitedBy: utf8.endIndex), low != utf8.endIndex,
                let value = UInt8(String(decoding: [utf8[high], utf8[low]], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                index = utf8.index(after: low)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The sentinels to ask, and the name of the master they watch (`sentinel monitor NAME …`).
public struct RedisSentinelAddress: Sendable, Equatable {
    public struct Server: Sendable, Hashable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    public var sentinels: [Server]
    public var masterName: String

    public init(sentinels: [Server], masterName: String) {
        self.sentinels = sentinels
        self.masterName = masterName
    }
}

/// Nodes of a Redis Cluster to ask for its slot map, and the key whose hash slot's master a
/// connection is for.
public struct RedisClusterAddress: Sendable, Equatable {
    public var seeds: [RedisSentinelAddress.Server]
    /// Connections go to the master serving this key's slot (a hash tag such as `{herald}`
    /// puts every key that carries it in one slot).
    public var routingKey: String
    /// Whether the channels are spread over the cluster's slots (`?sharding=channels`, the
    /// default) or all of Herald lives in one slot (`?sharding=none`).
    public var sharded: Bool

    public init(seeds: [RedisSentinelAddress.Server], routingKey: String = "", sharded: Bool = true) {
        self.seeds = seeds
        self.routingKey = routingKey
        self.sharded = sharded
    }
}
