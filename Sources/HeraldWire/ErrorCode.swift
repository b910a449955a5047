/// The `code` of an `error` frame. Documented in docs/protocol.md; new codes may be added, none renamed.
public struct ErrorCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    /// Malformed JSON, unknown `type`, a missing or mistyped field, a binary frame.
    public static let badRequest = ErrorCode(rawValue: "bad_request")
    /// Publishing to (or asking presence of) a room the user is not a member of.
    public static let notAMember = ErrorCode(rawValue: "not_a_member")
    /// Not allowed: a room outside the token's `rooms` claim, or a client broadcast the server does not allow.
    public static let forbidden = ErrorCode(rawValue: "forbidden")
    /// A `refresh` token was refused (the message says why); the connection keeps its current
    /// token until that one expires.
    public static let unauthorized = ErrorCode(rawValue: "unauthorized")
    /// Too many frames: the connection is over its frame rate (`--rate-limit`, `--rate-burst`); slow down.
    public static let rateLimited = ErrorCode(rawValue: "rate_limited")
    /// A server limit was reached (for example rooms per user).
    public static let limitExceeded = ErrorCode(rawValue: "limit_exceeded")
    /// The server's store for acknowledged messages is full (`--ack-max-bytes`): nothing was
    /// stored; retry once recipients have acknowledged theirs.
    public static let storageFull = ErrorCode(rawValue: "storage_full")
    /// The server could not complete the request (for example its broker is unavailable); retry later.
    public static let unavailable = ErrorCode(rawValue: "unavailable")
}
