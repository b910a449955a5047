public import NIOCore

/// One RESP3 value (RESP2 values are the subset without maps, sets, doubles, booleans, pushes…).
///
/// Bulk strings stay `ByteBuffer` slices of the read buffer: a large value is never copied
/// into a `String` unless asked for.
public indirect enum RESPValue: Sendable, Equatable {
    case simpleString(String)
    case simpleError(String)
    case integer(Int64)
    /// `$n\r\n…\r\n`; `nil` is RESP2's null bulk string (`$-1`).
    case bulkString(ByteBuffer?)
    /// `*n`; `nil` is RESP2's null array (`*-1`).
    case array([RESPValue]?)
    /// RESP3 `_`.
    case null
    case double(Double)
    case boolean(Bool)
    case bulkError(ByteBuffer)
    /// `=n\r\nfmt:…`: the 3-letter format and the text.
    case verbatimString(format: String, text: ByteBuffer)
    case bigNumber(String)
    case map([(key: RESPValue, value: RESPValue)])
    case set([RESPValue])
    /// `|n`: attributes that precede a reply (the reply is the second value).
    case attribute([(key: RESPValue, value: RESPValue)], RESPValue)
    /// `>n`: an out-of-band push (pub/sub messages under RESP3).
    case push([RESPValue])

    public static func == (lhs: RESPValue, rhs: RESPValue) -> Bool {
        switch (lhs, rhs) {
        case (.simpleString(let a), .simpleString(let b)), (.simpleError(let a), .simpleError(let b)), (.bigNumber(let a), .bigNumber(let b)):
            a == b
        case (.integer(let a), .integer(let b)): a == b
        case (.bulkString(let a), .bulkString(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.null, .null): true
        case (.double(let a), .double(let b)): a == b || (a.isNaN && b.isNaN)
        case (.boolean(let a), .boolean(let b)): a == b
        case (.bulkError(let a), .bulkError(let b)): a == b
        case (.verbatimString(let f1, let t1), .verbatimString(let f2, let t2)): f1 == f2 && t1 == t2
        case (.map(let a), .map(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case (.set(let a), .set(let b)), (.push(let a), .push(let b)): a == b
        case (.attribute(let a, let x), .attribute(let b, let y)):
            x == y && a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    /// The value as text, for simple and bulk strings (and verbatim strings).
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let bytes?): String(buffer: bytes)
        case .verbatimString(_, let text): String(buffer: text)
        default: nil
        }
    }

    /// Whether the value is a null (RESP3 `_`, or RESP2's null bulk string or array).
    public var isNull: Bool {
        switch self {
        case .null, .bulkString(nil), .array(nil): true
        default: false
        }
    }

    /// Whether the value is an error reply (simple or bulk).
    public var isError: Bool {
        switch self {
        case .simpleError, .bulkError: true
        default: false
        }
    }
}
