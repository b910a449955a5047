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
}

extension Broker {
    /// Publishes `envelope` to every node, this one included.
    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) async throws {
        try await publish(envelope, on: eventLoop).get()
    }
}

/// Receives what a broker delivers on this node. The hub implements it.
public protocol DeliverySink: Sendable {
    func deliver(_ envelope: Envelope)
}

/// A message the broker could not take.
public struct BrokerError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
