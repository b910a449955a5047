public import NIOCore
import ServiceLifecycle

/// The in-process broker: a publish is delivered to this node's hub at once.
///
/// The default when Herald runs as one node. Delivery order per publishing event loop is the
/// publish order, because the hub hands each envelope to every event loop with one `execute`,
/// and each loop runs its tasks in order.
public struct LocalBroker: Broker {
    let sink: any DeliverySink

    public init(deliveringTo sink: any DeliverySink) {
        self.sink = sink
    }

    public func publish(_ envelope: Envelope, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        sink.deliver(envelope)
        return eventLoop.makeSucceededVoidFuture()
    }

    /// One node delivers every channel already: nothing to subscribe.
    public func changeInterest(_ change: InterestChange, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        eventLoop.makeSucceededVoidFuture()
    }

    public var statistics: BrokerStatistics.Snapshot { .init() }

    public func run() async throws {
        // Nothing to connect to; stay up for the life of the node.
        try? await gracefulShutdown()
    }
}
