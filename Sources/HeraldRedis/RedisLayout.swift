public import Herald
import HeraldRedisClient
import HeraldWire

/// Herald's names in Redis, all under one prefix so several clusters can share a server.
///
/// Channels (pub/sub), as the seed lays them out:
/// - `{prefix}.all`: broadcasts, subscribed by every node;
/// - `{prefix}.room.{room}`: a room's messages, subscribed where a member has a connection;
/// - `{prefix}.user.{user}`: a user's messages and membership changes, subscribed where the
///   user has a connection;
/// - `{prefix}.node.{node}`: acknowledgements addressed to one node;
/// - `{prefix}.control`: cluster-wide control (revoked tokens), subscribed by every node.
///
/// Keys: `{prefix}:members:{room}` and `{prefix}:rooms-of:{user}` (sets), `{prefix}:rooms` (the
/// set of rooms), `{prefix}:nodes` (live nodes, scored by when they expire) and
/// `{prefix}:presence:{node}` (a node's connections per user, expiring with the node).
public struct RedisLayout: Sendable, Equatable {
    /// The prefix of room and user channels and of their keys.
    public let prefix: String
    /// The prefix of what the whole cluster shares: broadcast, node and control channels, the
    /// roster's keys. `{prefix}` on a sharded Redis Cluster (one slot), else ``prefix``.
    public let sharedPrefix: String
    /// Whether room and user channels are spread over a Redis Cluster's slots: each channel's
    /// name carries its own hash tag (`herald.room.{lobby}`), so that its keys (position,
    /// history, idempotency, unacknowledged messages) share the slot of its shard channel.
    public let sharded: Bool

    public init(prefix: String = "herald") {
        self.prefix = prefix
        self.sharedPrefix = prefix
        self.sharded = false
    }

    /// The layout of a sharded Redis Cluster; `prefix` must hold no braces.
    public init(shardedWithPrefix prefix: String) {
        self.prefix = prefix
        self.sharedPrefix = "{" + prefix + "}"
        self.sharded = true
    }

    public var broadcastChannel: String { sharedPrefix + ".all" }
    public func channel(for target: DeliveryTarget) -> String {
        switch target {
        case .all: sharedPrefix + ".all"
        case .room(let room): prefix + ".room." + (sharded ? Self.tagged(room) : room)
        case .user(let user): prefix + ".user." + (sharded ? Self.tagged(user) : user)
        }
    }
    public func nodeChannel(_ node: String) -> String { sharedPrefix + ".node." + node }
    public var controlChannel: String { sharedPrefix + ".control" }
    /// Revoked token ids, scored by when their revocation expires (seconds since 1970).
    public var revokedTokensKey: String { sharedPrefix + ":revoked-tokens" }

    /// A name as a hash tag: `{name}`, or for a name holding a `}` (which would end the tag
    /// early, or leave it empty) `{#HASH}name` with a hash of the name.
    static func tagged(_ name: String) -> String {
        guard name.utf8.contains(UInt8(ascii: "}")) else { return "{" + name + "}" }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "{#" + String(hash, radix: 16) + "}" + name
    }

    /// The name in a tagged channel suffix (``tagged(_:)``).
    static func untagged(_ text: Substring) -> String? {
        guard text.first == "{", let close = text.firstIndex(of: "}") else { return nil }
        let tag = text[text.index(after: text.startIndex)..<close]
        let rest = text[text.index(after: close)...]
        if rest.isEmpty { return tag.isEmpty ? nil : String(tag) }
        return tag.first == "#" ? String(rest) : nil
    }

    /// What a channel name addresses.
    enum Destination: Equatable {
        case target(DeliveryTarget)
        case node(String)
        case control
    }

