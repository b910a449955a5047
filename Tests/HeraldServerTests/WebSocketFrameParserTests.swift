import HeraldWire
import NIOCore
import Testing

@testable import HeraldServer

@Suite("WebSocket frame parser")
struct WebSocketFrameParserTests {
    /// A client frame as a browser sends it: masked with `mask`.
    func clientFrame(opcode: UInt8, fin: Bool = true, payload: [UInt8], mask: [UInt8] = [0x12, 0x34, 0x56, 0x78], rsv: UInt8 = 0, masked: Bool = true)
        -> [UInt8]
    {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | rsv | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            bytes.append(maskBit | UInt8(payload.count))
        } else if payload.count <= 65535 {
            bytes.append(maskBit | 126)
            bytes += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            bytes.append(maskBit | 127)
            bytes += (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
        }
        if masked { bytes += mask }
        bytes += payload.enumerated().map { masked ? $0.element ^ mask[$0.offset & 3] : $0.element }
        return bytes
    }

    func parseAll(_ bytes: [UInt8], chunk: Int, maxMessageSize: Int = 1 << 20) throws(WebSocketViolation) -> [WebSocketFrameParser.Frame] {
        var parser = WebSocketFrameParser(maxMessageSize: maxMessageSize)
        var frames: [WebSocketFrameParser.Frame] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + chunk, bytes.count)
            parser.append(ByteBuffer(bytes: bytes[offset..<end]))
            while let frame = try parser.next() { frames.append(frame) }
            offset = end
        }
        return frames
    }

    @Test func everySplitOfAStreamYieldsTheSameFrames() throws {
        let text = Array(#"{"type":"join","room":"r"}"#.utf8)
        let long = Array(String(repeating: "é", count: 200).utf8)  // 400 bytes: 16-bit length
        let stream =
            clientFrame(opcode: 0x1, payload: text)
            + clientFrame(opcode: 0x9, payload: [1, 2, 3])
            + clientFrame(opcode: 0x1, fin: false, payload: Array(long[0..<150]))
            + clientFrame(opcode: 0xA, payload: [])  // control frames may interleave with fragments
            + clientFrame(opcode: 0x0, fin: false, payload: Array(long[150..<300]))
            + clientFrame(opcode: 0x0, payload: Array(long[300...]))
            + clientFrame(opcode: 0x2, payload: [0, 255])
            + clientFrame(opcode: 0x8, payload: [0x03, 0xE8, 0x62, 0x79, 0x65])
        let expected: [WebSocketFrameParser.Frame] = [
            .text(ByteBuffer(bytes: text)), .ping(ByteBuffer(bytes: [1, 2, 3])), .pong,
            .text(ByteBuffer(bytes: long)), .binary(ByteBuffer(bytes: [0, 255])), .close(code: 1000),
        ]
        for chunk in 1...stream.count {
            #expect(try parseAll(stream, chunk: chunk) == expected, "chunk size \(chunk)")
        }
    }

    @Test func sixtyFourBitLengthsParse() throws {
        let payload = [UInt8](repeating: 0x61, count: 70_000)
        #expect(try parseAll(clientFrame(opcode: 0x1, payload: payload), chunk: 4096) == [.text(ByteBuffer(bytes: payload))])
    }

    func violation(_ bytes: [UInt8], maxMessageSize: Int = 1 << 20) -> WebSocketViolation? {
        do {
            _ = try parseAll(bytes, chunk: bytes.count, maxMessageSize: maxMessageSize)
            return nil
        } catch {
            return error
        }
    }

    @Test func protocolViolationsCloseWithTheRightCode() {
        #expect(violation(clientFrame(opcode: 0x1, payload: [1], masked: false))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x1, payload: [1], rsv: 0x40))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x3, payload: [1]))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x9, fin: false, payload: [1]))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x9, payload: [UInt8](repeating: 0, count: 126)))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x0, payload: [1]))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x1, fin: false, payload: [1]) + clientFrame(opcode: 0x1, payload: [1]))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x8, payload: [3]))?.code == .protocolError)
        #expect(violation(clientFrame(opcode: 0x1, payload: [UInt8](repeating: 0, count: 2000)), maxMessageSize: 1024)?.code == .frameTooLarge)
        let fragmented =
            clientFrame(opcode: 0x1, fin: false, payload: [UInt8](repeating: 0, count: 600))
            + clientFrame(opcode: 0x0, payload: [UInt8](repeating: 0, count: 600))
        #expect(violation(fragmented, maxMessageSize: 1024)?.code == .frameTooLarge)
    }

    /// Autobahn 6.x: text that is not valid UTF-8 fails the connection with 1007, whole or
    /// fragmented (checked when the message is complete: NON-STRICT in Autobahn's terms).
    @Test func invalidUTF8TextClosesWith1007() throws {
        for bytes: [UInt8] in [
            [0xFF], [0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80, 0x65, 0x64, 0x69, 0x74, 0x65, 0x64], [0xC0, 0xAF],
            [0xF4, 0x90, 0x80, 0x80], [0xE0, 0x80],
        ] {
            #expect(violation(clientFrame(opcode: 0x1, payload: bytes))?.code == .invalidPayload, "\(bytes)")
            let split = bytes.count / 2
            let fragmented = clientFrame(opcode: 0x1, fin: false, payload: Array(bytes[..<split])) + clientFrame(opcode: 0x0, payload: Array(bytes[split...]))
            #expect(violation(fragmented)?.code == .invalidPayload, "fragmented \(bytes)")
        }
        // A character split across fragments is fine once the message is whole; binary is not checked.
        let euro: [UInt8] = [0xE2, 0x82, 0xAC]
        let split = clientFrame(opcode: 0x1, fin: false, payload: [euro[0]]) + clientFrame(opcode: 0x0, payload: Array(euro[1...]))
        #expect(try parseAll(split, chunk: 1) == [.text(ByteBuffer(bytes: euro))])
        #expect(try parseAll(clientFrame(opcode: 0x2, payload: [0xFF]), chunk: 3) == [.binary(ByteBuffer(bytes: [0xFF]))])
    }

    /// Autobahn 7.x: close codes a peer may not send fail with 1002; a close reason that is not
    /// UTF-8 fails with 1007.
    @Test func invalidCloseCodesAndReasonsAreProtocolErrors() throws {
        func close(_ code: UInt16, reason: [UInt8] = []) -> [UInt8] {
            clientFrame(opcode: 0x8, payload: [UInt8(code >> 8), UInt8(code & 0xFF)] + reason)
        }
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            #expect(violation(close(code))?.code == .protocolError, "\(code)")
        }
        for code: UInt16 in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            #expect(try parseAll(close(code, reason: Array("bye".utf8)), chunk: 2) == [.close(code: code)], "\(code)")
        }
        #expect(violation(close(1000, reason: [0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xED, 0xA0, 0x80]))?.code == .invalidPayload)
        #expect(try parseAll(clientFrame(opcode: 0x8, payload: []), chunk: 1) == [.close(code: nil)])
    }

    @Test func serverFramesHaveTheRightHeader() {
        #expect(Array(WebSocketFraming.textFrame(ByteBuffer(string: "hi")).readableBytesView) == [0x81, 2, 0x68, 0x69])
        let medium = WebSocketFraming.textFrame(ByteBuffer(bytes: [UInt8](repeating: 0, count: 300)))
        #expect(Array(medium.readableBytesView.prefix(4)) == [0x81, 126, 0x01, 0x2C])
        let large = WebSocketFraming.textFrame(ByteBuffer(bytes: [UInt8](repeating: 0, count: 70_000)))
        #expect(Array(large.readableBytesView.prefix(10)) == [0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70])
        let close = WebSocketFraming.closeFrame(code: 4001, reason: String(repeating: "é", count: 100))
        #expect(close.readableBytes == 2 + 2 + 122)  // reason cut to 122 bytes, not inside a character
    }
}
