public import Foundation

/// Who a connection is and what its token allows: the rooms it may join by itself, whom it may
/// `send` to, and until when.
public struct Identity: Sendable, Equatable {
    public var user: String
    /// Rooms the client may join itself (the token's `rooms` claim).
    public var rooms: RoomPermissions
    /// Users the client may `send` to, from the token's `send` claim; `nil` when the token has
    /// none (the server's ``SendPolicy`` decides).
    public var recipients: RoomPermissions?
    /// The token's `exp`: the connection is closed with 4001 when it passes without a refresh.
    public var expires: Date?
    /// The token's `jti`, for revocation.
    public var tokenID: String?

    public init(user: String, rooms: RoomPermissions, recipients: RoomPermissions? = nil, expires: Date? = nil, tokenID: String? = nil) {
        self.user = user
        self.rooms = rooms
        self.recipients = recipients
        self.expires = expires
        self.tokenID = tokenID
    }
}

/// Names a client may use by itself: rooms from a token's `rooms` claim, users from its `send`
/// claim (exact names or `prefix*` patterns), or every name in development mode. Memberships
/// granted by the backend through the HTTP API need no permission.
public struct RoomPermissions: Sendable, Equatable {
    private let patterns: [String]?

    /// Every name (development mode).
    public static let any = RoomPermissions(patterns: nil)
    /// No name (a token without the claim).
    public static let none = RoomPermissions(patterns: [])

    /// - Parameter patterns: exact names, or `prefix*` to allow every name starting with `prefix`.
    public init(patterns: [String]?) {
        self.patterns = patterns
    }

    /// Whether every name is allowed (development mode, or a `*` pattern).
    public var allowsEverything: Bool { patterns == nil || patterns!.contains("*") }

    public func allows(_ name: String) -> Bool {
        guard let patterns else { return true }
        return patterns.contains { pattern in
            if pattern.hasSuffix("*") {
                return name.hasPrefix(pattern.dropLast())
            }
            return pattern == name
        }
    }
}
