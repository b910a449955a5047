/// Rules for room and user names, shared by the WebSocket protocol and the HTTP API.
///
/// A name is 1 to ``maxBytes`` bytes of UTF-8 with no control characters. Names appear in
/// frames, logs and (with Redis) channel keys, so they are bounded and printable.
public enum Name {
    public static let maxBytes = 200

    /// Why `name` is not acceptable, or `nil` when it is.
    public static func problem(_ name: String) -> String? {
        let count = name.utf8.count
        if count == 0 { return "must not be empty" }
        if count > maxBytes { return "must be at most \(maxBytes) bytes" }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "must not contain control characters"
        }
        return nil
    }
}
