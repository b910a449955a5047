/// Who a connection is, and which rooms it may join by itself.
public struct Identity: Sendable, Equatable {
    public var user: String
    public var rooms: RoomPermissions

    public init(user: String, rooms: RoomPermissions) {
        self.user = user
        self.rooms = rooms
    }
}

/// The rooms a client may join itself: from its token's `rooms` claim (exact names or
/// `prefix*` patterns), or every room in development mode. Memberships granted by the backend
/// through the HTTP API need no permission.
public struct RoomPermissions: Sendable, Equatable {
    private let patterns: [String]?

    /// Every room (development mode).
    public static let any = RoomPermissions(patterns: nil)
    /// No room (a token without a `rooms` claim).
    public static let none = RoomPermissions(patterns: [])

    /// - Parameter patterns: exact room names, or `prefix*` to allow every room starting with `prefix`.
    public init(patterns: [String]?) {
        self.patterns = patterns
    }

    public func allows(_ room: String) -> Bool {
        guard let patterns else { return true }
        return patterns.contains { pattern in
            if pattern.hasSuffix("*") {
                return room.hasPrefix(pattern.dropLast())
            }
            return pattern == room
        }
    }
}
