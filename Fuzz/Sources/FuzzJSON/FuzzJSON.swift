// Fuzzes HeraldWire's `JSONScanner` (internal: `@testable import`) and what is built on it,
// `RawJSON(validating:)` and `JSONObject(parsing:)`.
//
// Input: any bytes, taken as a JSON document.
//
// Checks: what is accepted is valid UTF-8; the two entry points agree (a top-level object
// scans as a single value of kind object, and vice versa unless a key has a `\u` escape that
// does not decode); every field's value range is in order, inside the input, and re-scans as a
// single value of the same kind; keys and string values survive `writeJSONString` and decoding
// again; `RawJSON` is trimmed and re-validates to the same bytes; a value nested one level
// deeper (in an object and in an array) is still accepted, unless that crosses the depth limit;
// and Foundation's `JSONSerialization` accepts what the scanner accepts (differential).
import Foundation
import FuzzSupport
import NIOCore

@testable import HeraldWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    let single = scanSingle(input)
    let object = scanObject(input)

    if case .success = single { invariant(isValidUTF8(input), "accepted invalid UTF-8 \(hex(input))") }
    if case .success = object { invariant(isValidUTF8(input), "accepted invalid UTF-8 \(hex(input))") }

    switch (single, object) {
    case (.success(let kind), .success):
        invariant(kind == .object, "a top-level object scans as a single \(kind)")
    case (.success(let kind), .failure(let error)):
        // Values are validated, not decoded: only decoding a key (`\ud800` alone) can fail here.
        invariant(kind != .object || error.message.contains("\\u escape"), "single value object, but top-level object fails: \(error.message)")
    case (.failure(let error), .success):
        invariant(false, "a top-level object fails as a single value: \(error.message)")
    case (.failure, .failure):
        break
    }

    if case .success(let fields) = object { checkFields(fields, of: input) }
    if case .success(let kind) = single { checkValue(input, kind: kind) }

    let rawResult = Result { () throws(JSONSyntaxError) in try RawJSON(validating: ByteBuffer(bytes: input)) }
    switch (rawResult, single) {
    case (.success(let raw), .success(let kind)):
        let bytes = Array(raw.bytes.readableBytesView)
        invariant(!bytes.isEmpty && !isJSONWhitespace(bytes.first!) && !isJSONWhitespace(bytes.last!), "RawJSON not trimmed: \(hex(bytes))")
        invariant(scanSingle(bytes) == .success(kind), "RawJSON bytes do not re-scan as a \(kind)")
        let again = try? RawJSON(validating: raw.bytes)
        invariant(again?.bytes == raw.bytes, "RawJSON does not re-validate to the same bytes")
    case (.failure(let a), .failure(let b)):
        invariant(a == b, "RawJSON and the scanner disagree on the error: \(a) vs \(b)")
    default:
        invariant(false, "RawJSON and the scanner disagree on \(hex(input))")
    }

    let objectResult = Result { () throws(JSONSyntaxError) in try JSONObject(parsing: ByteBuffer(bytes: input)) }
    switch (objectResult, object) {
    case (.success(let parsed), .success(let fields)):
        checkAccessors(parsed, fields: fields, input: input)
    case (.failure, .failure):
        break
    default:
        invariant(false, "JSONObject and the scanner disagree on \(hex(input))")
    }

    if case .success = single, !foundationMayRefuse(input) {
        do {
            _ = try JSONSerialization.jsonObject(with: Data(input), options: [.fragmentsAllowed])
        } catch {
            // Foundation also refuses numbers a Double cannot hold (`1e400`): RFC 8259 lets
            // parsers limit ranges; Herald passes numbers through as text, so they are fine.
            let representable = !"\(error)".contains("not representable")
            invariant(!representable, "scanner accepts what Foundation refuses (\(error)): \(hex(input))")
        }
    }
    return 0
}

func scanSingle(_ bytes: [UInt8]) -> Result<JSONKind, JSONSyntaxError> {
    bytes.withUnsafeBufferPointer { pointer in
        var scanner = JSONScanner(pointer)
        return Result { () throws(JSONSyntaxError) in try scanner.scanSingleValue() }
    }
}

func scanObject(_ bytes: [UInt8]) -> Result<[JSONScanner.Field], JSONSyntaxError> {
    bytes.withUnsafeBufferPointer { pointer in
        var scanner = JSONScanner(pointer)
        return Result { () throws(JSONSyntaxError) in try scanner.scanTopLevelObject() }
    }
}

func isJSONWhitespace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }

