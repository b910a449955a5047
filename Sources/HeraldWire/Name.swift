/// Rules for room and user names, shared by the WebSocket protocol and the HTTP API.
///
/// A name is 1 to ``maxBytes`` bytes of UTF-8, in Unicode Normalization Form C, with no
/// control, format or invisible characters. Names appear in frames, logs and (with Redis)
/// channel keys, so they are bounded and printable.
///
/// **Why NFC only.** Swift compares strings by canonical equivalence: `"\u{212A}ate" == "Kate"`
/// (KELVIN SIGN), and an NFD spelling equals its NFC one. Every map keyed by a name (users,
/// rooms, histories, acknowledgements) would then let one spelling reach another's messages,
/// while Redis, which compares bytes, keeps them apart. Refusing every name that is not in
/// NFC leaves one spelling per equivalence class: for two accepted names, `==` is byte
/// equality, in memory and in Redis alike.
public enum Name {
    public static let maxBytes = 200

    /// Why `name` is not acceptable, or `nil` when it is.
    public static func problem(_ name: String) -> String? {
        let count = name.utf8.count
        if count == 0 { return "must not be empty" }
        if count > maxBytes { return "must be at most \(maxBytes) bytes" }
        if name.unicodeScalars.contains(where: isControl) {
            return "must not contain control characters"
        }
        if name.unicodeScalars.contains(where: isInvisible) {
            return "must not contain invisible or text-direction characters (zero-width, bidi controls)"
        }
        // The standard library's own NFC, the one its `==` compares by.
        if !name.utf8.elementsEqual(name._nfcCodeUnits) {
            return "must be in Unicode Normalization Form C (NFC): normalize it before use"
        }
        return nil
    }

    /// C0 and C1 controls, and DEL.
    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// Characters that change how a name looks without being seen: zero-width ones, bidi
    /// controls (which can display `alice` for another name), the BOM and other format controls.
    /// Variation selectors stay allowed: emoji need them (`❤️` is U+2764 U+FE0F).
    private static func isInvisible(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B...0x180F, 0x200B...0x200F, 0x202A...0x202E,
            0x2060...0x206F, 0x3164, 0xFEFF, 0xFFA0, 0xFFF9...0xFFFB, 0xE0000...0xE0FFF:
            true
        default:
            scalar.properties.generalCategory == .format
        }
    }
}
