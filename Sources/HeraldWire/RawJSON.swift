public import NIOCore

/// One JSON value kept as the exact bytes it arrived as, already validated.
///
/// Herald never re-encodes user data: `data` and `id` travel through the server byte for byte.
public struct RawJSON: Sendable, Hashable, CustomStringConvertible {
    /// The value's bytes (valid UTF-8, one complete JSON value, no surrounding whitespace).
    public let bytes: ByteBuffer

    /// Validates `bytes` as exactly one JSON value.
    public init(validating bytes: ByteBuffer) throws(JSONSyntaxError) {
        _ = try bytes.withUnsafeReadableBytes { raw throws(JSONSyntaxError) in
            var scanner = JSONScanner(raw.bindMemory(to: UInt8.self))
            return try scanner.scanSingleValue()
        }
        self.bytes = Self.trimmed(bytes)
    }

    /// Validates `text` as exactly one JSON value.
    public init(validating text: String) throws(JSONSyntaxError) {
        try self.init(validating: ByteBuffer(string: text))
    }

    /// Wraps bytes the caller has already validated (a slice cut by ``JSONScanner``).
    init(trusted bytes: ByteBuffer) {
        self.bytes = bytes
    }

    /// The JSON text.
    public var text: String { String(buffer: bytes) }
    public var description: String { text }

    private static func trimmed(_ buffer: ByteBuffer) -> ByteBuffer {
        buffer.withUnsafeReadableBytes { raw -> ByteBuffer in
            var start = 0
            var end = raw.count
            while start < end, [0x20, 0x09, 0x0A, 0x0D].contains(raw[start]) { start += 1 }
            while end > start, [0x20, 0x09, 0x0A, 0x0D].contains(raw[end - 1]) { end -= 1 }
            return buffer.getSlice(at: buffer.readerIndex + start, length: end - start) ?? buffer
        }
    }
}
