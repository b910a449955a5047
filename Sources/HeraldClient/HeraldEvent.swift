public import HeraldWire

/// The server's `welcome`: who the connection is and how often the server pings.
public struct Welcome: Sendable, Equatable {
    /// The authenticated user id.
    public let user: String
    /// This connection's id (the same after a token refresh, a new one after a reconnect).
    public let connection: String
    /// The node that holds the connection.
    public let node: String
    /// Seconds between the server's pings.
    public let heartbeat: Int
    /// When the token expires (seconds since 1970), when it has `exp`.
    public let expires: Int64?
    /// The rooms (names, `prefix*`) whose presence events the server sends, when asked for.
    public var presenceEvents: [String] = []

    /// Whether the server sends the presence events of `room`.
    public func hasPresenceEvents(_ room: String) -> Bool {
        presenceEvents.contains { $0.hasSuffix("*") ? room.hasPrefix($0.dropLast()) : $0 == room }
    }
}

/// A room's presence as the server's presence events keep it: the state sent after each join,
/// then every change (coalesced by the server over its presence window).
public struct PresenceUpdate: Sendable, Equatable {
    public let room: String
    /// The room's members, sorted.
    public let members: [String]
    /// The members online anywhere in the cluster, sorted.
    public let online: [String]
    /// The token `info` claims the server told of, by user.
    public let info: [String: [String: String]]
    /// What changed; `nil` for the state after a join.
    public let change: PresenceChange?
}

/// One `presence_change`: names that joined, left, came online or went offline within one
/// window. A member who left while online is in ``left`` and ``offline``. ``omitted`` counts
/// names the server left out of a mass change (ask ``HeraldRoom/presence()`` for all).
public struct PresenceChange: Sendable, Equatable {
    public let joined: [String]
    public let left: [String]
    public let online: [String]
    public let offline: [String]
    public let omitted: Int
}

/// Missed messages could not all be replayed (`recovered:false`): reload them from the
/// application's own store. The client carries on from ``latest``.
public struct RecoveryFailure: Sendable, Equatable {
    /// The room, or the user channel.
    public let channel: Channel
    /// The server's reason: `history_expired`, `epoch_changed`, `offset_ahead`, `invalid_position`.
    public let reason: String
    /// The channel's latest position, from which delivery continues.
    public let latest: StreamPosition?
}

/// Something the application may want to know; none of it needs an answer.
public enum HeraldEvent: Sendable {
    /// A connection attempt starts (`attempt` counts attempts since the last healthy connection).
    case connecting(url: String, attempt: Int)
    /// A `welcome` arrived: the client re-joins its rooms and sends queued requests.
    case connected(Welcome)
    /// The connection is gone; the next attempt starts after `retryIn`. `closeCode` is `nil` when
    /// there was no close frame (network failure, refused connection).
    case disconnected(closeCode: UInt16?, reason: String, retryIn: Duration)
    /// The client stopped: `nil` when ``HeraldClient/run()`` was cancelled, otherwise why.
    case stopped(HeraldClientError?)
    /// A channel could not be recovered after a reconnect.
    case recoveryFailed(RecoveryFailure)
    /// The server changed a membership unasked: `left` with reason `revoked` (the token no longer
    /// allows the room), `joined` with `restored`.
    case membership(room: String, joined: Bool, reason: String?)
    /// A joined room's presence changed, or its state arrived after a join (presence events).
    case presence(PresenceUpdate)
    /// The server warned that the token expires at `expires` (seconds since 1970); a token
    /// provider is asked for a new one.
    case tokenExpiring(expires: Int64?)
    /// The connection now runs on a new token, valid until `expires`.
    case tokenRefreshed(expires: Int64?)
    /// A message no stream took (no stream open, or every buffer full): it was not acknowledged.
    case messageDropped(HeraldMessage)
    /// Odd server input, a failed background request (re-join, automatic ack, refresh), a
    /// token provider failure: reported, then the client carries on.
    case error(HeraldClientError)
}

/// The reply to ``HeraldRoom/join()``.
public struct JoinResult: Sendable, Equatable {
    /// `nil` for a plain join (nothing to resume); otherwise whether every missed message follows.
    public let recovered: Bool?
    /// Why not, when `recovered` is `false`.
    public let reason: String?
    /// The room's latest position, when the server said it.
    public let latest: StreamPosition?
}

/// The reply to ``HeraldRoom/presence()``: sorted user names.
public struct Presence: Sendable, Equatable {
    /// The room's members.
    public let members: [String]
    /// The members with at least one connection on any node.
    public let online: [String]
}
