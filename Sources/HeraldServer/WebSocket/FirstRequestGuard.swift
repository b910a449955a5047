import NIOCore

/// Bounds a new connection's life before it has sent a complete first request.
///
/// Until the HTTP/WebSocket negotiation ends (the first request head arrived), nothing else in
/// the pipeline acts on a shutdown or a silent peer: browsers open speculative connections that
/// never send a byte, and a hostile client can trickle its headers. This handler closes such a
/// connection after `timeout`, or at once when the server starts shutting down. It is removed
/// as soon as negotiation completes.
final class FirstRequestGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            loopBoundContext.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
