/// The close codes Herald uses, in one table (docs/protocol.md lists them with what a client should do).
public enum CloseCode: UInt16, Sendable, CaseIterable {
    /// The client or server ended the session normally.
    case normal = 1000
    /// The connection did not answer a heartbeat ping in time. Reconnect.
    case heartbeatTimeout = 1001
    /// Protocol error from the client (a malformed WebSocket frame or fragmented message).
    case protocolError = 1002
    /// A text message (or a close reason) that is not valid UTF-8 (RFC 6455, 8.1).
    case invalidPayload = 1007
    /// Sustained abuse of the frame rate limit. Fix the client before reconnecting.
    case policyViolation = 1008
    /// A frame larger than the server's maximum frame size.
    case frameTooLarge = 1009
    /// An unexpected server error. Reconnect with backoff.
    case internalError = 1011
    /// The server is shutting down or restarting. Reconnect (to another node) soon.
    case serviceRestart = 1012
    /// Try again later (RFC 6455): the connection could not keep up with its deliveries (its
    /// outbound queue hit the limit, "slow consumer"), or the server could not set it up (Redis
    /// unavailable; the reason starts with "retry in N s"). Reconnect with backoff and jitter.
    case tryAgainLater = 1013
    /// Authentication failed: token missing, malformed, badly signed or expired (the reason says which),
    /// also `token expired` on an open connection that did not refresh. Do not retry with the same token.
    case unauthorized = 4001
    /// The backend ended the user's connections (`DELETE /api/users/{user}/connections`). Do not
    /// reconnect until the backend says so (with a new token, say).
    case disconnectedByBackend = 4003
    /// A connection limit was reached (per user, or the server's total). Retry later with backoff.
    case tooManyConnections = 4029

    /// 1013 sent to a connection that could not keep up with its deliveries.
    public static var slowConsumer: CloseCode { .tryAgainLater }
}
