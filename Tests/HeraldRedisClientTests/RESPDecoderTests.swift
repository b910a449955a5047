import HeraldRedisClient
import NIOCore
import NIOTestUtils
import Testing

@Suite("RESP3 decoder")
struct RESPDecoderTests {
    static let samples: [(String, RESPValue)] = [
        ("+OK\r\n", .simpleString("OK")),
        ("-ERR unknown command\r\n", .simpleError("ERR unknown command")),
        (":-42\r\n", .integer(-42)),
        ("$5\r\nhe\r\no\r\n", .bulkString(ByteBuffer(string: "he\r\no"))),
        ("$0\r\n\r\n", .bulkString(ByteBuffer())),
        ("$-1\r\n", .bulkString(nil)),
        ("*-1\r\n", .array(nil)),
        ("*0\r\n", .array([])),
        ("*2\r\n$3\r\nfoo\r\n:1\r\n", .array([.bulkString(ByteBuffer(string: "foo")), .integer(1)])),
        ("_\r\n", .null),
        (",3.25\r\n", .double(3.25)),
        (",-inf\r\n", .double(-.infinity)),
        ("#t\r\n", .boolean(true)),
        ("#f\r\n", .boolean(false)),
        ("!8\r\nSYNTAX x\r\n", .bulkError(ByteBuffer(string: "SYNTAX x"))),
        ("=9\r\ntxt:hello\r\n", .verbatimString(format: "txt", text: ByteBuffer(string: "hello"))),
        ("(3492890328409238509324850943850943825024385\r\n", .bigNumber("3492890328409238509324850943850943825024385")),
        ("%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n#t\r\n", .map([(.simpleString("a"), .integer(1)), (.simpleString("b"), .array([.boolean(true)]))])),
        ("~2\r\n+x\r\n+y\r\n", .set([.simpleString("x"), .simpleString("y")])),
        (
            ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            .push([.bulkString(ByteBuffer(string: "message")), .bulkString(ByteBuffer(string: "ch")), .bulkString(ByteBuffer(string: "hi"))])
        ),
        ("|1\r\n+ttl\r\n:3\r\n+OK\r\n", .attribute([(.simpleString("ttl"), .integer(3))], .simpleString("OK"))),
    ]

    /// NIO's verifier feeds the bytes split at every offset, one byte at a time, and all at once.
    @Test func everyTypeDecodesWhateverTheReadBoundaries() throws {
        let pairs = Self.samples.map { (ByteBuffer(string: $0.0), [$0.1]) }
        // Throws, naming the failing input, when any split decodes differently.
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { RESPDecoder() }
    }

    @Test func pipelinedRepliesComeOutInOrder() throws {
        var buffer = ByteBuffer(string: Self.samples.map(\.0).joined())
        var decoder = RESPDecoder()
        var values: [RESPValue] = []
        while let value = try decoder.decode(buffer: &buffer) { values.append(value) }
        #expect(values == Self.samples.map(\.1))
        #expect(buffer.readableBytes == 0)
    }

    @Test func aHugeBulkStringArrivingInPiecesIsDecodedOnce() throws {
        let payload = String(repeating: "z", count: 4 * 1024 * 1024)
        let wire = Array("$\(payload.utf8.count)\r\n\(payload)\r\n".utf8)
        var decoder = RESPDecoder()
        var buffer = ByteBuffer()
        var decoded: RESPValue?
        var offset = 0
        while offset < wire.count {
            let end = min(offset + 65536, wire.count)
            buffer.writeBytes(wire[offset..<end])
            offset = end
            if let value = try decoder.decode(buffer: &buffer) {
                #expect(offset == wire.count, "decoded before all bytes arrived")
                decoded = value
            }
        }
        #expect(decoded?.string?.utf8.count == payload.utf8.count)
    }

    @Test func malformedAndHostileInputIsRefused() {
        for wire in [
            "?x\r\n", ":12a\r\n", "$-2\r\n", "$3\r\nabcde", "#x\r\n", ",abc\r\n", "*-5\r\n", "_x\r\n", "+OK\rX", "(-\r\n", "(+-1\r\n", "(½\r\n", "(١٢\r\n",
        ] {
            var buffer = ByteBuffer(string: wire)
            var decoder = RESPDecoder()
            #expect(throws: RESPError.self, "accepted \(wire.debugDescription)") { _ = try decoder.decode(buffer: &buffer) }
        }
        var deep = ByteBuffer(string: String(repeating: "*1\r\n", count: 10_000) + ":1\r\n")
        var decoder = RESPDecoder()
        #expect(throws: RESPError.self) { _ = try decoder.decode(buffer: &deep) }
        var huge = ByteBuffer(string: "$999999999999\r\n")
        #expect(throws: RESPError.self) { _ = try decoder.decode(buffer: &huge) }
    }

    @Test func randomBytesNeverCrash() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("+-:$*_,#!=(%~>|\r\n0123456789-abc".utf8)
        for _ in 0..<20_000 {
            let length = Int.random(in: 0..<40, using: &generator)
            var buffer = ByteBuffer(bytes: (0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            var decoder = RESPDecoder()
            while (try? decoder.decode(buffer: &buffer)) != nil {}
        }
    }

    @Test func commandsAreArraysOfBulkStrings() {
        var buffer = ByteBuffer()
        RESPCommand("SET", "k", "v a").encode(into: &buffer)
        #expect(String(buffer: buffer) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv a\r\n")
    }
}
