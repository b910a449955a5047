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
        let utf8 = name.utf8
        let count = utf8.count
        if count == 0 { return "must not be empty" }
        if count > maxBytes { return "must be at most \(maxBytes) bytes" }
        if utf8.first == 0x20 || utf8.last == 0x20 { return "must not begin or end with a space" }
        // Printable ASCII, the common case, is in NFC and holds nothing invisible: one pass.
        if utf8.allSatisfy({ (0x20...0x7E).contains($0) }) { return nil }
        let scalars = Array(name.unicodeScalars)
        for index in scalars.indices {
            let scalar = scalars[index]
            if isControl(scalar) { return "must not contain control characters" }
            if scalar.isASCII { continue }
            if let problem = problem(with: scalar, at: index, in: scalars) { return problem }
        }
        // The standard library's own NFC, the one its `==` compares by.
        if !utf8.elementsEqual(name._nfcCodeUnits) {
            return "must be in Unicode Normalization Form C (NFC): normalize it before use"
        }
        return nil
    }

    /// C0 and C1 controls, and DEL.
    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// Why a non-ASCII character may not stand where it is in a name.
    ///
    /// Refused: what changes how a name looks without being seen (zero-width characters, bidi
    /// controls, which can display `alice` for another name, and other format characters),
    /// blanks other than the ASCII space (no-break, ideographic and other spaces, fillers),
    /// line and paragraph separators, private-use and unassigned code points (whose meaning,
    /// and NFC, may differ between nodes on different Unicode versions), and U+FFFD (what
    /// invalid UTF-8 decodes to). Allowed where writing needs them: variation selectors,
    /// ZERO WIDTH JOINER between emoji (👩‍💻), ZERO WIDTH NON-JOINER between letters (Persian
    /// `می‌خواهم`), and tag characters after a black flag (🏴󠁧󠁢󠁥󠁮󠁧󠁿).
    private static func problem(with scalar: Unicode.Scalar, at index: Int, in scalars: [Unicode.Scalar]) -> String? {
        let invisible = "must not contain invisible or text-direction characters (zero-width, bidi controls)"
        let previous = index > 0 ? scalars[index - 1] : nil
        let next = index + 1 < scalars.count ? scalars[index + 1] : nil
        switch scalar.value {
        case 0x200D:  // ZERO WIDTH JOINER: inside an emoji sequence only
            let joinsEmoji =
                previous.map { $0.properties.isEmoji || $0.value == 0xFE0F || $0.properties.isEmojiModifier } == true
                && next?.properties.isEmoji == true
            return joinsEmoji ? nil : invisible
        case 0x200C:  // ZERO WIDTH NON-JOINER: between two letters only
            let betweenLetters =
                previous.map { !$0.isASCII && $0.properties.isAlphabetic } == true
                && next.map { !$0.isASCII && $0.properties.isAlphabetic } == true
            return betweenLetters ? nil : invisible
        case 0xE0020...0xE007F:  // tags: in a flag's tag sequence only
            return scalars[..<index].contains("\u{1F3F4}") ? nil : invisible
        case 0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0:
            return "must not contain blank or invisible characters"
        case 0xFFFD:
            return "must not contain U+FFFD (invalid UTF-8 decodes to it)"
        default:
            break
        }
        switch scalar.properties.generalCategory {
        case .format: return invisible
        case .spaceSeparator: return "must not contain spaces other than the ASCII space"
        case .lineSeparator, .paragraphSeparator: return "must not contain line or paragraph separators"
        case .privateUse: return "must not contain private-use characters"
        case .unassigned, .surrogate: return "must not contain unassigned code points"
        default: return nil
        }
    }
}
