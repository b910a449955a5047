public import Herald
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
    public let prefix: String

    public init(prefix: String = "herald") {
        self.prefix = prefix
    }

    public var broadcastChannel: String { prefix + ".all" }
    public func channel(for target: DeliveryTarget) -> String {
        switch target {
        case .all: prefix + ".all"
        case .room(let room): prefix + ".room." + room
        case .user(let user): prefix + ".user." + user
        }
    }
    public func nodeChannel(_ node: String) -> String { prefix + ".node." + node }
    public var controlChannel: String { prefix + ".control" }
    /// Revoked token ids, scored by when their revocation expires (seconds since 1970).
    public var revokedTokensKey: String { prefix + ":revoked-tokens" }

    /// What a channel name addresses.
    enum Destination: Equatable {
        case target(DeliveryTarget)
        case node(String)
        case control
    }

    func destination(of channel: String) -> Destination? {
        guard channel.hasPrefix(prefix), channel.utf8.count > prefix.utf8.count else { return nil }
        let rest = channel.dropFirst(prefix.count)
        if rest == ".all" { return .target(.all) }
        if rest.hasPrefix(".room.") { return .target(.room(String(rest.dropFirst(6)))) }
        if rest.hasPrefix(".user.") { return .target(.user(String(rest.dropFirst(6)))) }
        if rest.hasPrefix(".node.") { return .node(String(rest.dropFirst(6))) }
        if rest == ".control" { return .control }
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
    public func unacknowledgedKey(_ user: String) -> String { prefix + ":unacked:" + user }
    public func unacknowledgedFramesKey(_ user: String) -> String { prefix + ":unacked-frames:" + user }

    public func membersKey(_ room: String) -> String { prefix + ":members:" + room }
    public func roomsOfKey(_ user: String) -> String { prefix + ":rooms-of:" + user }
    /// The rooms of `roomsOfKey` the user joined themselves (`MembershipGrant.user`); the
    /// others were granted by the backend.
    public func ownJoinsKey(_ user: String) -> String { prefix + ":own-joins:" + user }
    /// The user's memberships ended recently (a hash of rooms, expiring), so that a write-back
    /// of memberships Redis lost does not bring them back.
    public func endedKey(_ user: String) -> String { prefix + ":ended:" + user }
    public var roomsKey: String { prefix + ":rooms" }
    public var nodesKey: String { prefix + ":nodes" }
    public var presenceKeyPrefix: String { prefix + ":presence:" }
    /// Each live node's connections and users, as `CONNECTIONS USERS`, by node id (a hash).
    public var nodeTotalsKey: String { prefix + ":node-totals" }
    /// A random value set once for the data set: when it changes, Redis lost its data (a restart
    /// without persistence, a flush) and nodes restore what they hold.
    public var instanceKey: String { prefix + ":instance" }
    /// The `run_id` of the Redis server holding the data set, as the nodes found it when they
    /// connected: a channel's position written on another server may be missing its latest
    /// offsets (a failover, a restart from persistence), so the channel starts a new epoch.
    public var serverKey: String { prefix + ":server" }
    /// The `run_id`s of servers whose writes are all in the data set (a cluster slot that moved
    /// here from a master still up): channels written there keep their epoch.
    public var losslessServersKey: String { prefix + ":server-lossless" }
    public func presenceKey(_ node: String) -> String { presenceKeyPrefix + node }
    /// A counter raised whenever some room's presence may have changed (a membership, a user
    /// online or offline somewhere, a node gone): nodes sending presence events read it once
    /// per window and read rooms' presence only when it moved.
    public var presenceVersionKey: String { prefix + ":presence-version" }
    public var presenceInfoKeyPrefix: String { prefix + ":presence-info:" }
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
