import Crypto
import Foundation
import NIOCore
import NIOHTTP1

/// The HTTP → WebSocket upgrade for `/ws`, installing Herald's pipeline: one handler,
/// ``WebSocketConnection``, that parses client frames itself and writes framed bytes.
///
/// NIO's own upgrader always adds its frame decoder and encoder; Herald does without them.
struct WebSocketUpgrader<UpgradeResult: Sendable>: NIOTypedHTTPServerProtocolUpgrader {
    let supportedProtocol = "websocket"
    let requiredUpgradeHeaders: [String] = []
    /// Decides whether to upgrade (`nil` headers refuse).
    let shouldUpgrade: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>
    /// Installs the connection's handlers once the 101 response is sent.
    let upgradePipeline: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<UpgradeResult>

    private static var acceptGUID: String { "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" }

    func buildUpgradeResponse(channel: any Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        let keys = upgradeRequest.headers["Sec-WebSocket-Key"]
        let versions = upgradeRequest.headers["Sec-WebSocket-Version"]
        guard keys.count == 1, let key = keys.first, versions == ["13"] else {
            return channel.eventLoop.makeFailedFuture(UpgradeRefused())
        }
        return shouldUpgrade(channel, upgradeRequest).flatMapThrowing { headers in
            guard var headers else { throw UpgradeRefused() }
            let digest = Insecure.SHA1.hash(data: Data((key + Self.acceptGUID).utf8))
            headers.replaceOrAdd(name: "Upgrade", value: "websocket")
            headers.replaceOrAdd(name: "Connection", value: "upgrade")
            headers.add(name: "Sec-WebSocket-Accept", value: Data(digest).base64EncodedString())
            return headers
        }
    }

    func upgrade(channel: any Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<UpgradeResult> {
        upgradePipeline(channel, upgradeRequest)
    }

    struct UpgradeRefused: Error {}
}
