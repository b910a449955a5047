import NIOCore

/// RFC 6455 framing of server-to-client frames (never masked).
///
/// The hub frames each delivery once and every recipient's socket gets the same bytes: no
/// per-recipient header buffer, no second iovec, no frame encoder in the pipeline.
enum WebSocketFraming {
    static let text: UInt8 = 0x1
    static let close: UInt8 = 0x8
    static let ping: UInt8 = 0x9
    static let pong: UInt8 = 0xA

    /// `payload` as one final text frame: header and payload in one buffer.
    static func textFrame(_ payload: ByteBuffer) -> ByteBuffer {
        frame(opcode: text, payload: payload)
    }

    /// One final frame with `opcode`.
    static func frame(opcode: UInt8, payload: ByteBuffer) -> ByteBuffer {
        let length = payload.readableBytes
        var frame = ByteBuffer()
        frame.reserveCapacity(length + 10)
        frame.writeInteger(0x80 | opcode)  // FIN
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

    /// A close frame: the code, then the reason (at most 123 bytes, cut at a character boundary).
    static func closeFrame(code: UInt16, reason: String) -> ByteBuffer {
        var payload = ByteBuffer()
        payload.writeInteger(code)
        payload.writeString(truncated(reason))
        return frame(opcode: close, payload: payload)
    }

    static func truncated(_ reason: String) -> String {
        guard reason.utf8.count > 123 else { return reason }
        var result = ""
        for character in reason {
            if result.utf8.count + character.utf8.count > 123 { break }
            result.append(character)
        }
        return result
    }
}
