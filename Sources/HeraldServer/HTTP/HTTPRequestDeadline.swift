import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Bounds how long an HTTP connection may take over each request, against slowloris: a client
/// that trickles its request (or never finishes it) to hold a connection, and a descriptor, for
/// as long as it likes. Each byte used to reset the idle timer.
///
/// - The whole request, head and body, must arrive within ``Limits/requestTimeout``, and its body
///   at ``Limits/minimumBytesPerSecond`` on average once ``Limits/rateGrace`` has passed. A
///   request that does not is answered `408` and the connection closed (or just closed when its
///   response has begun).
/// - Between requests, the next request head must arrive complete within
///   ``Limits/keepAliveTimeout`` (the first one is bounded by ``FirstRequestGuard``).
/// - A response written before its request has fully arrived (a `401`, a `413`, any refusal) and
///   every `401` and `413` carry `Connection: close`, and the connection closes once they are
///   written: the rest of a refused body is not read.
///
/// Sits right after the HTTP/1 codec, so it sees every request part and every response part.
final class HTTPRequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    struct Limits: Sendable {
        var requestTimeout: TimeAmount = .seconds(30)
        var minimumBytesPerSecond: Int = 1024
        var rateGrace: TimeAmount = .seconds(5)
        var keepAliveTimeout: TimeAmount = .seconds(30)
    }

    private let limits: Limits
    /// Called once, when the connection's first request has fully arrived.
    private var onFirstRequest: (() -> Void)?

    private var requestStart: NIODeadline?
    private var bodyBytes = 0
    private var requestComplete = true
    private var responseStarted = false
    private var closeAfterResponse = false
    private var timer: Scheduled<Void>?

    init(limits: Limits, onFirstRequest: (() -> Void)? = nil) {
        self.limits = limits
        self.onFirstRequest = onFirstRequest
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            requestStart = .now()
            bodyBytes = 0
            requestComplete = false
            responseStarted = false
            schedule(check: limits.rateGrace, context: context)
        case .body(let chunk):
            bodyBytes += chunk.readableBytes
        case .end:
            requestComplete = true
            requestStart = nil
            timer?.cancel()
            timer = nil
            if let onFirstRequest {
                self.onFirstRequest = nil
                onFirstRequest()
            }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var response):
            responseStarted = true
            if !requestComplete || response.status == .unauthorized || response.status == .contentTooLarge {
                closeAfterResponse = true
                response.headerFields[.connection] = "close"
                context.write(wrapOutboundOut(.head(response)), promise: promise)
                return
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterResponse else {
                context.write(data, promise: promise)
                if requestComplete { awaitNextRequest(context: context) }
                return
            }
            timer?.cancel()
            timer = nil
            let channel = context.channel
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
            promise.map { written.futureResult.cascade(to: $0) }
            context.writeAndFlush(data, promise: written)
        }
    }

    /// After a response: the next request head must arrive within the keep-alive timeout.
    private func awaitNextRequest(context: ChannelHandlerContext) {
        timer?.cancel()
        // The handler and its context live on this loop: the timer fires there.
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: limits.keepAliveTimeout) {
            let (handler, context) = bound.value
            guard handler.requestComplete, handler.requestStart == nil else { return }
            context.close(promise: nil)
        }
    }

    /// Checks the request in progress `after` from now, then every second until it ends.
    private func schedule(check after: TimeAmount, context: ChannelHandlerContext) {
        timer?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let delay = min(after, limits.requestTimeout)
        timer = context.eventLoop.scheduleTask(in: delay) {
            let (handler, context) = bound.value
            handler.check(context: context)
        }
    }

    /// Whether the request in progress is within its deadline and rate; expires it if not.
    private func check(context: ChannelHandlerContext) {
        guard !requestComplete, let start = requestStart else { return }
        let elapsed = NIODeadline.now() - start
        let seconds = Double(elapsed.nanoseconds) / 1e9
        let tooSlow = elapsed >= limits.rateGrace && Double(bodyBytes) < Double(limits.minimumBytesPerSecond) * seconds
        if elapsed >= limits.requestTimeout || tooSlow {
            expire(context: context)
        } else {
            schedule(check: .seconds(1), context: context)
        }
    }

    /// The request took too long: `408` when nothing was answered yet, then close.
    private func expire(context: ChannelHandlerContext) {
        timer = nil
        guard !responseStarted else {
            context.close(promise: nil)
            return
        }
        responseStarted = true
        let body = JSONBody.errorBody(
            code: "request_timeout",
            message:
                "the request did not arrive in time: send its head and body within \(limits.requestTimeout.nanoseconds / 1_000_000_000) s, at \(limits.minimumBytesPerSecond) bytes/s or faster"
        )
        var fields = HTTPFields()
        fields[.contentType] = "application/json"
        fields[.contentLength] = String(body.readableBytes)
        fields[.connection] = "close"
        fields[.server] = "herald"
        fields[.date] = HTTPDate.now
        context.write(wrapOutboundOut(.head(HTTPResponse(status: .requestTimeout, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
