// Fuzzes `WebSocketFrameParser` (HeraldServer, internal: `@testable import`).
//
// Input: byte 0 picks the mode (bit 7) and the message-size limit (bits 0-6, see `limits`),
// byte 1 seeds how the stream is split into socket reads and the masks; the rest is
//   - raw mode (bit 7 clear): the bytes a client sends;
//   - program mode (bit 7 set): a list of messages to encode as valid client frames (`Program`).
//
// Raw mode checks that the parser yields the same frames and the same violation whether the
// stream arrives at once or in small reads; that bytes are consumed monotonically; that every
// frame respects the limits (message ≤ limit, control ≤ 125 bytes, text is UTF-8, close codes
// are ones a peer may send); and that each frame, encoded again, parses back to itself.
// Program mode checks that valid frames (any masks, length encodings, fragmentation and
// interleaved control frames) give back exactly the messages encoded, or 1009 when over the limit.
import FuzzSupport
import HeraldWire
import NIOCore

@testable import HeraldServer

typealias Frame = WebSocketFrameParser.Frame

let limits = [0, 1, 2, 3, 16, 125, 126, 127, 200, 1000, 4096, 65535, 65536, 1 << 20]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWebSocketFrame(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    guard input.count >= 2 else { return 0 }
    let limit = limits[Int(input[0] & 0x7F) % limits.count]
    var generator = SplitMix(seed: UInt64(input[1]) << 32 | UInt64(input.count))
    let rest = Array(input[2...])
    if input[0] & 0x80 == 0 {
        fuzzRawStream(rest, limit: limit, generator: &generator)
    } else {
        fuzzProgram(rest, limit: limit, generator: &generator)
    }
    return 0
}

// MARK: - Parsing with checks

struct Outcome: Equatable {
    var frames: [Frame] = []
    var violation: WebSocketViolation?
    /// Bytes still buffered when the stream ended (only meaningful without a violation).
    var leftover = 0
}

/// Feeds `stream` in reads of `sizes` bytes, checking the parser's bookkeeping at every step.
func parse(_ stream: [UInt8], limit: Int, sizes: [Int]) -> Outcome {
    var parser = WebSocketFrameParser(maxMessageSize: limit)
    var outcome = Outcome()
    var appended = 0
    var consumed = 0
    var payloadBytes = 0
    var offset = 0
    for size in sizes {
        let before = parser.bufferedBytes
        parser.append(ByteBuffer(bytes: stream[offset..<(offset + size)]))
        offset += size
        appended += size
        invariant(parser.bufferedBytes == before + size, "append of \(size) bytes: buffered \(before) → \(parser.bufferedBytes)")
        while true {
            let buffered = parser.bufferedBytes
            let frame: Frame?
            do {
                frame = try parser.next()
            } catch {
                outcome.violation = error
                invariant(!error.reason.isEmpty, "violation without a reason")
                return outcome
            }
            invariant(parser.bufferedBytes <= buffered, "next() grew the buffer: \(buffered) → \(parser.bufferedBytes)")
            let nowConsumed = appended - parser.bufferedBytes
            invariant(nowConsumed >= consumed && nowConsumed <= appended, "consumed \(consumed) → \(nowConsumed) of \(appended)")
            consumed = nowConsumed
            guard let frame else {
                // Asking again without new bytes changes nothing.
                let waiting = parser.bufferedBytes
                do {
                    let again = try parser.next()
                    invariant(again == nil, "a second next() without new bytes returned \(String(describing: again))")
                } catch {
                    invariant(false, "a second next() without new bytes threw \(error)")
                }
                invariant(parser.bufferedBytes == waiting, "a second next() without new bytes consumed bytes")
                break
            }
            check(frame, limit: limit)
            payloadBytes += payloadCount(frame)
            invariant(payloadBytes <= consumed, "\(payloadBytes) payload bytes out of \(consumed) consumed")
            outcome.frames.append(frame)
        }
    }
    invariant(offset == stream.count, "reads do not cover the stream")
    outcome.leftover = parser.bufferedBytes
    return outcome
}

