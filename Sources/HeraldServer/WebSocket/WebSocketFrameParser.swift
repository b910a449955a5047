import HeraldWire
import NIOCore

/// Parses the frames a client sends (RFC 6455, server side), straight from socket reads.
///
/// Herald runs one channel handler per connection instead of NIO's decoder, fragment
/// aggregator and error handler: three fewer handlers (and their buffers) on every idle
/// connection. Bytes are kept only while a frame is incomplete; an idle connection holds none.
struct WebSocketFrameParser {
    /// A complete message or control frame from the client.
    enum Frame: Equatable {
        case text(ByteBuffer)
        case binary(ByteBuffer)
        case ping(ByteBuffer)
        case pong
        case close(code: UInt16?)
    }

    /// Largest message (all fragments together) accepted; larger closes with 1009.
    let maxMessageSize: Int
    private var pending: ByteBuffer?
    /// The message being reassembled from fragments, and its opcode.
    private var fragments: ByteBuffer?
    private var fragmentOpcode: UInt8 = 0

    init(maxMessageSize: Int) {
        self.maxMessageSize = maxMessageSize
    }

    /// Bytes read but not yet parsed into frames.
    var bufferedBytes: Int { pending?.readableBytes ?? 0 }

    /// Adds bytes read from the socket.
    mutating func append(_ bytes: ByteBuffer) {
        if pending == nil {
            pending = bytes
        } else {
            var bytes = bytes
            pending!.writeBuffer(&bytes)
        }
    }

    /// The next complete frame, `nil` when more bytes are needed.
    /// - Throws: ``WebSocketViolation`` with the close code to answer with.
    mutating func next() throws(WebSocketViolation) -> Frame? {
        while true {
            guard var buffer = pending else { return nil }
            guard let frame = try parseOne(&buffer) else {
                pending = buffer
                return nil
            }
            pending = buffer.readableBytes > 0 ? buffer : nil
            if let frame = try reassemble(frame) { return frame }
        }
    }

    private struct RawFrame {
        var fin: Bool
        var opcode: UInt8
        var payload: ByteBuffer
    }

    private mutating func parseOne(_ buffer: inout ByteBuffer) throws(WebSocketViolation) -> RawFrame? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self),
            let second = buffer.getInteger(at: start + 1, as: UInt8.self)
        else { return nil }
        guard first & 0x70 == 0 else { throw WebSocketViolation(.protocolError, "reserved bits set (no extension was negotiated)") }
        guard second & 0x80 != 0 else { throw WebSocketViolation(.protocolError, "client frames must be masked") }
        let fin = first & 0x80 != 0
        let opcode = first & 0x0F
        var headerLength = 2
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let extended = buffer.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = Int(extended)
            headerLength += 2
        } else if length == 127 {
            guard let extended = buffer.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            guard extended <= UInt64(Int32.max) else { throw WebSocketViolation(.frameTooLarge, "frame larger than \(maxMessageSize) bytes") }
            length = Int(extended)
            headerLength += 8
        }
        if opcode >= 0x8 {
            guard fin, length <= 125 else { throw WebSocketViolation(.protocolError, "control frames must be final and at most 125 bytes") }
        } else if length > maxMessageSize {
            throw WebSocketViolation(.frameTooLarge, "frame larger than \(maxMessageSize) bytes")
        }
        guard let mask = buffer.getBytes(at: start + headerLength, length: 4) else { return nil }
        let payloadStart = start + headerLength + 4
        guard buffer.writerIndex - payloadStart >= length else { return nil }
        // Unmask in place: the read buffer is ours alone.
        buffer.withUnsafeMutableReadableBytes { bytes in
            let offset = payloadStart - start
            for index in 0..<length { bytes[offset + index] ^= mask[index & 3] }
        }
        buffer.moveReaderIndex(to: payloadStart)
        let payload = buffer.readSlice(length: length)!
        return RawFrame(fin: fin, opcode: opcode, payload: payload)
    }

    private mutating func reassemble(_ frame: RawFrame) throws(WebSocketViolation) -> Frame? {
        switch frame.opcode {
        case 0x0:
            guard var message = fragments else { throw WebSocketViolation(.protocolError, "continuation frame without a message to continue") }
            guard message.readableBytes + frame.payload.readableBytes <= maxMessageSize else {
                throw WebSocketViolation(.frameTooLarge, "message larger than \(maxMessageSize) bytes")
            }
            var payload = frame.payload
            message.writeBuffer(&payload)
            guard frame.fin else {
                fragments = message
                return nil
            }
            fragments = nil
            return fragmentOpcode == 0x1 ? .text(try Self.validText(message)) : .binary(message)
        case 0x1, 0x2:
            guard fragments == nil else { throw WebSocketViolation(.protocolError, "new message before the previous one was finished") }
            guard frame.fin else {
                fragments = frame.payload
                fragmentOpcode = frame.opcode
                return nil
            }
            return frame.opcode == 0x1 ? .text(try Self.validText(frame.payload)) : .binary(frame.payload)
        case 0x8:
            var payload = frame.payload
            guard payload.readableBytes != 1 else { throw WebSocketViolation(.protocolError, "close frame with a 1-byte payload") }
            guard let code = payload.readInteger(as: UInt16.self) else { return .close(code: nil) }
            guard Self.isValidCloseCode(code) else { throw WebSocketViolation(.protocolError, "close code \(code) is not one a peer may send") }
            guard String(validating: payload.readableBytesView, as: UTF8.self) != nil else {
                throw WebSocketViolation(.invalidPayload, "close reason is not valid UTF-8")
            }
            return .close(code: code)
        case 0x9:
            return .ping(frame.payload)
        case 0xA:
            return .pong
        default:
            throw WebSocketViolation(.protocolError, "unknown opcode \(frame.opcode)")
        }
    }
}

extension WebSocketFrameParser {
    /// A complete text message, checked as UTF-8 (RFC 6455, 8.1: otherwise fail with 1007).
    static func validText(_ message: ByteBuffer) throws(WebSocketViolation) -> ByteBuffer {
        // ASCII (most JSON frames) is valid UTF-8: checked without building a String.
        let isASCII = message.withUnsafeReadableBytes { bytes in bytes.allSatisfy { $0 < 0x80 } }
        guard isASCII || String(validating: message.readableBytesView, as: UTF8.self) != nil else {
            throw WebSocketViolation(.invalidPayload, "text message is not valid UTF-8")
        }
        return message
    }

    /// Codes a peer may put in a close frame (RFC 6455, 7.4): the defined ones it may send
    /// (1005, 1006 and 1015 are reserved for reporting, never sent), and 3000 to 4999.
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }
}

/// A client broke the WebSocket protocol; the connection is closed with `code`.
struct WebSocketViolation: Error, Equatable {
    let code: CloseCode
    let reason: String

    init(_ code: CloseCode, _ reason: String) {
        self.code = code
        self.reason = reason
    }
}