func checkFields(_ fields: [JSONScanner.Field], of input: [UInt8]) {
    var previousEnd = 0
    for field in fields {
        invariant(
            previousEnd < field.valueStart && field.valueStart < field.valueEnd && field.valueEnd <= input.count,
            "field \(field.key): range \(field.valueStart)..<\(field.valueEnd) after \(previousEnd) in \(input.count) bytes")
        previousEnd = field.valueEnd
        let value = Array(input[field.valueStart..<field.valueEnd])
        invariant(scanSingle(value) == .success(field.kind), "field \(field.key)'s value \(hex(value)) does not re-scan as a \(field.kind)")
        invariant(roundTrip(field.key) == field.key, "key \(field.key.debugDescription) does not survive writeJSONString")
    }
}

/// `string` written as a JSON string literal and decoded again.
func roundTrip(_ string: String) -> String? {
    var buffer = ByteBuffer()
    buffer.writeJSONString(string)
    let bytes = Array(buffer.readableBytesView)
    return bytes.withUnsafeBufferPointer { pointer -> String? in
        var scanner = JSONScanner(pointer)
        guard (try? scanner.scanSingleValue()) == .string else { return nil }
        return try? scanner.decodeString(from: 0, to: bytes.count, hasEscapes: bytes.contains(UInt8(ascii: "\\")))
    }
}

/// The value, nested one level deeper, is still accepted (or refused for depth only).
func checkValue(_ input: [UInt8], kind: JSONKind) {
    let inObject = Array(#"{"k":"#.utf8) + input + [UInt8(ascii: "}")]
    let inArray = [UInt8(ascii: "[")] + input + [UInt8(ascii: "]")]
    switch scanObject(inObject) {
    case .success(let fields):
        invariant(fields.count == 1 && fields[0].key == "k" && fields[0].kind == kind, "wrapped in an object: \(fields)")
    case .failure(let error):
        invariant(error.message.contains("nested deeper"), "wrapped in an object: \(error.message)")
    }
    switch scanSingle(inArray) {
    case .success(let wrapped):
        invariant(wrapped == .array, "wrapped in an array: \(wrapped)")
    case .failure(let error):
        invariant(error.message.contains("nested deeper"), "wrapped in an array: \(error.message)")
    }
}

func checkAccessors(_ object: JSONObject, fields: [JSONScanner.Field], input: [UInt8]) {
    invariant(object.keys == fields.map(\.key), "JSONObject keys differ from the scanner's")
    for key in Set(fields.map(\.key)) {
        let field = fields.last { $0.key == key }!
        invariant(object.kind(key) == field.kind, "kind of \(key)")
        guard let raw = object.raw(key) else {
            invariant(false, "raw(\(key)) is nil")
            return
        }
        invariant(Array(raw.bytes.readableBytesView) == Array(input[field.valueStart..<field.valueEnd]), "raw(\(key)) is not the last occurrence's bytes")
        switch object.string(key) {
        case .success(let value?):
            invariant(field.kind == .string, "string(\(key)) succeeded on a \(field.kind)")
            invariant(roundTrip(value) == value, "string value \(value.debugDescription) does not survive writeJSONString")
        case .success(nil):
            invariant(false, "string(\(key)) is nil for a present key")
        case .failure:
            invariant(field.kind != .string || raw.bytes.readableBytesView.contains(UInt8(ascii: "\\")), "string(\(key)) failed without escapes")
        }
        if case .success(let value?) = object.integer(key) {
            invariant(field.kind == .number && value >= 0, "integer(\(key)) = \(value) from a \(field.kind)")
        }
        switch object.object(key) {
        case .success(let nested?):
            invariant(field.kind == .object, "object(\(key)) from a \(field.kind)")
            _ = nested.keys
        case .success(nil):
            invariant(false, "object(\(key)) is nil for a present key")
        case .failure:
            invariant(field.kind != .object || raw.bytes.readableBytesView.contains(UInt8(ascii: "\\")), "object(\(key)) failed on an object without escapes")
        }
    }
}

/// Inputs on which Foundation is stricter than RFC 8259 (and the scanner, by design).
func foundationMayRefuse(_ input: [UInt8]) -> Bool {
    // Escaped UTF-16 surrogates (paired or not): the scanner validates `\uXXXX` syntax only
    // and never decodes values; Foundation refuses unpaired ones.
    var index = 0
    while index + 2 < input.count {
        if input[index] == UInt8(ascii: "\\") {
            if input[index + 1] == UInt8(ascii: "u"), input[index + 2] == UInt8(ascii: "d") || input[index + 2] == UInt8(ascii: "D") {
                return true
            }
            index += 2
        } else {
            index += 1
        }
    }
    return false
}
