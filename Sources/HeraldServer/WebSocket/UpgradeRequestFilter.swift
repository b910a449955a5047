import NIOCore
import NIOHTTP1

/// In front of NIO's upgrade handler: lets through, as an upgrade, only a request the WebSocket
/// upgrader will accept, and turns every other request that carries an `Upgrade` header into a
/// plain HTTP request (the header removed), which the router answers: `426` on `/ws` (with
/// `Sec-WebSocket-Version: 13`), `405` for `POST /ws`, the page itself for `Upgrade: h2c` on
/// `/healthz`, `404` for `/ws/`.
///
/// Why: NIO's typed upgrade handler does not keep the request head while it looks for an
/// upgrader; when none accepts the request, the head is lost and the client waits for an
/// answer that never comes (until the idle timeout, 60 s).
///
/// It also answers what NIO's HTTP decoder refuses (duplicate or conflicting Content-Length
/// and Transfer-Encoding, a head over 80 KB, bytes that are not HTTP): `400` with
/// `Connection: close`, then close, instead of a connection left silent until a timeout. NIO's
/// own error handler does the same, but also answers the decoder's complaint about a request
/// cut short when the connection closes (after Herald closed it following a refusal), a
/// second response that trips NIO's pipelining handler.
final class UpgradeRequestFilter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// A response has begun and not ended: a 400 cannot be slipped in.
    private var responseInFlight = false
    /// Seconds a WebSocket client should wait when the node is overloaded, else `nil`.
    private let retryAfter: @Sendable () -> Int?
    /// A WebSocket request was refused for overload: the rest of it is dropped.
    private var refusing = false
    /// Called when a complete WebSocket upgrade request has arrived: from then on the server,
    /// not the client, is the one to wait for.
    private let onUpgradeRequest: @Sendable () -> Void
    /// Whether a browser page of this `Origin` (and `Host`) may open a WebSocket.
    private let admitsOrigin: @Sendable (_ origin: String?, _ host: String?) -> Bool

    init(
        retryAfter: @escaping @Sendable () -> Int? = { nil },
        admitsOrigin: @escaping @Sendable (_ origin: String?, _ host: String?) -> Bool = { _, _ in true },
        onUpgradeRequest: @escaping @Sendable () -> Void = {}
    ) {
        self.retryAfter = retryAfter
        self.admitsOrigin = admitsOrigin
        self.onUpgradeRequest = onUpgradeRequest
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: responseInFlight = true
        case .end: responseInFlight = false
        case .body: break
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        // Closed already (the decoder complains of the request it was cut off in): nothing to say.
        guard context.channel.isActive else { return }
        guard !responseInFlight else {
            context.close(promise: nil)
            return
        }
        var body = context.channel.allocator.buffer(capacity: 128)
        body.writeString(#"{"error":"bad_request","message":"malformed HTTP request"}"#)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Connection", value: "close")
        responseInFlight = true
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refusing else { return }
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        if head.version == .http1_0, !head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "keep-alive" }) {
            // HTTP/1.0 without keep-alive: the connection ends with the response, on every path.
            head.headers.replaceOrAdd(name: "Connection", value: "close")
        }
        guard head.headers.contains(name: "upgrade") else {
            context.fireChannelRead(wrapInboundOut(.head(head)))
            return
        }
        if Self.isWebSocketUpgrade(head) {
            let origins = head.headers["Origin"]
            guard origins.count <= 1, admitsOrigin(origins.first, head.headers.first(name: "Host")) else {
                let printable = (origins.first ?? "").unicodeScalars.prefix(100).filter { $0.isASCII && $0.value >= 0x20 && $0 != "\"" && $0 != "\\" }
                let origin = String(String.UnicodeScalarView(printable))
                refuse(
                    context: context,
                    status: .forbidden,
                    body:
                        #"{"error":"forbidden_origin","message":"a page of origin \#(origin) may not open WebSockets on this server; add it to --allowed-origins"}"#
                )
                return
            }
            if let seconds = retryAfter() {
                refuseForOverload(context: context, retryAfter: seconds)
                return
            }
            onUpgradeRequest()
            context.fireChannelRead(data)
            // Out of the way before the upgrade happens (at the request's end): what follows it
            // is WebSocket bytes, not HTTP. (Removed after passing the head on: a removed
            // handler's context forwards nothing.)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        // NIO's HTTP decoder already saw an upgrade request and parses nothing after it: this
        // request is answered, then the connection closes (Connection: close, which the router
        // and the publishing fast path both honour).
        head.headers.remove(name: "upgrade")
        head.headers.replaceOrAdd(name: "Connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    /// `503` with `Retry-After`, then close: nothing of the upgrade is done, so a node at its
    /// limit spends next to nothing on each client it turns away.
    private func refuseForOverload(context: ChannelHandlerContext, retryAfter seconds: Int) {
        refuse(
            context: context,
            status: .serviceUnavailable,
            body:
                #"{"error":"overloaded","message":"the server is setting up too many connections; retry after the Retry-After delay","retry_after":\#(seconds)}"#,
            headers: [("Retry-After", String(seconds))]
        )
    }

    /// Answers an upgrade request with `status` and a JSON `body`, then closes: the rest of the
    /// request is dropped and no WebSocket frame is ever sent.
    private func refuse(context: ChannelHandlerContext, status: HTTPResponseStatus, body text: String, headers extra: [(String, String)] = []) {
        refusing = true
        var body = context.channel.allocator.buffer(capacity: text.utf8.count)
        body.writeString(text)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        for (name, value) in extra { headers.add(name: name, value: value) }
        headers.add(name: "Connection", value: "close")
        responseInFlight = true
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    /// An upgrade ``WebSocketUpgrader`` accepts: `GET /ws` (any query) over HTTP/1.1 asking for
    /// `websocket` with `Connection: upgrade`, one `Sec-WebSocket-Key` of 16 bytes in base64,
    /// and `Sec-WebSocket-Version: 13` (RFC 6455, section 4.2.1).
    static func isWebSocketUpgrade(_ head: HTTPRequestHead) -> Bool {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard head.method == .GET, head.version == .http1_1, path == "/ws" else { return false }
        guard head.headers[canonicalForm: "upgrade"].contains(where: { $0.lowercased() == "websocket" }),
            head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "upgrade" })
        else { return false }
        let keys = head.headers["Sec-WebSocket-Key"]
        guard keys.count == 1, keys[0].utf8.count == 24, keys[0].hasSuffix("==") else { return false }
        return head.headers["Sec-WebSocket-Version"] == ["13"]
    }
}
