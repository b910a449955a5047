/// A Redis operation failed. The cases say what kind of failure it was, so callers match on
/// them (and on a server error's code), never on message text; every description says what
/// happened and, where it can, what to do.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Redis answered with an error reply. `code` is its first word (`ERR`, `NOSCRIPT`,
    /// `NOGROUP`, `BUSYGROUP`, `WRONGTYPE`, `NOPROTO`, …), `message` the whole reply.
    case server(code: String, message: String)
    /// The command could not be sent, or its reply did not arrive: not connected, connection
    /// refused or lost, Redis silent past the command timeout.
    case transport(String)
    /// Redis answered something this client or its caller cannot use (a reply of the wrong
    /// shape, a server too old for RESP3).
    case unexpectedReply(String)
    /// A configuration the client cannot use (a malformed URL, an unsupported scheme).
    case invalidConfiguration(String)

    /// An error reply as Redis sent it (`NOGROUP No such key …`).
    public static func reply(_ text: String) -> RedisError {
        .server(code: String(text.prefix { $0 != " " }), message: text)
    }

    /// The code of a server error reply; `nil` for the other cases.
    public var serverCode: String? {
        if case .server(let code, _) = self { code } else { nil }
    }

    public var description: String {
        switch self {
        case .server(_, let message): "Redis answered with an error: \(message)"
        case .transport(let message), .unexpectedReply(let message), .invalidConfiguration(let message): message
        }
    }
}
