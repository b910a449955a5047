import NIOCore

/// RFC 6455 framing of a server-to-client text message, done once per message.
///
/// The hub frames each delivery once and every recipient's socket gets the same bytes: no
/// per-recipient header buffer, no second iovec, no trip through the frame encoder.
enum WebSocketFraming {
    /// `payload` as one unmasked, final text frame: header and payload in one buffer.
    static func textFrame(_ payload: ByteBuffer) -> ByteBuffer {
        let length = payload.readableBytes
        var frame = ByteBuffer()
        frame.reserveCapacity(length + 10)
        frame.writeInteger(UInt8(0x81))  // FIN + text
        if length < 126 {
            frame.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            frame.writeInteger(UInt8(126))
            frame.writeInteger(UInt16(length))
        } else {
            frame.writeInteger(UInt8(127))
            frame.writeInteger(UInt64(length))
        }
        var payload = payload
        frame.writeBuffer(&payload)
        return frame
    }
}
