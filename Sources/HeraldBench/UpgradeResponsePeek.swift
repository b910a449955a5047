import NIOCore

/// Notes the status and `Retry-After` of the server's answer to the WebSocket upgrade request,
/// so an attempt refused with `503` + `Retry-After` (the server is overloaded) can be retried
/// after that delay. First in the pipeline, on raw bytes (after the upgrade the bytes are
/// WebSocket frames, whatever handlers follow): it reads the first bytes received once and
/// passes everything on.
final class UpgradeResponsePeek: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var status: Int?
    private var retryAfter: Double?
    private var looked = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !looked {
            looked = true
            // A refusal's head is small and comes in the first read.
            let text = String(decoding: unwrapInboundIn(data).readableBytesView.prefix(1024), as: UTF8.self)
            let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
            if let first = lines.first, first.hasPrefix("HTTP/1.") {
                status = first.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            }
            for line in lines.dropFirst() {
                if line.isEmpty { break }
                if line.lowercased().hasPrefix("retry-after:") { retryAfter = Double(line.dropFirst(12).filter { $0 != " " && $0 != "\t" }) }
            }
        }
        context.fireChannelRead(data)
    }

    /// Why the upgrade was refused: a retry hint for `503`/`429` (after `Retry-After` seconds, 1 without).
    var refusal: ConnectFailure {
        guard let status else { return ConnectFailure(cause: "the server refused the WebSocket upgrade") }
        if status == 503 || status == 429 {
            return ConnectFailure(cause: "answered \(status) (retry hint)", retryAfter: retryAfter ?? 1)
        }
        return ConnectFailure(cause: "the server refused the WebSocket upgrade with \(status)")
    }
}
