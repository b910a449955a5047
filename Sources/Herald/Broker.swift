public import HeraldWire
public import NIOCore
public import ServiceLifecycle

/// The bus every delivery goes through (the seed's rule: handlers publish, each node's
/// subscriber delivers to its own connections).
///
/// ``LocalBroker`` is the in-process implementation; a Redis broker spans several nodes. The
/// hub never knows which one it has. A broker is a `Service`: it runs for the life of the node.
public protocol Broker: Service {
    /// Publishes `envelope` to every node, this one included, and answers the stream position
    /// it assigned: the channel's next offset and its epoch for a room or a user, `nil` for a
    /// broadcast and for a publish dropped as a duplicate of its idempotency key.
    ///
    /// The broker moves bytes and positions: it stores and forwards `envelope.frame` and
    /// `envelope.positionIndex` as they are, and hands each node an envelope ``Envelope/at(_:)``
    /// its position; the node stamps the position into the frame (``Envelope/deliveredFrame``).
    /// A broker never builds or edits JSON.
    ///
    /// Must not block. Envelopes published from one event loop reach each node in the order
    /// they were published, and a channel's offsets are contiguous. With
    /// ``Envelope/requiresAck`` the message is also kept in the ``acknowledgements`` store, in
    /// the same step that assigns its offset (a message delivered is a message kept). The future
    /// fails with ``BrokerError`` when the broker cannot take the message (for example it is
    /// disconnected): it fails fast instead of piling up.
    func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<StreamPosition?>

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

    /// As ``history(of:since:limit:)``, for a reader positioned in `epoch` (a client
    /// recovering): entries of another epoch are of no use to it, so a broker may answer the
    /// position alone, without reading up to `limit` entries, when the channel's epoch differs.
    func history(of target: DeliveryTarget, since: Int64, limit: Int, inEpoch epoch: String) async throws(BrokerError) -> HistoryPage

    /// The latest position of a room's or a user's channel, for a client that joins it now
    /// and must be able to resume from there after a reconnect. A channel with no epoch yet
    /// (nothing published, or forgotten after the history TTL) is given one here, which the
    /// next publish keeps: `(0, E)` then stays a valid position to recover messages 1, 2, … of
    /// `E` from, instead of looking like a lost history once the first message comes.
    /// - Throws: ``BrokerError`` when the position cannot be read (Redis unreachable).
    func position(of target: DeliveryTarget) async throws(BrokerError) -> StreamPosition

    /// Where the messages published with ``Envelope/requiresAck`` wait for their acknowledgement.
    var acknowledgements: any AcknowledgementStore { get }

    /// Counters of the broker's failures, for `/api/stats`.
    var statistics: BrokerStatistics.Snapshot { get }

    /// Publishes `envelopes` in order and answers each one's result, in the same order: where
    /// the backend allows it in one round trip (Redis: one pipelined write). One envelope's
    /// failure is its own; the others are published.
    func publish(batch envelopes: [Envelope], on eventLoop: any EventLoop) -> EventLoopFuture<[Result<StreamPosition?, any Error>]>

    /// Why the broker cannot serve right now (its backend unreachable, its subscriptions lost),
    /// or `nil` when it can: what `/readyz` reports.
    var unreadiness: String? { get }
}

extension Broker {
    public func history(of target: DeliveryTarget, since: Int64, limit: Int, inEpoch epoch: String) async throws(BrokerError) -> HistoryPage {
        try await history(of: target, since: since, limit: limit)
    }

    /// An in-process broker is always ready.
    public var unreadiness: String? { nil }

    /// One publish after the other (an in-process broker has no round trip to save).
    public func publish(batch envelopes: [Envelope], on eventLoop: any EventLoop) -> EventLoopFuture<[Result<StreamPosition?, any Error>]> {
        EventLoopFuture.whenAllComplete(envelopes.map { publish($0, on: eventLoop) }, on: eventLoop)
    }

    /// Publishes `envelope` to every node, this one included; answers its stream position.
    @discardableResult
    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) async throws -> StreamPosition? {
        try await publish(envelope, on: eventLoop).get()
    }
}

/// Messages to a user sent with ``Envelope/requiresAck``, kept until one of the user's
/// connections acknowledges them (or they expire): sent again to each new connection of the
/// user until then.
///
/// The broker keeps a message here in the step that assigns its offset; the store answers what
/// is waiting and records acknowledgements.
public protocol AcknowledgementStore: Sendable {
    /// Messages to `user` not acknowledged yet (nor expired), oldest first. Called on every
    /// connect once the user's channel is live, so a store behind a network should batch these
    /// reads (one round trip for many connects).
    func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]>

    /// A connection of `user` acknowledged the message at `offset` of the user's channel (in
    /// `epoch`, or the channel's current epoch when `nil`). Acknowledging a message that is not
    /// waiting (acknowledged already, expired, never sent) does nothing.
    func acknowledge(user: String, offset: Int64, epoch: String?) async throws(BrokerError)
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

    /// The memberships of the users with a connection on this node, and who granted each, as
    /// this node applies them, for a roster that must restore the memberships its store lost
    /// (Redis restarted without persistence) while this node's users kept receiving their rooms.
    func localMemberships() -> [String: [String: MembershipGrant]]

    /// Closes every connection of `user` on this node with `code` and `reason` (the backend's
    /// revocation, heard from any node); returns once each was told to close.
    func disconnect(user: String, code: CloseCode, reason: String) async

    /// The credentials (token ids) `ids` were revoked somewhere in the cluster: close the
    /// connections of this node that use one.
    func credentialsRevoked(_ ids: Set<String>)
}

extension DeliverySink {
    public func localMemberships() -> [String: [String: MembershipGrant]] { [:] }

    public func disconnect(user: String, code: CloseCode, reason: String) async {}

    public func credentialsRevoked(_ ids: Set<String>) {}

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
