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
final class UpgradeRequestFilter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
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