    func destination(of channel: String) -> Destination? {
        if channel.hasPrefix(sharedPrefix) {
            let rest = channel.dropFirst(sharedPrefix.count)
            if rest == ".all" { return .target(.all) }
            if rest.hasPrefix(".node."), rest.count > 6 { return .node(String(rest.dropFirst(6))) }
            if rest == ".control" { return .control }
        }
        guard channel.hasPrefix(prefix), channel.utf8.count > prefix.utf8.count else { return nil }
        let rest = channel.dropFirst(prefix.count)
        for (marker, make) in [(".room.", DeliveryTarget.room), (".user.", DeliveryTarget.user)] where rest.hasPrefix(marker) {
            let name = rest.dropFirst(marker.count)
            guard sharded else { return .target(make(String(name))) }
            return Self.untagged(name).map { .target(make($0)) }
        }
        return nil
    }

    /// A room's or user's stream position (a hash: epoch, offset).
    public func streamKey(_ target: DeliveryTarget) -> String { prefix + ":stream:" + channel(for: target) }
    /// A room's or user's history (a Redis Stream; entry ids are `OFFSET-1`).
    public func historyKey(_ target: DeliveryTarget) -> String { prefix + ":history:" + channel(for: target) }

    /// Marks an idempotency key as used for a target (expires with the history TTL).
    public func idempotencyKey(_ target: DeliveryTarget, _ key: String) -> String {
        // The channel's length first: a channel and a key containing ':' cannot collide.
        let channel = channel(for: target)
        return prefix + ":once:" + String(channel.utf8.count) + ":" + channel + ":" + key
    }

    /// A user's unacknowledged messages: `EPOCH:OFFSET` scored by expiry, and their frames.
    /// (Sharded: beside the user's channel, in its slot.)
    public func unacknowledgedKey(_ user: String) -> String { prefix + ":unacked:" + unacknowledgedSuffix(user) }
    public func unacknowledgedFramesKey(_ user: String) -> String { prefix + ":unacked-frames:" + unacknowledgedSuffix(user) }
    private func unacknowledgedSuffix(_ user: String) -> String { sharded ? channel(for: .user(user)) : user }

    public func membersKey(_ room: String) -> String { sharedPrefix + ":members:" + room }
    public func roomsOfKey(_ user: String) -> String { sharedPrefix + ":rooms-of:" + user }
    /// The rooms of `roomsOfKey` the user joined themselves (`MembershipGrant.user`); the
    /// others were granted by the backend.
    public func ownJoinsKey(_ user: String) -> String { sharedPrefix + ":own-joins:" + user }
    /// The user's memberships ended recently (a hash of rooms, expiring), so that a write-back
    /// of memberships Redis lost does not bring them back.
    public func endedKey(_ user: String) -> String { sharedPrefix + ":ended:" + user }
    public var roomsKey: String { sharedPrefix + ":rooms" }
    public var nodesKey: String { sharedPrefix + ":nodes" }
    public var presenceKeyPrefix: String { sharedPrefix + ":presence:" }
    /// Each live node's connections and users, as `CONNECTIONS USERS`, by node id (a hash).
    public var nodeTotalsKey: String { sharedPrefix + ":node-totals" }
    /// A random value set once for the data set: when it changes, Redis lost its data (a restart
    /// without persistence, a flush) and nodes restore what they hold.
    public var instanceKey: String { sharedPrefix + ":instance" }
    /// The `run_id` of the Redis server holding the data set, as the nodes found it when they
    /// connected: a channel's position written on another server may be missing its latest
    /// offsets (a failover, a restart from persistence), so the channel starts a new epoch.
    public var serverKey: String { sharedPrefix + ":server" }
    /// The `run_id`s of servers whose writes are all in the data set (a cluster slot that moved
    /// here from a master still up): channels written there keep their epoch.
    public var losslessServersKey: String { sharedPrefix + ":server-lossless" }

    /// The server key and lossless servers key that `target`'s scripts check: the shared ones,
    /// or on a sharded cluster the ones of the target's slot (a key per slot, in that slot).
    public func serverKeys(for target: DeliveryTarget) -> (server: String, lossless: String) {
        guard sharded, target != .all else { return (serverKey, losslessServersKey) }
        return serverKeys(forSlot: RedisCluster.slot(of: channel(for: target)))
    }

