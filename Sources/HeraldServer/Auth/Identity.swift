public import Foundation
import HeraldWire
import NIOCore

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
    /// The token's `info` claim as a JSON object, told to room members with presence events.
    public var presenceInfo: String?

    public init(
        user: String, rooms: RoomPermissions, recipients: RoomPermissions? = nil, expires: Date? = nil, tokenID: String? = nil,
        presenceInfo: String? = nil
    ) {
        self.user = user
        self.rooms = rooms
        self.recipients = recipients
        self.expires = expires
        self.tokenID = tokenID
        self.presenceInfo = presenceInfo
    }
}

/// A token's `info` claim: string values about the user (a display name, an avatar URL) that
/// presence events tell the members of the user's rooms. Bounded, since every event and
/// every `presence_state` naming the user carries it.
public enum PresenceInfo {
    public static let maxEntries = 16
    public static let maxKeyBytes = 64
    public static let maxValueBytes = 256

    /// The claim as a compact JSON object with sorted keys, or why it is refused.
    public static func encode(_ info: [String: String]) -> Result<String, PresenceInfoProblem> {
        guard info.count <= maxEntries else { return .failure(PresenceInfoProblem("has more than \(maxEntries) entries")) }
        var buffer = ByteBuffer()
        buffer.writeStaticString("{")
        for (index, key) in info.keys.sorted().enumerated() {
            let value = info[key] ?? ""
            guard !key.isEmpty, key.utf8.count <= maxKeyBytes else { return .failure(PresenceInfoProblem("has a key of 0 or more than \(maxKeyBytes) bytes")) }
            guard value.utf8.count <= maxValueBytes else { return .failure(PresenceInfoProblem("\(key) is longer than \(maxValueBytes) bytes")) }
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeJSONString(key)
            buffer.writeStaticString(":")
            buffer.writeJSONString(value)
        }
        buffer.writeStaticString("}")
        return .success(String(buffer: buffer))
    }
}

/// Why a token's `info` claim is refused.
public struct PresenceInfoProblem: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
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
