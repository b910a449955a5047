public import NIOCore
public import ServiceLifecycle

/// The bus every delivery goes through (the seed's rule: handlers publish, each node's
/// subscriber delivers to its own connections).
///
/// ``LocalBroker`` is the in-process implementation; a Redis broker spans several nodes. The
/// hub never knows which one it has. A broker is a `Service`: it runs for the life of the node.
public protocol Broker: Service {
    /// Publishes `envelope` to every node, this one included.
    ///
    /// Must not block. Envelopes published from one event loop reach each node in the order
    /// they were published. The future fails with ``BrokerError`` when the broker cannot take
    /// the message (for example it is disconnected): it fails fast instead of piling up.
    func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<Void>

    /// This node's interest changed: it now has local recipients for `change.subscribe` and no
    /// longer any for `change.unsubscribe` (``DeliveryTarget/all`` is always delivered).
    ///
    /// Must not block; changes are applied in call order (the hub calls it under its lock).
    /// The future completes once the broker delivers the subscribed channels to this node; a
    /// broker that delivers everything everywhere (``LocalBroker``) completes at once.
    func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void>

    /// Reads the history of a room's or a user's channel: messages with an offset above
    /// `since`, oldest first, at most `limit`.
    /// - Throws: ``BrokerError`` when the history cannot be read (Redis unreachable).
    func history(of target: DeliveryTarget, since: Int64, limit: Int) async throws(BrokerError) -> HistoryPage

    /// Messages to `user` sent with `requiresAck` and not acknowledged yet (nor expired), oldest first.
    func unacknowledged(for user: String) async throws(BrokerError) -> [HistoryEntry]

    /// The same, without a task: called on every connect once the user's channel is live, so a
    /// broker backed by a store should batch these reads (one round trip for many connects).
    func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]>

    /// A connection of `user` acknowledged the message at `offset` of the user's channel (in
    /// `epoch`, or the channel's current epoch when `nil`).
    func acknowledge(user: String, offset: Int64, epoch: String?) async throws(BrokerError)

    /// Counters of the broker's failures, for `/api/stats`.
    var statistics: BrokerStatistics.Snapshot { get }
}

extension Broker {
    public func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]> {
        loop.makeFutureWithTask { try await self.unacknowledged(for: user) }
    }

    /// Publishes `envelope` to every node, this one included.
    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) async throws {
        try await publish(envelope, on: eventLoop).get()
    }
}

/// Channels a node starts or stops needing, as the hub computes them from its local connections.
public struct InterestChange: Sendable, Equatable {
    public var subscribe: [DeliveryTarget] = []
    public var unsubscribe: [DeliveryTarget] = []

    public init(subscribe: [DeliveryTarget] = [], unsubscribe: [DeliveryTarget] = []) {
        self.subscribe = subscribe
        self.unsubscribe = unsubscribe
    }

    public var isEmpty: Bool { subscribe.isEmpty && unsubscribe.isEmpty }
}

/// What a broker and a roster need of this node. The hub implements it.
public protocol DeliverySink: Sendable {
    /// Delivers a published envelope to this node's connections.
    func deliver(_ envelope: Envelope)

    /// A membership changed somewhere in the cluster. Rosters call it in the order the changes
    /// were stored. The future completes once this node's interest reflects the change (its
    /// user's connections here receive the room from then on).
    func membershipChanged(_ change: MembershipChange) -> EventLoopFuture<Void>

    /// Connections per user on this node, for a roster that must rebuild its presence records
    /// (for example after Redis restarted without persistence).
    func localConnectionCounts() -> [String: Int]

    /// This node's connections and the users they belong to, for cluster-wide figures.
    func localPresenceTotals() -> PresenceTotals

    /// The rooms of the users with a connection on this node, as this node applies them, for a
    /// roster that must restore the memberships its store lost (Redis restarted without
    /// persistence) while this node's users kept receiving their rooms.
    func localMemberships() -> [String: Set<String>]
}

extension DeliverySink {
    public func localMemberships() -> [String: Set<String>] { [:] }

    public func localPresenceTotals() -> PresenceTotals {
        let counts = localConnectionCounts()
        return PresenceTotals(connections: counts.values.reduce(0, +), users: counts.count)
    }
}

/// Connections and distinct users online, on one node or summed over a cluster's nodes.
public struct PresenceTotals: Sendable, Equatable {
    public var connections: Int
    /// Users with a connection. Summed over nodes, a user connected to several nodes counts
    /// once per node.
    public var users: Int

    public init(connections: Int, users: Int) {
        self.connections = connections
        self.users = users
    }
}

/// A message the broker could not take.
public struct BrokerError: Error, Sendable, CustomStringConvertible {
    /// Why: the broker is unreachable (retry later), or its store for messages that must not
    /// be lost is full (retry once recipients have acknowledged theirs).
    public enum Kind: Sendable, Equatable {
        case unavailable
        case storageFull
    }

    public let kind: Kind
    public let message: String
    public init(_ message: String, kind: Kind = .unavailable) {
        self.message = message
        self.kind = kind
    }
    public var description: String { message }
}
