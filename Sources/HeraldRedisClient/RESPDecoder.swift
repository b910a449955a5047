public import NIOCore

/// A streaming RESP3 (and RESP2) decoder: one value per call, `nil` until the bytes of a
/// whole value have arrived.
///
/// Partial reads cost no copies: a bulk string is sliced out only once all of it is there,
/// and an incomplete value is re-scanned from its start only up to the point where bytes run
/// out (headers, not payloads). Nesting is bounded by ``maxDepth`` and lengths by
/// ``maxBulkLength``, so a hostile or broken peer cannot exhaust the stack or memory.
public struct RESPDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = RESPValue

    /// Deepest aggregate nesting accepted.
    public var maxDepth = 32
    /// Largest bulk string accepted (Redis's own proto-max-bulk-len default is 512 MB).
    public var maxBulkLength = 512 * 1024 * 1024
    /// Most elements accepted in one aggregate.
    public var maxAggregateCount = 16 * 1024 * 1024

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> RESPValue? {
        var copy = buffer
        guard let value = try parseValue(&copy, depth: 0) else { return nil }
        buffer = copy
        return value
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> RESPValue? {
        try decode(buffer: &buffer)
    }

    private func parseValue(_ buffer: inout ByteBuffer, depth: Int) throws(RESPError) -> RESPValue? {
        guard depth <= maxDepth else { throw RESPError.protocolViolation("aggregate nested deeper than \(maxDepth)") }
        guard let marker = buffer.readInteger(as: UInt8.self) else { return nil }
        switch marker {
        case UInt8(ascii: "+"):
            return try readLine(&buffer).map { .simpleString(String(buffer: $0)) }
        case UInt8(ascii: "-"):
            return try readLine(&buffer).map { .simpleError(String(buffer: $0)) }
        case UInt8(ascii: ":"):
            guard let line = try readLine(&buffer) else { return nil }
            return .integer(try integer(line))
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            guard let line = try readLine(&buffer) else { return nil }
            let length = try integer(line)
            if length == -1, marker == UInt8(ascii: "$") { return .bulkString(nil) }
            guard length >= 0, length <= maxBulkLength else { throw RESPError.protocolViolation("bulk length \(length) out of range") }
            guard buffer.readableBytes >= Int(length) + 2 else { return nil }
            let payload = buffer.readSlice(length: Int(length))!
            guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw RESPError.protocolViolation("bulk string not followed by CRLF") }
            switch marker {
            case UInt8(ascii: "$"): return .bulkString(payload)
            case UInt8(ascii: "!"): return .bulkError(payload)
            default:
                var text = payload
                guard let format = text.readString(length: 3), text.readInteger(as: UInt8.self) == UInt8(ascii: ":") else {
                    throw RESPError.protocolViolation("verbatim string without a format")
                }
                return .verbatimString(format: format, text: text)
            }
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"):
            guard let count = try aggregateCount(&buffer, allowNull: marker == UInt8(ascii: "*")) else { return nil }
            guard let count else { return .array(nil) }
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(count, 1024))
            for _ in 0..<count {
                guard let element = try parseValue(&buffer, depth: depth + 1) else { return nil }
                elements.append(element)
            }
            switch marker {
            case UInt8(ascii: "*"): return .array(elements)
            case UInt8(ascii: "~"): return .set(elements)
            default: return .push(elements)
            }
        case UInt8(ascii: "%"), UInt8(ascii: "|"):
            guard let count = try aggregateCount(&buffer, allowNull: false) else { return nil }
            var pairs: [(key: RESPValue, value: RESPValue)] = []
            for _ in 0..<(count ?? 0) {
                guard let key = try parseValue(&buffer, depth: depth + 1), let value = try parseValue(&buffer, depth: depth + 1) else { return nil }
                pairs.append((key, value))
            }
            if marker == UInt8(ascii: "%") { return .map(pairs) }
            guard let reply = try parseValue(&buffer, depth: depth + 1) else { return nil }
            return .attribute(pairs, reply)
        case UInt8(ascii: "_"):
            guard let line = try readLine(&buffer) else { return nil }
            guard line.readableBytes == 0 else { throw RESPError.protocolViolation("null with a payload") }
            return .null
        case UInt8(ascii: "#"):
            guard let line = try readLine(&buffer) else { return nil }
            switch String(buffer: line) {
            case "t": return .boolean(true)
            case "f": return .boolean(false)
            default: throw RESPError.protocolViolation("boolean must be t or f")
            }
        case UInt8(ascii: ","):
            guard let line = try readLine(&buffer) else { return nil }
            let text = String(buffer: line)
            switch text {
            case "inf": return .double(.infinity)
            case "-inf": return .double(-.infinity)
            case "nan": return .double(.nan)
            default:
                guard let value = Double(text) else { throw RESPError.protocolViolation("invalid double \(text.prefix(32))") }
                return .double(value)
            }
        case UInt8(ascii: "("):
            guard let line = try readLine(&buffer) else { return nil }
            let text = String(buffer: line)
            // An optional sign, then ASCII digits (Character.isNumber would also take "½" and "٣").
            let digits = text.utf8.first == UInt8(ascii: "-") || text.utf8.first == UInt8(ascii: "+") ? text.utf8.dropFirst() : text.utf8[...]
            guard !digits.isEmpty, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw RESPError.protocolViolation("invalid big number")
            }
            return .bigNumber(text)
        default:
            throw RESPError.protocolViolation("unknown type byte \(marker)")
        }
    }

    /// The line up to CRLF (not included), or `nil` when the CRLF has not arrived.
    private func readLine(_ buffer: inout ByteBuffer) throws(RESPError) -> ByteBuffer? {
        let view = buffer.readableBytesView
        guard let cr = view.firstIndex(of: 0x0D) else {
            // A line longer than any header Redis sends, still without its CRLF: not RESP.
            if view.count > 64 * 1024 { throw RESPError.protocolViolation("line longer than 64 KiB") }
            return nil
        }
        let length = cr - view.startIndex
        guard buffer.readableBytes >= length + 2 else { return nil }
        let line = buffer.readSlice(length: length)!
        guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw RESPError.protocolViolation("CR without LF") }
        return line
    }

    private func integer(_ line: ByteBuffer) throws(RESPError) -> Int64 {
        guard let value = Int64(String(buffer: line)) else { throw RESPError.protocolViolation("invalid integer") }
        return value
    }

    /// `.some(nil)` for a null aggregate, `nil` when incomplete.
    private func aggregateCount(_ buffer: inout ByteBuffer, allowNull: Bool) throws(RESPError) -> Int?? {
        guard let line = try readLine(&buffer) else { return nil }
        let count = try integer(line)
        if count == -1, allowNull { return .some(nil) }
        guard count >= 0, count <= maxAggregateCount else { throw RESPError.protocolViolation("aggregate length \(count) out of range") }
        return .some(Int(count))
    }
}

/// What went wrong talking RESP; the message says what to check.
public struct RESPError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { message }

    static func protocolViolation(_ detail: String) -> RESPError {
        RESPError(message: "not a valid RESP reply (\(detail)): is the peer a Redis server?")
    }
}
