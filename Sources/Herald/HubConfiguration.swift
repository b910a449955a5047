public import NIOCore

/// Limits and timings of a hub. Every field is bounded and defaulted; docs/protocol.md and the
/// README's configuration table give the same defaults.
public struct HubConfiguration: Sendable {
    /// Interval between server pings. A connection that has not answered (with any frame)
    /// by the next ping is closed with 1001.
    public var heartbeat: TimeAmount = .seconds(25)
    /// Connections this node accepts in total; past it new connections are closed with 4029.
    public var maxConnections: Int = 100_000
    /// Connections one user may hold on this node; past it new ones are closed with 4029.
    public var maxConnectionsPerUser: Int = 32
    /// Rooms one user may be a member of; a join past it is refused with `limit_exceeded`.
    public var maxRoomsPerUser: Int = 256
    /// Rooms that may exist at once; creating one more is refused with `limit_exceeded`.
    public var maxRooms: Int = 1_000_000
    /// Members one room may have; a join past it is refused with `limit_exceeded`.
    public var maxMembersPerRoom: Int = 1_000_000

    public init() {}
}
