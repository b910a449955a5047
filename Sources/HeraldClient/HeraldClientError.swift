/// Why a request failed, why ``HeraldClient/run()`` ended, or what odd thing the server sent.
///
/// Match on the case (or on ``code``, the same stable string the JavaScript client uses), never
/// on the description: descriptions say what happened and what to do, and may change.
public enum HeraldClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server answered the request with an `error` frame: `code` is the protocol's stable
    /// code (`forbidden`, `not_a_member`, `bad_request`, `limit_exceeded`, `unavailable`,
    /// `unauthorized`, …), `message` the server's explanation.
    case server(code: String, message: String)
    /// No reply within ``HeraldClient/Configuration/requestTimeout`` (queued time included).
    /// A timed-out publish or send may still have been delivered.
    case timeout(String)
    /// The client stopped (``HeraldClient/run()`` ended, or was never started and the client
    /// was discarded): the request was not sent, or its reply can no longer arrive.
    case closed(String)
    /// Not connected, and ``HeraldClient/Configuration/maxQueuedRequests`` requests already wait
    /// for a connection: this one was refused at once (older ones keep their place).
    case queueFull(limit: Int)
    /// ``HeraldClient/Configuration/maxPendingRequests`` requests already await a reply.
    case tooManyRequests(limit: Int)
    /// A publish, send, broadcast or refresh went out on a connection that died before its reply:
    /// it may or may not have been acted on. Retry if a duplicate is acceptable.
    case disconnected(String)
    /// The server closed the connection with a code after which reconnecting cannot help
    /// (4001, 4003, 1002, 1007, 1008): ``HeraldClient/run()`` ended with this error.
    case stopped(closeCode: UInt16, reason: String)
    /// The server sent something the client cannot use (not JSON, binary, no `type`, an
    /// unexpected welcome, a message for a room the application did not join, a reply with
    /// an unknown `id`): reported as an event and ignored.
    case unexpectedFrame(String)
    /// The token provider threw, or the token expires soon and there is no provider to refresh it.
    case token(String)
    /// The client was set up in a way it cannot work with (no URL, a URL it cannot use,
    /// `run()` called twice), or `data` that cannot be encoded as JSON.
    case invalidUse(String)

    /// The stable code, as in herald.js: the server's code for ``server(code:message:)``,
    /// otherwise `timeout`, `closed`, `queue_full`, `too_many_requests`, `disconnected`,
    /// `unauthorized` (a 4001 stop) or `stopped`, `unexpected_frame`, `token_failed`, `invalid_use`.
    public var code: String {
        switch self {
        case .server(let code, _): code
        case .timeout: "timeout"
        case .closed: "closed"
        case .queueFull: "queue_full"
        case .tooManyRequests: "too_many_requests"
        case .disconnected: "disconnected"
        case .stopped(let closeCode, _): closeCode == 4001 ? "unauthorized" : "stopped"
        case .unexpectedFrame: "unexpected_frame"
        case .token: "token_failed"
        case .invalidUse: "invalid_use"
        }
    }

    public var description: String {
        switch self {
        case .server(let code, let message): "the server refused the request (\(code)): \(message)"
        case .timeout(let message), .closed(let message), .disconnected(let message), .unexpectedFrame(let message), .token(let message),
            .invalidUse(let message):
            message
        case .queueFull(let limit):
            "\(limit) requests already wait for a connection: retry once connected, or raise Configuration.maxQueuedRequests"
        case .tooManyRequests(let limit):
            "\(limit) requests already await a reply: wait for some, or raise Configuration.maxPendingRequests"
        case .stopped(let closeCode, let reason):
            "the server closed the connection with \(closeCode) (\(reason)): \(Self.advice(closeCode)); the client stopped reconnecting"
        }
    }

    private static func advice(_ closeCode: UInt16) -> String {
        switch closeCode {
        case 4001: "the credentials were refused (expired, revoked or invalid token): get new credentials and start a new client"
        case 4003: "the backend ended this user's connections: do not reconnect until the backend says so"
        case 1008: "the client broke the server's policy (sustained rate-limit abuse): slow down before reconnecting"
        default: "the server found a protocol error in what this client sent: report it as a bug"
        }
    }
}
