/// A strict, allocation-light JSON validator that also reports where each top-level field's
/// value starts and ends.
///
/// Herald passes client `data` through to every recipient byte for byte, so it must be sure those
/// bytes are one well-formed JSON value in valid UTF-8: a malformed value would corrupt the frame
/// of every recipient, and invalid UTF-8 in a text frame makes browsers drop the connection.
/// RFC 8259 grammar, nesting bounded by ``maxDepth``.
struct JSONScanner {
    /// Deeper nesting is refused: it protects the scanner's stack and costs nothing real payloads need.
    static let maxDepth = 64

    private let bytes: UnsafeBufferPointer<UInt8>
    private(set) var index: Int = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// A field of the top-level object: its key and the byte range of its value.
    struct Field {
        var key: String
        var valueStart: Int
        var valueEnd: Int
        var kind: JSONKind
    }

    /// Scans a whole document that must be one object; returns its fields in order.
    mutating func scanTopLevelObject() throws(JSONSyntaxError) -> [Field] {
        skipWhitespace()
        guard peek() == UInt8(ascii: "{") else {
            throw JSONSyntaxError(isEmpty() ? "empty frame" : "expected a JSON object")
        }
        index += 1
        var fields: [Field] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
        } else {
            while true {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw JSONSyntaxError("expected a field name") }
                let keyStart = index
                let keyHasEscapes = try scanString()
                let key = try decodeString(from: keyStart, to: index, hasEscapes: keyHasEscapes)
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw JSONSyntaxError("expected ':' after a field name") }
                index += 1
                skipWhitespace()
                let valueStart = index
                let kind = try scanValue(depth: 1)
                fields.append(Field(key: key, valueStart: valueStart, valueEnd: index, kind: kind))
                skipWhitespace()
                guard let next = peek() else { throw JSONSyntaxError("unterminated object") }
                index += 1
                if next == UInt8(ascii: "}") { break }
                guard next == UInt8(ascii: ",") else { throw JSONSyntaxError("expected ',' or '}' in object") }
            }
        }
        skipWhitespace()
        guard index == bytes.count else { throw JSONSyntaxError("unexpected bytes after the JSON object") }
        return fields
    }

    /// Scans a whole document that must be one array; returns its elements' byte ranges in order.
    /// Stops with an error past `limit` elements, before keeping more.
    mutating func scanTopLevelArray(limit: Int = .max) throws(JSONSyntaxError) -> [Range<Int>] {
        skipWhitespace()
        guard peek() == UInt8(ascii: "[") else { throw JSONSyntaxError("expected a JSON array") }
        index += 1
        var elements: [Range<Int>] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") {
            index += 1
        } else {
            while true {
                skipWhitespace()
                let start = index
                _ = try scanValue(depth: 1)
                guard elements.count < limit else { throw JSONSyntaxError("more than \(limit) elements") }
                elements.append(start..<index)
                skipWhitespace()
                guard let next = peek() else { throw JSONSyntaxError("unterminated array") }
                index += 1
                if next == UInt8(ascii: "]") { break }
                guard next == UInt8(ascii: ",") else { throw JSONSyntaxError("expected ',' or ']' in array") }
            }
        }
        skipWhitespace()
        guard index == bytes.count else { throw JSONSyntaxError("unexpected bytes after the JSON array") }
        return elements
    }

    /// Scans a whole document that must be exactly one JSON value (any kind).
    mutating func scanSingleValue() throws(JSONSyntaxError) -> JSONKind {
        skipWhitespace()
        guard !isEmpty() else { throw JSONSyntaxError("empty JSON value") }
        let kind = try scanValue(depth: 0)
        skipWhitespace()
        guard index == bytes.count else { throw JSONSyntaxError("unexpected bytes after the JSON value") }
        return kind
    }

    /// Decodes the string literal occupying `start..<end` (quotes included).
    func decodeString(from start: Int, to end: Int, hasEscapes: Bool) throws(JSONSyntaxError) -> String {
        let inner = UnsafeBufferPointer(rebasing: bytes[(start + 1)..<(end - 1)])
        if !hasEscapes {
            // Already validated as UTF-8 by scanString.
            return String(decoding: inner, as: UTF8.self)
        }
        var out: [UInt8] = []
        out.reserveCapacity(inner.count)
        var i = 0
        while i < inner.count {
            let byte = inner[i]
            if byte != UInt8(ascii: "\\") {
                out.append(byte)
                i += 1
                continue
            }
            let escape = inner[i + 1]
            i += 2
            switch escape {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            default:  // "u", checked by scanString
                var scalar = Self.hex4(inner, i)
                i += 4
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 6 <= inner.count, inner[i] == UInt8(ascii: "\\"), inner[i + 1] == UInt8(ascii: "u") else {
                        throw JSONSyntaxError("unpaired UTF-16 surrogate in a \\u escape")
                    }
                    let low = Self.hex4(inner, i + 2)
                    guard (0xDC00...0xDFFF).contains(low) else {
                        throw JSONSyntaxError("unpaired UTF-16 surrogate in a \\u escape")
                    }
                    i += 6
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw JSONSyntaxError("unpaired UTF-16 surrogate in a \\u escape")
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw JSONSyntaxError("invalid \\u escape") }
                out.append(contentsOf: String(Character(unicode)).utf8)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: - Grammar

    private mutating func scanValue(depth: Int) throws(JSONSyntaxError) -> JSONKind {
        guard let byte = peek() else { throw JSONSyntaxError("unexpected end of JSON") }
        switch byte {
        case UInt8(ascii: "\""):
            _ = try scanString()
            return .string
        case UInt8(ascii: "{"):
            try scanObject(depth: depth + 1)
            return .object
        case UInt8(ascii: "["):
            try scanArray(depth: depth + 1)
            return .array
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try scanNumber()
            return .number
        default:
            throw JSONSyntaxError("unexpected character in JSON")
        }
    }

    private mutating func scanObject(depth: Int) throws(JSONSyntaxError) {
        guard depth <= Self.maxDepth else { throw JSONSyntaxError("JSON nested deeper than \(Self.maxDepth) levels") }
        index += 1  // {
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            guard peek() == UInt8(ascii: "\"") else { throw JSONSyntaxError("expected a field name") }
            _ = try scanString()
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw JSONSyntaxError("expected ':' after a field name") }
            index += 1
            skipWhitespace()
            _ = try scanValue(depth: depth)
            skipWhitespace()
            guard let next = peek() else { throw JSONSyntaxError("unterminated object") }
            index += 1
            if next == UInt8(ascii: "}") { return }
            guard next == UInt8(ascii: ",") else { throw JSONSyntaxError("expected ',' or '}' in object") }
        }
    }

    private mutating func scanArray(depth: Int) throws(JSONSyntaxError) {
        guard depth <= Self.maxDepth else { throw JSONSyntaxError("JSON nested deeper than \(Self.maxDepth) levels") }
        index += 1  // [
        skipWhitespace()
        if peek() == UInt8(ascii: "]") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            _ = try scanValue(depth: depth)
            skipWhitespace()
            guard let next = peek() else { throw JSONSyntaxError("unterminated array") }
            index += 1
            if next == UInt8(ascii: "]") { return }
            guard next == UInt8(ascii: ",") else { throw JSONSyntaxError("expected ',' or ']' in array") }
        }
    }

    /// Advances past a string literal, validating escapes and UTF-8. Returns whether it had escapes.
    private mutating func scanString() throws(JSONSyntaxError) -> Bool {
        index += 1  // opening quote
        var hasEscapes = false
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return hasEscapes
            case UInt8(ascii: "\\"):
                hasEscapes = true
                guard index + 1 < bytes.count else { throw JSONSyntaxError("unterminated string") }
                switch bytes[index + 1] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                    UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    index += 2
                case UInt8(ascii: "u"):
                    guard index + 6 <= bytes.count else { throw JSONSyntaxError("truncated \\u escape") }
                    for offset in 2..<6 where Self.hexValue(bytes[index + offset]) == nil {
                        throw JSONSyntaxError("invalid \\u escape")
                    }
                    index += 6
                default:
                    throw JSONSyntaxError("invalid escape in string")
                }
            case 0x00..<0x20:
                throw JSONSyntaxError("control character in string (escape it)")
            case 0x20..<0x80:
                index += 1
            default:
                try scanUTF8Sequence()
            }
        }
        throw JSONSyntaxError("unterminated string")
    }

    /// Validates one multi-byte UTF-8 sequence at `index` (no overlongs, no surrogates, ≤ U+10FFFF).
    private mutating func scanUTF8Sequence() throws(JSONSyntaxError) {
        let lead = bytes[index]
        let length: Int
        var lowerBound: UInt8 = 0x80
        var upperBound: UInt8 = 0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0:
            length = 3
            lowerBound = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED:
            length = 3
            upperBound = 0x9F
        case 0xF0:
            length = 4
            lowerBound = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4:
            length = 4
            upperBound = 0x8F
        default: throw JSONSyntaxError("invalid UTF-8")
        }
        guard index + length <= bytes.count else { throw JSONSyntaxError("invalid UTF-8") }
        let second = bytes[index + 1]
        guard second >= lowerBound && second <= upperBound else { throw JSONSyntaxError("invalid UTF-8") }
        for offset in 2..<length where bytes[index + offset] & 0xC0 != 0x80 {
            throw JSONSyntaxError("invalid UTF-8")
        }
        index += length
    }

    private mutating func scanNumber() throws(JSONSyntaxError) {
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), Self.isDigit(first) else { throw JSONSyntaxError("invalid number") }
        index += 1
        if first != UInt8(ascii: "0") {
            while let byte = peek(), Self.isDigit(byte) { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard let byte = peek(), Self.isDigit(byte) else { throw JSONSyntaxError("invalid number") }
            while let byte = peek(), Self.isDigit(byte) { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let byte = peek(), Self.isDigit(byte) else { throw JSONSyntaxError("invalid number") }
            while let byte = peek(), Self.isDigit(byte) { index += 1 }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONSyntaxError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw JSONSyntaxError("invalid literal") }
        let expected = UnsafeBufferPointer(start: literal.utf8Start, count: count)
        for offset in 0..<count where bytes[index + offset] != expected[offset] {
            throw JSONSyntaxError("invalid literal")
        }
        index += count
    }

    // MARK: - Bytes

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }
    private func isEmpty() -> Bool { index >= bytes.count }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    private static func hex4(_ buffer: UnsafeBufferPointer<UInt8>, _ at: Int) -> UInt32 {
        var value: UInt32 = 0
        for offset in 0..<4 { value = value << 4 | (hexValue(buffer[at + offset]) ?? 0) }
        return value
    }
}

/// The kind of a JSON value.
public enum JSONKind: Sendable, Equatable {
    case object, array, string, number, bool, null
}

/// Why some bytes are not the JSON Herald expects. The message names the first problem found.
public struct JSONSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}
