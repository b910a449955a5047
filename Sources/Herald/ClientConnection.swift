public import HeraldWire
public import NIOCore

/// A client connection as the hub sees it: where deliveries go.
///
/// The transport (the WebSocket handler in HeraldServer) implements it. The hub calls every
/// method on the connection's own ``eventLoop`` and nowhere else, so implementations keep their
/// state confined to that loop and need no locks.
public protocol ClientConnection: AnyObject, Sendable {
    /// Unique on this node.
    var id: String { get }
    /// The authenticated user this connection belongs to.
    var user: String { get }
    /// The event loop that owns the connection's socket.
    var eventLoop: any EventLoop { get }

    /// Queues a delivery without flushing it: the message frame, already wrapped by the hub's
    /// `framing` (for WebSocket: a complete text frame, header included).
    ///
    /// The same buffer is handed to every recipient; implementations must not mutate it.
    /// Returns `true` when the connection has unflushed data and wants ``flush()`` called this
    /// event-loop turn. A connection over its outbound limit cuts itself off (slow consumer) and
    /// returns `false`.
    func enqueue(_ frame: ByteBuffer) -> Bool

    /// Writes out everything queued since the last flush (one vectored write for all of it).
    func flush()

    /// Called once per heartbeat interval: ping, or close a connection that did not answer the
    /// last ping. With `judging` false the node's loop is behind (its reads are late too): a
    /// connection still waiting for its pong keeps waiting, and is neither closed nor pinged again.
    func heartbeat(judging: Bool)

    /// Closes the connection with a close frame.
    func close(_ code: CloseCode, reason: String)

    /// The rooms, among those the user joined themselves, that this connection must not
    /// receive: those its current token does not allow (a membership is valid on a connection
    /// only while the connection's token allows it; the backend's grants stand on their own).
    ///
    /// The hub asks when the connection arrives and whenever the user's own joins change; a
    /// connection whose token changed asks the hub to ask again (``Hub/review(_:)``). It may
    /// tell its client of rooms it no longer receives.
    func excludedRooms(among joinedByUser: Set<String>) -> Set<String>

    /// The credentials (token ids) `ids` were revoked: a connection that uses one closes.
    func credentialsRevoked(_ ids: Set<String>)

    /// Whether the client asked for presence events (`presence_change` frames) of its rooms.
    /// Constant for the life of the connection.
    var wantsPresenceEvents: Bool { get }

    /// Bytes queued for this connection that its socket has not taken yet (read on its event
    /// loop, when the node's metrics are read).
    var queuedOutboundBytes: Int { get }
}

extension ClientConnection {
    public var wantsPresenceEvents: Bool { false }

    public var queuedOutboundBytes: Int { 0 }

    /// A connection without tokens receives every room of its user.
    public func excludedRooms(among joinedByUser: Set<String>) -> Set<String> { [] }

    /// A connection without tokens uses no revocable credential.
    public func credentialsRevoked(_ ids: Set<String>) {}
}
