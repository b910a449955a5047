import Foundation
public import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes one JSON object per line (`--log-format json`), for log shippers:
///
/// ```json
/// {"time":"2026-12-03T21:04:05.123Z","level":"info","message":"connection closed","node":"a1","connection":"a1-3","user":"ada","code":"1000"}
/// ```
///
/// `time` (UTC, milliseconds), `level`, `message`, `label`, then the metadata (the node's id,
/// and where they apply `connection`, `user`, `code`, `reason`…) as top-level fields; nested
/// metadata stays nested. Herald logs no token or API key in any format; as a second line of
/// defence, a `token=` or `Bearer ` value that reaches a message or a metadata value is replaced
/// with `[redacted]` (``LogRedaction``).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let write: @Sendable (String) -> Void

    /// A handler writing to standard error (where swift-log's default handler writes).
    public static func standardError(label: String, metadata: Logger.Metadata = [:]) -> JSONLogHandler {
        var handler = JSONLogHandler(label: label) { line in StandardError.write(line) }
        handler.metadata = metadata
        return handler
    }

    /// A handler handing each line (newline included) to `write`.
    public init(label: String, write: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        var line = "{"
        line += #""time":"# + Self.quoted(Self.timestamp())
        line += #","level":"# + Self.quoted(event.level.rawValue)
        line += #","message":"# + Self.quoted(LogRedaction.redact(event.message.description))
        line += #","label":"# + Self.quoted(label)
        for key in fields.keys.sorted() where !["time", "level", "message", "label"].contains(key) {
            line += "," + Self.quoted(key) + ":" + Self.json(fields[key]!)
        }
        line += "}\n"
        write(line)
    }

    private static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): quoted(LogRedaction.redact(text))
        case .stringConvertible(let convertible): quoted(LogRedaction.redact(convertible.description))
        case .array(let values): "[" + values.map(json).joined(separator: ",") + "]"
        case .dictionary(let entries): "{" + entries.keys.sorted().map { quoted($0) + ":" + json(entries[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal (RFC 8259 escapes; control characters as `\u00XX`).
    static func quoted(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    private static func timestamp() -> String {
        timestamp(millisecondsSince1970: Int64(Date().timeIntervalSince1970 * 1000))
    }

    /// `2026-12-03T21:04:05.123Z`, by arithmetic (the civil-from-days algorithm): no formatter
    /// to allocate and no C time structures.
    static func timestamp(millisecondsSince1970 milliseconds: Int64) -> String {
        let (days, dayMilliseconds) = milliseconds.quotientAndRemainder(dividingBy: 86_400_000)
        let shift = dayMilliseconds < 0 ? 1 : 0
        let day = days - Int64(shift) + 719_468
        let ms = dayMilliseconds + Int64(shift) * 86_400_000
        let era = (day >= 0 ? day : day - 146_096) / 146_097
        let dayOfEra = day - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let dayOfMonth = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let fraction = ms % 1000
        let fractionText = fraction < 10 ? "00\(fraction)" : fraction < 100 ? "0\(fraction)" : "\(fraction)"
        return "\(year)-\(two(month))-\(two(dayOfMonth))T\(two(ms / 3_600_000))"
            + ":\(two(ms / 60_000 % 60)):\(two(ms / 1000 % 60)).\(fractionText)Z"
    }
}

/// Takes credentials out of text bound for a log: the value of a `token=` query parameter and
/// of a `Bearer` authorization.
public enum LogRedaction {
    public static func redact(_ text: String) -> String {
        let lowered = text.lowercased()
        guard lowered.contains("token") || lowered.contains("bearer ") else { return text }
        var result = text
        for marker in ["token=", "bearer ", "\"token\":\"", "\"token\": \""] {
            var searchStart = result.startIndex
            while let range = result.range(of: marker, options: .caseInsensitive, range: searchStart..<result.endIndex) {
                let valueEnd = result[range.upperBound...].firstIndex { " &\"',;)\n".contains($0) } ?? result.endIndex
                guard valueEnd > range.upperBound else {
                    searchStart = range.upperBound
                    continue
                }
                result.replaceSubrange(range.upperBound..<valueEnd, with: "[redacted]")
                searchStart = result.index(range.upperBound, offsetBy: "[redacted]".count)
            }
        }
        return result
    }
}

/// Standard error, written one whole line at a time (a lock, so concurrent lines never
/// interleave) and never fatally: a closed pipe or a full disk loses the line, not the node
/// (Foundation's `FileHandle.write(_:)` traps on a write error).
enum StandardError {
    private static let lock = Mutex<Void>(())

    static func write(_ line: String) {
        lock.withLock { _ in
            var bytes = Array(line.utf8)
            bytes.withUnsafeMutableBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    #if canImport(Glibc)
                    let written = Glibc.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    #else
                    let written = Darwin.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    #endif
                    if written > 0 {
                        offset += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        return  // EPIPE, ENOSPC, EAGAIN…: drop the rest of this line
                    }
                }
            }
        }
    }
}
