import HTTPTypes
import Herald
import NIOCore
import NIOHTTPTypes

/// Answers the HTTP API's publishing calls on the connection's event loop, in front of the
/// router: the body is collected, parsed, handed to the broker, and the 202 written, with no
/// task, no async sequence and no router in between. Publishing is the API's hot call (a
/// backend may make thousands a second); through the router it cost about 200 µs of CPU per
/// request here, most of it hops between the event loop and Swift concurrency.
///
/// Everything else, and a publishing call without the right API key (so that the router
/// answers it, 401), passes through to the router untouched. NIO's pipelining handler in
/// front hands this handler one request at a time, so responses stay in request order.
final class PublishRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    private enum State {
        case idle
        /// Not a publishing call: its parts go to the router.
        case forwarding
        case collecting(DeliveryTarget, ByteBuffer)
        /// Refused by its head: answered when its body has ended.
        case refusing(APIError)
        /// Answered before its body ended (too large): the rest is dropped, and
        /// ``HTTPRequestDeadline`` closes the connection once the answer is written.
        case dropping
        case publishing
    }

    private let node: HeraldNode
    private let cors: CORSPolicy?
    private var state = State.idle
    /// The `Origin` of the request being answered (for CORS headers).
    private var origin: String?
    /// The request being answered asked to close the connection after its response.
    private var closeAfterResponse = false

    init(node: HeraldNode) {
        self.node = node
        self.cors = CORSPolicy(node.configuration.allowedOrigins)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard head.method == .post, let path = head.path, let route = PublishRequest.target(path: path), isAuthorized(head) else {
                state = .forwarding
                context.fireChannelRead(data)
                return
            }
            origin = cors == nil ? nil : head.headerFields[.origin]
            closeAfterResponse = head.headerFields[values: .connection].contains { $0.lowercased().contains("close") }
            switch route {
            case .success(let target): state = .collecting(target, ByteBuffer())
            case .failure(let error): state = .refusing(error)
            }
        case .body(var chunk):
            switch state {
            case .forwarding:
                context.fireChannelRead(data)
            case .collecting(let target, var body):
                let limit = node.configuration.maxBodySize
                if body.readableBytes + chunk.readableBytes > limit {
                    let error = PublishRequest.tooLarge(limit)
                    respond(error.status, body: error.body, context: context)
                    state = .dropping
                } else {
                    state = .idle  // the buffer is uniquely referenced while it grows
                    body.writeBuffer(&chunk)
                    state = .collecting(target, body)
                }
            case .idle, .refusing, .publishing, .dropping:
                break
            }
        case .end:
            switch state {
            case .forwarding:
                state = .idle
                context.fireChannelRead(data)
            case .collecting(let target, let body):
                publish(body, to: target, context: context)
            case .refusing(let error):
                respond(error.status, body: error.body, context: context)
            case .dropping:
                state = .idle
            case .idle, .publishing:
                break
            }
        }
    }

    private func publish(_ body: ByteBuffer, to target: DeliveryTarget, context: ChannelHandlerContext) {
        let envelope: Envelope
        do {
            envelope = try PublishRequest.envelope(body: body, to: target)
        } catch {
            respond(error.status, body: error.body, context: context)
            return
        }
        state = .publishing
        node.broker.publish(envelope, on: context.eventLoop).assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success:
                node.hub.metrics.recordPublish(from: .http)
                respond(.accepted, body: PublishRequest.acceptedBody, context: context)
            case .failure(let failure):
                let error = PublishRequest.notPublished(failure)
                respond(error.status, body: error.body, context: context)
            }
        }
    }

    private func respond(_ status: HTTPResponse.Status, body: ByteBuffer, context: ChannelHandlerContext) {
        state = .idle
        var fields = HTTPFields()
        fields[.contentType] = "application/json"
        fields[.contentLength] = String(body.readableBytes)
        fields[.server] = "herald"
        fields[.date] = HTTPDate.now
        cors?.addHeaders(to: &fields, origin: origin)
        if closeAfterResponse { fields[.connection] = "close" }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: status, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        guard closeAfterResponse else {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            return
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// No API key configured, or `Authorization: Bearer KEY` with the right one.
    private func isAuthorized(_ head: HTTPRequest) -> Bool {
        guard let apiKey = node.configuration.apiKey else { return true }
        return APIKey.matches(authorization: head.headerFields[.authorization], apiKey: apiKey)
    }
}
