import HeraldWire
import Testing

/// Names are compared byte for byte in Redis and by canonical equivalence in Swift: only NFC
/// names without invisible characters are accepted, so that the two agree.
@Suite("Names: one spelling each")
struct NameTests {
    @Test func lookAlikesAndOtherNormalFormsAreRefused() {
        #expect(Name.problem("Kate") == nil)
        #expect("\u{212A}ate" == "Kate", "Swift's == treats the KELVIN SIGN as K")
        #expect(Name.problem("\u{212A}ate")?.contains("Normalization Form C") == true)
        #expect(Name.problem("Caf\u{E9}") == nil)  // NFC
        #expect(Name.problem("Cafe\u{301}")?.contains("Normalization Form C") == true)  // NFD of the same
        #expect(Name.problem("\u{FB01}le") == nil, "a compatibility ligature is NFC: it is its own name")
        #expect(Name.problem("Ω") == nil)
        #expect(Name.problem("\u{2126}") != nil, "OHM SIGN, canonically Ω")
    }

    @Test func invisibleAndControlCharactersAreRefused() {
        for name in ["al\u{200B}ice", "al\u{200D}ice", "\u{202E}ecila", "bob\u{2066}", "\u{FEFF}bob", "x\u{AD}y", "a\u{85}b", "a\u{9F}b", "a\u{7F}b", "a\nb"] {
            #expect(Name.problem(name) != nil, "\(name.unicodeScalars.map { String($0.value, radix: 16) })")
        }
        for name in ["❤️", "team/a", "lobby *", "日本語", "Zoë"] {
            #expect(Name.problem(name) == nil, "\(name)")
        }
    }

    /// What writing needs is allowed where it needs it: emoji sequences, ZWNJ between letters,
    /// variation sequences, flag tags.
    @Test func namesRealUsersWriteAreAccepted() {
        let england = "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}"
        for name in ["👩‍💻", "🏳️‍🌈", "👍🏽", england, "می\u{200C}خواهم", "葛\u{E0100}", "ᠠ\u{180B}"] {
            #expect(Name.problem(name) == nil, "\(name.unicodeScalars.map { String($0.value, radix: 16) })")
        }
    }

    /// Blank and invisible look-alikes that are in NFC are refused too.
    @Test func blanksAndUnassignedCodePointsAreRefused() {
        for name in [
            " alice", "alice ", "alice\u{A0}", "\u{2800}", "\u{3000}", "a\u{2028}b", "\u{E000}x", "a\u{FFFD}b", "a\u{378}b", "\u{200D}x", "x\u{200C}",
            "\u{E0067}x", "\u{3164}",
        ] {
            #expect(Name.problem(name) != nil, "\(name.unicodeScalars.map { String($0.value, radix: 16) })")
        }
    }
}
