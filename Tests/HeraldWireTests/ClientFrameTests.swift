import HeraldWire
import NIOCore
import Testing

@Suite("Client frames")
struct ClientFrameTests {
    func decode(_ text: String) throws(ClientFrameError) -> ClientFrame {
        try ClientFrame.decode(ByteBuffer(string: text))
    }

    func decodeError(_ text: String) -> ClientFrameError? {
        do {
            _ = try decode(text)
            return nil
        } catch {
            return error
        }
    }

    @Test func joinLeavePresence() throws {
        #expect(try decode(#"{"type":"join","room":"r1"}"#) == ClientFrame(command: .join(room: "r1")))
        #expect(try decode(#" { "room" : "r1" , "type" : "leave" } "#).command == .leave(room: "r1"))
        #expect(try decode(#"{"type":"presence","room":"r\u00e9"}"#).command == .presence(room: "ré"))
    }

    @Test func dataIsPassedThroughByteForByte() throws {
        let data = #"{"n": 1, "s":"x y", "f":1.50, "u":"\u00e9\"", "a":[true,null,{}]}"#
        let frame = try decode(#"{"type":"publish","room":"room1","data":"# + data + #","id":3}"#)
        guard case .publish(let room, let raw) = frame.command else {
            Issue.record("not a publish: \(frame)")
            return
        }
        #expect(room == "room1")
        #expect(raw.text == data)
        #expect(frame.id?.text == "3")
    }

    @Test func idIsEchoedAsSent() throws {
        #expect(try decode(#"{"type":"join","room":"a","id":"j2"}"#).id?.text == #""j2""#)
        #expect(try decode(#"{"type":"join","room":"a","id":{"k":[1, 2]}}"#).id?.text == #"{"k":[1, 2]}"#)
        #expect(try decode(#"{"type":"join","room":"a"}"#).id == nil)
    }

    @Test func lastDuplicateKeyWins() throws {
        #expect(try decode(#"{"type":"join","room":"a","room":"b"}"#).command == .join(room: "b"))
    }

    @Test(arguments: [
        "not json", "", "   ", "[1,2]", "\"join\"", "{", #"{"type":"join""#, #"{"type":"join","room":"a"} x"#,
        #"{"type":"publish","room":"room1","data":1"#, #"{"type":"publish","room":"r","data":01}"#,
        #"{"type":"publish","room":"r","data":tru}"#, #"{"type":"publish","room":"r","data":"\x"}"#,
        #"{"type":"publish","room":"r","data":[1,]}"#, #"{"type":"join","room":"\ud800"}"#,
        #"{"type":"publish","room":"r","data":{"a" 1}}"#, #"{"type":"publish","room":"r","data":-}"#,
        #"{"type":"publish","room":"r","data":1.}"#, #"{"type":"publish","room":"r","data":1e}"#,
        "{\"type\":\"publish\",\"room\":\"r\",\"data\":\"a\u{0001}b\"}",
    ])
    func malformedJSONIsRefused(_ text: String) {
        #expect(decodeError(text) != nil, "accepted: \(text)")
    }

    @Test func invalidUTF8IsRefused() {
        for bytes: [UInt8] in [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]] {
            var buffer = ByteBuffer(string: #"{"type":"publish","room":"r","data":""#)
            buffer.writeBytes(bytes)
            buffer.writeString(#""}"#)
            #expect(throws: ClientFrameError.self) { try ClientFrame.decode(buffer) }
        }
        var valid = ByteBuffer(string: #"{"type":"publish","room":"r","data":""#)
        valid.writeBytes([0xF0, 0x9F, 0x98, 0x80, 0xE2, 0x82, 0xAC, 0xC3, 0xA9])
        valid.writeString(#""}"#)
        #expect(throws: Never.self) { try ClientFrame.decode(valid) }
    }

    @Test func deepNestingIsRefusedWithoutCrashing() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(decodeError(#"{"type":"publish","room":"r","data":"# + deep + "}")?.message.contains("nested") == true)
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        #expect(decodeError(#"{"type":"publish","room":"r","data":"# + fine + "}") == nil)
    }

    @Test func missingFieldsAndUnknownTypesNameTheProblemAndKeepTheID() {
        #expect(decodeError(#"{"type":"join","id":6}"#) == ClientFrameError(id: try! RawJSON(validating: "6"), message: "missing field \"room\""))
        #expect(decodeError(#"{"type":"bogus","id":"x"}"#)?.message == "unknown frame type \"bogus\"")
        #expect(decodeError(#"{"type":"bogus","id":"x"}"#)?.id?.text == #""x""#)
        #expect(decodeError(#"{"type":"publish","room":"room1"}"#)?.message == "missing field \"data\"")
        #expect(decodeError(#"{"room":"a"}"#)?.message == "missing field \"type\"")
        #expect(decodeError(#"{"type":7}"#)?.message == "field \"type\" must be a string")
        #expect(decodeError(#"{"type":"join","room":""}"#)?.message == "field \"room\" must not be empty")
        #expect(decodeError(#"{"type":"join","room":"a\nb"}"#)?.message == "field \"room\" must not contain control characters")
    }

    /// RFC 8259's grammar allows an escaped lone surrogate; JavaScript parses it. Data passes
    /// through untouched, but a name (which Herald decodes) must be real Unicode.
    @Test func loneSurrogateEscapesPassInDataButNotInNames() throws {
        #expect(
            try decode(#"{"type":"send","user":"u","data":"\ud800"}"#) == ClientFrame(command: .send(user: "u", data: try RawJSON(validating: #""\ud800""#))))
        #expect(decodeError(#"{"type":"send","user":"\udc00","data":1}"#)?.message.contains("surrogate") == true)
    }

    @Test func unicodeEscapesDecode() throws {
        #expect(try decode(#"{"type":"join","room":"\ud83d\ude00 \u0041\/\\"}"#).command == .join(room: "😀 A/\\"))
    }

    /// Random bytes and random cuts of valid frames never crash the decoder.
    @Test func fuzzedInputNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        let valid = Array(#"{"type":"publish","room":"r","data":{"a":[1,2.5e3,"\u00e9x",true,null]},"id":[1]}"#.utf8)
        for cut in 0...valid.count {
            _ = try? ClientFrame.decode(ByteBuffer(bytes: valid[0..<cut]))
        }
        for _ in 0..<5_000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            _ = try? ClientFrame.decode(ByteBuffer(bytes: bytes))
        }
    }
}
