/// Why the hub refused a connection or a membership. Each description says what to do.
public struct HubError: Error, Sendable, Equatable, CustomStringConvertible {
    enum Reason: Sendable, Equatable {
        case serverFull(limit: Int)
        case userFull(user: String, limit: Int)
        case userRoomLimit(user: String, limit: Int)
        case roomLimit(limit: Int)
        case roomFull(room: String, limit: Int)
        case denylistFull(limit: Int)
        case unavailable(String)
    }

    let reason: Reason

    public static func serverFull(limit: Int) -> HubError { .init(reason: .serverFull(limit: limit)) }
    public static func userRoomLimit(user: String, limit: Int) -> HubError { .init(reason: .userRoomLimit(user: user, limit: limit)) }
    public static func roomLimit(limit: Int) -> HubError { .init(reason: .roomLimit(limit: limit)) }
    public static func roomFull(room: String, limit: Int) -> HubError { .init(reason: .roomFull(room: room, limit: limit)) }
    /// The token denylist holds `limit` live entries.
    public static func denylistFull(limit: Int) -> HubError { .init(reason: .denylistFull(limit: limit)) }
    /// The shared store (for example Redis) could not answer; `detail` says why.
    public static func unavailable(_ detail: String) -> HubError { .init(reason: .unavailable(detail)) }

    /// Whether the error is a membership limit (as opposed to a connection limit or an outage).
    public var isMembershipLimit: Bool {
        switch reason {
        case .userRoomLimit, .roomLimit, .roomFull: true
        default: false
        }
    }

    /// Whether the error is a limit of any kind (as opposed to an outage).
    public var isLimit: Bool {
        if case .unavailable = reason { return false }
        return true
    }

    /// Whether the error concerns the number of connections (close 4029) rather than memberships.
    public var isConnectionLimit: Bool {
        switch reason {
        case .serverFull, .userFull: true
        default: false
        }
    }

    public var description: String {
        switch reason {
        case .serverFull(let limit):
            "server full: it holds its maximum of \(limit) connections; retry later or connect to another node"
        case .userFull(let user, let limit):
            "too many connections for user \(user): the limit is \(limit) per user; close one first"
        case .userRoomLimit(let user, let limit):
            "user \(user) is already in \(limit) rooms, the limit per user; leave one first"
        case .roomLimit(let limit):
            "the server already has its maximum of \(limit) rooms; retry later"
        case .roomFull(let room, let limit):
            "room \(room) already has its maximum of \(limit) members"
        case .denylistFull(let limit):
            "the token denylist holds its maximum of \(limit) revoked tokens: wait for some to expire, or revoke with shorter expiries"
        case .unavailable(let detail):
            "the cluster's shared state is unavailable (\(detail)); retry shortly"
        }
    }
}