func check(_ frame: Frame, limit: Int) {
    switch frame {
    case .text(let payload):
        invariant(payload.readableBytes <= limit, "text message of \(payload.readableBytes) bytes over the limit \(limit)")
        invariant(isValidUTF8(payload.readableBytesView), "text message not UTF-8: \(hex(payload))")
    case .binary(let payload):
        invariant(payload.readableBytes <= limit, "binary message of \(payload.readableBytes) bytes over the limit \(limit)")
    case .ping(let payload):
        invariant(payload.readableBytes <= 125, "ping of \(payload.readableBytes) bytes")
    case .pong:
        break
    case .close(let code):
        if let code {
            invariant(WebSocketFrameParser.isValidCloseCode(code), "close code \(code) accepted")
            invariant((1000...1003).contains(code) || (1007...1014).contains(code) || (3000...4999).contains(code), "close code \(code) accepted")
        }
    }
}

func payloadCount(_ frame: Frame) -> Int {
    switch frame {
    case .text(let payload), .binary(let payload), .ping(let payload): payload.readableBytes
    case .pong, .close: 0
    }
}

// MARK: - Raw mode

func fuzzRawStream(_ stream: [UInt8], limit: Int, generator: inout SplitMix) {
    let whole = parse(stream, limit: limit, sizes: stream.isEmpty ? [] : [stream.count])
    let split = parse(stream, limit: limit, sizes: readSizes(total: stream.count, using: &generator))
    invariant(whole.frames == split.frames, "frames differ when the stream is split: \(whole.frames) vs \(split.frames)")
    invariant(
        whole.violation == split.violation,
        "violation differs when the stream is split: \(String(describing: whole.violation)) vs \(String(describing: split.violation))")
    if whole.violation == nil {
        invariant(whole.leftover == split.leftover, "leftover differs when split: \(whole.leftover) vs \(split.leftover)")
    }
    // Every frame, encoded again by a client, parses back to itself.
    for frame in whole.frames {
        var encoded: [UInt8] = []
        switch frame {
        case .text(let payload): encoded = encode(opcode: 0x1, payload: Array(payload.readableBytesView), generator: &generator)
        case .binary(let payload): encoded = encode(opcode: 0x2, payload: Array(payload.readableBytesView), generator: &generator)
        case .ping(let payload): encoded = encode(opcode: 0x9, payload: Array(payload.readableBytesView), generator: &generator)
        case .pong: encoded = encode(opcode: 0xA, payload: [], generator: &generator)
        case .close(let code?): encoded = encode(opcode: 0x8, payload: [UInt8(code >> 8), UInt8(code & 0xFF)], generator: &generator)
        case .close(nil): encoded = encode(opcode: 0x8, payload: [], generator: &generator)
        }
        let again = parse(encoded, limit: limit, sizes: readSizes(total: encoded.count, using: &generator))
        invariant(
            again.violation == nil && again.frames == [frame] && again.leftover == 0,
            "\(frame) encoded as \(hex(encoded)) parses as \(again)")
    }
}

// MARK: - Encoding (as a client does)

/// One masked client frame; the length in its shortest form or, at random, a longer one.
func encode(opcode: UInt8, fin: Bool = true, payload: [UInt8], generator: inout SplitMix) -> [UInt8] {
    var bytes: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    let form = generator.next() % 8
    if payload.count < 126 && form < 6 {
        bytes.append(0x80 | UInt8(payload.count))
    } else if payload.count <= 0xFFFF && form < 7 {
        bytes.append(0x80 | 126)
        bytes += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
    } else {
        bytes.append(0x80 | 127)
        bytes += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> ($0 * 8)) & 0xFF) }
    }
    let maskWord = generator.next() % 5 == 0 ? 0 : generator.next()
    let mask = (0..<4).map { UInt8((maskWord >> ($0 * 8)) & 0xFF) }
    bytes += mask
    bytes += payload.enumerated().map { $0.element ^ mask[$0.offset & 3] }
    return bytes
}

// MARK: - Program mode