    /// The server keys of one slot of a sharded cluster.
    public func serverKeys(forSlot slot: Int) -> (server: String, lossless: String) {
        let tag = "{" + RedisCluster.tag(ofSlot: slot) + "}"
        return (prefix + ":server:" + tag, prefix + ":server-lossless:" + tag)
    }
    public func presenceKey(_ node: String) -> String { presenceKeyPrefix + node }
    /// A counter raised whenever some room's presence may have changed (a membership, a user
    /// online or offline somewhere, a node gone): nodes sending presence events read it once
    /// per window and read rooms' presence only when it moved.
    public var presenceVersionKey: String { sharedPrefix + ":presence-version" }
    /// The rooms whose presence changed, by the version that changed them (a sorted set).
    public var presenceChangeLogKey: String { presenceVersionKey + ":rooms" }
    /// The version below which the change log lost entries.
    public var presenceChangeFloorKey: String { presenceVersionKey + ":floor" }
    /// The last version at which any room's presence may have changed.
    public var presenceAnyChangeKey: String { presenceVersionKey + ":all" }
    /// The keys of the presence version, in the order the roster's scripts take them:
    /// version, change log, floor, any change.
    public var presenceVersionKeys: [String] { [presenceVersionKey, presenceChangeLogKey, presenceChangeFloorKey, presenceAnyChangeKey] }
    public var presenceInfoKeyPrefix: String { sharedPrefix + ":presence-info:" }
    /// The presence info (token `info` claims) of the users connected to `node`, a hash that
    /// lives and expires with the node's presence hash.
    public func presenceInfoKey(_ node: String) -> String { presenceInfoKeyPrefix + node }
}

/// A membership change as it travels on a user's channel, with who to acknowledge it to:
/// `!{origin node}\n{token}\n{+|~|-}{room}` (`+` a join the backend granted, `~` a join the
/// user made, `-` a leave). Message frames on the same channel are JSON objects
/// and start with `{`, so the first byte tells them apart.
/// The backend's order to close a user's connections, on the user's channel (every node holding
/// one hears it): `!{origin node}\n{token}\nx{close code}\n{reason}`.
struct DisconnectNotice: Equatable {
    var origin: String
    var token: String
    var code: CloseCode
    var reason: String

    func encoded() -> String {
        "!" + origin + "\n" + token + "\nx" + String(code.rawValue) + "\n" + reason
    }

    init(origin: String, token: String, code: CloseCode, reason: String) {
        self.origin = origin
        self.token = token
        self.code = code
        self.reason = reason
    }

    init?(payload: String) {
        guard payload.hasPrefix("!") else { return nil }
        let parts = payload.dropFirst().split(separator: "\n", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 4, parts[2].first == "x", let raw = UInt16(parts[2].dropFirst()), let code = CloseCode(rawValue: raw) else { return nil }
        self.origin = String(parts[0])
        self.token = String(parts[1])
        self.code = code
        self.reason = String(parts[3])
    }
}

struct MembershipNotice: Equatable {
    var origin: String
    var token: String
    var change: MembershipChange

    func encoded() -> String {
        "!" + origin + "\n" + token + "\n" + Self.sign(of: change) + change.room
    }

    static func sign(of change: MembershipChange) -> String {
        guard change.isMember else { return "-" }
        return change.grant == .user ? "~" : "+"
    }

    init(origin: String, token: String, change: MembershipChange) {
        self.origin = origin
        self.token = token
        self.change = change
    }

    init?(user: String, payload: String) {
        guard payload.hasPrefix("!") else { return nil }
        let parts = payload.dropFirst().split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let sign = parts[2].first, sign == "+" || sign == "~" || sign == "-", parts[2].count > 1 else { return nil }
        self.origin = String(parts[0])
        self.token = String(parts[1])
        self.change = MembershipChange(user: user, room: String(parts[2].dropFirst()), isMember: sign != "-", grant: sign == "~" ? .user : .backend)
    }
}
