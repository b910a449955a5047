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
}
