import Logging
import NIOCore
import NIOTLS

/// First handler of a TLS connection: a client that speaks plain HTTP to the TLS port gets a
/// `400` saying so, instead of a TLS handshake that never completes.
///
/// Every TLS connection starts with a handshake record, whose first byte is the record type
/// 22 (`0x16`). Anything else cannot be TLS: the handler answers in plain text
/// (`HTTP/1.1 400 Bad Request`, `Connection: close`) and closes. A connection whose first byte
/// is `0x16` is handed on unchanged and this handler removes itself.
final class PlaintextRejector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The TLS record type of a handshake message: the first byte of every TLS connection.
    static let handshakeRecordType: UInt8 = 0x16

    static let response: String = {
        let body = "this port speaks TLS: use https:// or wss://\n"
        return "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\nServer: herald\r\n\r\n" + body
    }()

    private var rejected = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !rejected else { return }
        let bytes = unwrapInboundIn(data)
        guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return }
        if first == Self.handshakeRecordType {
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        rejected = true
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: Self.response))).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }
}

/// Right after the TLS handler: a failed handshake (a client that does not trust the
/// certificate, a scanner) is logged at debug with the client's address and the connection is
/// closed at once. Removes itself once the handshake completed.
final class TLSHandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug(
            "TLS handshake failed",
            metadata: ["remote": .string(context.channel.remoteAddress.map { "\($0)" } ?? "?"), "error": .string("\(error)")]
        )
        context.close(promise: nil)
    }
}
