public import NIOCore

/// A validated JSON object with access to its top-level fields; values stay as raw bytes
/// until asked for. Used for client frames and HTTP API bodies.
///
/// When a key occurs more than once the last occurrence wins, as in JavaScript.
public struct JSONObject: Sendable {
    private let buffer: ByteBuffer
    private let fields: [JSONScanner.Field]

    /// Validates `buffer` as one JSON object (strict RFC 8259, valid UTF-8, bounded nesting).
    public init(parsing buffer: ByteBuffer) throws(JSONSyntaxError) {
        self.buffer = buffer
        self.fields = try buffer.withUnsafeReadableBytes { raw throws(JSONSyntaxError) in
            var scanner = JSONScanner(raw.bindMemory(to: UInt8.self))
            return try scanner.scanTopLevelObject()
        }
    }

    public var keys: [String] { fields.map(\.key) }

    /// The raw bytes of the field's value, or `nil` when absent.
    public func raw(_ key: String) -> RawJSON? {
        guard let field = field(key) else { return nil }
        // Safe: the scanner validated exactly this range.
        return RawJSON(trusted: buffer.getSlice(at: buffer.readerIndex + field.valueStart, length: field.valueEnd - field.valueStart)!)
    }

    /// The kind of the field's value, or `nil` when absent.
    public func kind(_ key: String) -> JSONKind? { field(key)?.kind }

    /// A field that must be present.
    public func required(_ key: String) -> Result<RawJSON, ClientFrameError> {
        guard let value = raw(key) else { return .failure(ClientFrameError(id: nil, message: "missing field \"\(key)\"")) }
        return .success(value)
    }

    /// The decoded string value of the field; `nil` when absent, an error when not a string.
    public func string(_ key: String) -> Result<String?, ClientFrameError> {
        guard let field = field(key) else { return .success(nil) }
        guard field.kind == .string else {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" must be a string"))
        }
        do {
            let value = try buffer.withUnsafeReadableBytes { raw throws(JSONSyntaxError) in
                let scanner = JSONScanner(raw.bindMemory(to: UInt8.self))
                let hasEscapes = raw[field.valueStart..<field.valueEnd].contains(UInt8(ascii: "\\"))
                return try scanner.decodeString(from: field.valueStart, to: field.valueEnd, hasEscapes: hasEscapes)
            }
            return .success(value)
        } catch {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\": \(error.message)"))
        }
    }

    /// A required room or user name (see ``Name``).
    public func name(_ key: String) -> Result<String, ClientFrameError> {
        switch string(key) {
        case .failure(let error): return .failure(error)
        case .success(nil): return .failure(ClientFrameError(id: nil, message: "missing field \"\(key)\""))
        case .success(let value?):
            if let problem = Name.problem(value) {
                return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" \(problem)"))
            }
            return .success(value)
        }
    }

    /// A non-negative integer field; `nil` when absent, an error when not a whole number.
    public func integer(_ key: String) -> Result<Int64?, ClientFrameError> {
        guard let field = field(key) else { return .success(nil) }
        let text = buffer.getString(at: buffer.readerIndex + field.valueStart, length: field.valueEnd - field.valueStart) ?? ""
        guard field.kind == .number, let value = Int64(text), value >= 0 else {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" must be a non-negative integer"))
        }
        return .success(value)
    }

    /// A nested object field; `nil` when absent, an error when not an object.
    public func object(_ key: String) -> Result<JSONObject?, ClientFrameError> {
        guard let field = field(key), let value = raw(key) else { return .success(nil) }
        guard field.kind == .object, let nested = try? JSONObject(parsing: value.bytes) else {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" must be an object"))
        }
        return .success(nested)
    }

    /// The elements of an array field, as raw JSON; `nil` when absent, an error when not an
    /// array or longer than `limit` (found before the elements are kept).
    public func array(_ key: String, limit: Int = .max) -> Result<[RawJSON]?, ClientFrameError> {
        guard let field = field(key), let value = raw(key) else { return .success(nil) }
        guard field.kind == .array else {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" must be an array"))
        }
        let bytes = value.bytes
        // Validated already (as part of this object): splitting it fails only past `limit`.
        let ranges: [Range<Int>]
        do {
            ranges = try bytes.withUnsafeReadableBytes { raw throws(JSONSyntaxError) -> [Range<Int>] in
                var scanner = JSONScanner(raw.bindMemory(to: UInt8.self))
                return try scanner.scanTopLevelArray(limit: limit)
            }
        } catch {
            return .failure(ClientFrameError(id: nil, message: "field \"\(key)\" has more than \(limit) elements"))
        }
        return .success(ranges.map { RawJSON(trusted: bytes.getSlice(at: bytes.readerIndex + $0.lowerBound, length: $0.count)!) })
    }

    private func field(_ key: String) -> JSONScanner.Field? {
        fields.last { $0.key == key }
    }
}