/// Reads the program: each message is an op byte and a length byte (at most 16 messages).
///
/// op % 7: 0 text, 1 binary, 2 ping, 3 pong, 4 close, 5 fragmented text, 6 fragmented binary;
/// op bit 7: length × 17 (up to 4335 bytes: 16-bit lengths); bit 6: non-ASCII text; bit 5: a
/// ping between fragments; bits 3-4: number of extra fragments.
func fuzzProgram(_ program: [UInt8], limit: Int, generator: inout SplitMix) {
    var wire: [UInt8] = []
    var expected: [Frame] = []
    var expectedViolation: CloseCode?
    var index = 0
    let closeCodes: [UInt16?] = [nil, 1000, 1001, 1003, 1007, 1011, 1014, 3000, 4000, 4999]

    program: while index + 1 < program.count && index < 2 * 16 && wire.count < 8 * 1024 {
        let op = program[index]
        var length = Int(program[index + 1])
        index += 2
        if op & 0x80 != 0 { length *= 17 }
        switch op % 7 {
        case 0, 1, 5, 6:
            let isText = op % 7 == 0 || op % 7 == 5
            let payload = isText ? text(length, nonASCII: op & 0x40 != 0, generator: &generator) : bytes(length, generator: &generator)
            let pieces = op % 7 >= 5 ? split(payload, into: 2 + Int((op >> 3) & 0x03), generator: &generator) : [payload]
            var total = 0
            for (number, piece) in pieces.enumerated() {
                let opcode: UInt8 = number > 0 ? 0x0 : (isText ? 0x1 : 0x2)
                wire += encode(opcode: opcode, fin: number == pieces.count - 1, payload: piece, generator: &generator)
                total += piece.count
                if total > limit {
                    expectedViolation = .frameTooLarge
                    break program
                }
                if number == 0 && pieces.count > 1 && op & 0x20 != 0 {
                    let ping = bytes(Int(generator.next() % 126), generator: &generator)
                    wire += encode(opcode: 0x9, payload: ping, generator: &generator)
                    expected.append(.ping(ByteBuffer(bytes: ping)))
                }
            }
            let message = ByteBuffer(bytes: payload)
            expected.append(isText ? .text(message) : .binary(message))
        case 2:
            let payload = bytes(length % 126, generator: &generator)
            wire += encode(opcode: 0x9, payload: payload, generator: &generator)
            expected.append(.ping(ByteBuffer(bytes: payload)))
        case 3:
            wire += encode(opcode: 0xA, payload: bytes(length % 126, generator: &generator), generator: &generator)
            expected.append(.pong)
        default:
            let code = closeCodes[length % closeCodes.count]
            var payload: [UInt8] = []
            if let code {
                payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + text(Int(generator.next() % 40), nonASCII: op & 0x40 != 0, generator: &generator)
                payload = Array(payload.prefix(125))
                if !isValidUTF8(payload[2...]) { payload = Array(payload.prefix(2)) }
            }
            wire += encode(opcode: 0x8, payload: payload, generator: &generator)
            expected.append(.close(code: code))
        }
    }

    let outcome = parse(wire, limit: limit, sizes: readSizes(total: wire.count, using: &generator))
    invariant(outcome.frames == expected, "program frames: expected \(expected), got \(outcome.frames) (limit \(limit))")
    invariant(
        outcome.violation?.code == expectedViolation,
        "expected violation \(String(describing: expectedViolation)), got \(String(describing: outcome.violation))")
    if expectedViolation == nil {
        invariant(outcome.leftover == 0, "\(outcome.leftover) bytes left over after complete frames")
    }
}

func bytes(_ count: Int, generator: inout SplitMix) -> [UInt8] {
    (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
}

/// About `count` bytes of valid UTF-8 (never more than `count`).
func text(_ count: Int, nonASCII: Bool, generator: inout SplitMix) -> [UInt8] {
    let pieces: [[UInt8]] =
        nonASCII
        ? [[0x61], [0x7B], Array("é".utf8), Array("€".utf8), Array("𝄞".utf8), Array("\u{0}".utf8)]
        : [[0x61], [0x7B], [0x22], [0x20], [0x7D], [0x3A]]
    var out: [UInt8] = []
    while out.count < count {
        let piece = pieces[Int(generator.next() % UInt64(pieces.count))]
        if out.count + piece.count > count { out += [UInt8](repeating: 0x62, count: count - out.count) } else { out += piece }
    }
    return out
}

func split(_ payload: [UInt8], into count: Int, generator: inout SplitMix) -> [[UInt8]] {
    var cuts = (0..<(count - 1)).map { _ in Int(generator.next() % UInt64(payload.count + 1)) }
    cuts.sort()
    var pieces: [[UInt8]] = []
    var start = 0
    for cut in cuts + [payload.count] {
        pieces.append(Array(payload[start..<cut]))
        start = cut
    }
    return pieces
}
