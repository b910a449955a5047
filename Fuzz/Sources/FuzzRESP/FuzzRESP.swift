// Fuzzes HeraldRedis's `RESPDecoder` (RESP3 replies from Redis) and `RESPCommand.encode`.
//
// Input: the bytes a Redis server sends (the corpus holds one reply of each type).
//
// Checks: `decode` never consumes more than it was given, consumes nothing when it returns
// `nil` or throws, and something when it returns a value; the values (and the error) are the
// same whether the bytes come at once or in small reads (split deterministically from the
// input's hash); values respect the decoder's limits (depth, bulk length, aggregate count:
// also with small limits, where what is accepted must decode the same with the defaults);
// every value, encoded again, decodes to itself and consumes exactly its encoding; and a
// command (the input split at NUL bytes) encodes to an array of bulk strings that decodes back.
import FuzzSupport
import HeraldRedisClient
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESP(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    var generator = SplitMix(hashing: input)

    let whole = decodeAll(input, sizes: input.isEmpty ? [] : [input.count], decoder: RESPDecoder())
    let split = decodeAll(input, sizes: readSizes(total: input.count, using: &generator), decoder: RESPDecoder())
    invariant(whole.values == split.values, "values differ when split into reads")
    invariant(whole.error == split.error, "errors differ when split into reads: \(String(describing: whole.error)) vs \(String(describing: split.error))")
    if whole.error == nil { invariant(whole.leftover == split.leftover, "leftover differs when split") }

    for value in whole.values {
        invariant(depth(value) <= RESPDecoder().maxDepth + 1, "value nested \(depth(value)) deep")
        checkRoundTrip(value)
    }

    // Small limits: whatever they accept, the defaults accept the same way.
    var small = RESPDecoder()
    small.maxDepth = 2
    small.maxBulkLength = 8
    small.maxAggregateCount = 4
    let limited = decodeAll(input, sizes: input.isEmpty ? [] : [input.count], decoder: small)
    invariant(whole.values.starts(with: limited.values), "small limits decode differently")
    if limited.error == nil {
        invariant(whole.values == limited.values && whole.error == nil, "the defaults refuse what small limits accept")
    }
    for value in limited.values { checkLimits(value, small) }

    checkCommand(input)
    return 0
}

struct Decoded {
    var values: [RESPValue] = []
    var error: RESPError?
    var leftover = 0
}

/// Decodes every value, appending the input in reads of `sizes` bytes as a channel would.
func decodeAll(_ input: [UInt8], sizes: [Int], decoder: RESPDecoder) -> Decoded {
    var decoder = decoder
    var decoded = Decoded()
    var buffer = ByteBuffer()
    var offset = 0
    for size in sizes {
        buffer.writeBytes(input[offset..<(offset + size)])
        offset += size
        while true {
            let before = buffer
            do {
                guard let value = try decoder.decode(buffer: &buffer) else {
                    invariant(buffer == before && buffer.readerIndex == before.readerIndex, "decode returned nil but moved the buffer")
                    break
                }
                let used = buffer.readerIndex - before.readerIndex
                invariant(
                    used > 0 && used <= before.readableBytes && buffer.writerIndex == before.writerIndex,
                    "decode consumed \(used) of \(before.readableBytes) bytes")
                decoded.values.append(value)
            } catch let error as RESPError {
                invariant(buffer == before && buffer.readerIndex == before.readerIndex, "decode threw but moved the buffer")
                decoded.error = error
                return decoded
            } catch {
                invariant(false, "decode threw \(type(of: error)), not RESPError")
            }
        }
    }
    invariant(offset == input.count, "reads do not cover the input")
    decoded.leftover = buffer.readableBytes
    return decoded
}

func depth(_ value: RESPValue) -> Int {
    switch value {
    case .array(let elements?), .set(let elements), .push(let elements):
        1 + (elements.map(depth).max() ?? 0)
    case .map(let pairs):
        1 + (pairs.map { max(depth($0.key), depth($0.value)) }.max() ?? 0)
    case .attribute(let pairs, let reply):
        1 + max(depth(reply), pairs.map { max(depth($0.key), depth($0.value)) }.max() ?? 0)
    default:
        1
    }
}

func checkLimits(_ value: RESPValue, _ decoder: RESPDecoder) {
    invariant(depth(value) <= decoder.maxDepth + 1, "value nested \(depth(value)) deep with maxDepth \(decoder.maxDepth)")
    func visit(_ value: RESPValue) {
        switch value {
        case .bulkString(let bytes?), .bulkError(let bytes):
            invariant(bytes.readableBytes <= decoder.maxBulkLength, "bulk of \(bytes.readableBytes) bytes")
        case .verbatimString(_, let text):
            invariant(text.readableBytes + 4 <= decoder.maxBulkLength, "verbatim string of \(text.readableBytes) bytes")
        case .array(let elements?), .set(let elements), .push(let elements):
            invariant(elements.count <= decoder.maxAggregateCount, "aggregate of \(elements.count)")
            elements.forEach(visit)
        case .map(let pairs):
            invariant(pairs.count <= decoder.maxAggregateCount, "map of \(pairs.count)")
            pairs.forEach {
                visit($0.key)
                visit($0.value)
            }
        case .attribute(let pairs, let reply):
            invariant(pairs.count <= decoder.maxAggregateCount, "attribute of \(pairs.count)")
            pairs.forEach {
                visit($0.key)
                visit($0.value)
            }
            visit(reply)
        default:
            break
        }
    }
    visit(value)
}

// MARK: - Round trips

/// Encodes `value` as Redis would send it; `nil` when the decoded value cannot be sent again
/// as is (a verbatim string whose 3-byte format was not UTF-8 was decoded lossily).
func encode(_ value: RESPValue, into buffer: inout ByteBuffer) -> Bool {
    func aggregate(_ marker: String, _ elements: [RESPValue]) -> Bool {
        buffer.writeString("\(marker)\(elements.count)\r\n")
        return elements.allSatisfy { encode($0, into: &buffer) }
    }
    func pairs(_ marker: String, _ pairs: [(key: RESPValue, value: RESPValue)]) -> Bool {
        buffer.writeString("\(marker)\(pairs.count)\r\n")
        return pairs.allSatisfy { encode($0.key, into: &buffer) && encode($0.value, into: &buffer) }
    }
    func bulk(_ marker: String, _ bytes: ByteBuffer) {
        var bytes = bytes
        buffer.writeString("\(marker)\(bytes.readableBytes)\r\n")
        buffer.writeBuffer(&bytes)
        buffer.writeStaticString("\r\n")
    }
    switch value {
    case .simpleString(let text): buffer.writeString("+\(text)\r\n")
    case .simpleError(let text): buffer.writeString("-\(text)\r\n")
    case .integer(let number): buffer.writeString(":\(number)\r\n")
    case .bulkString(nil): buffer.writeStaticString("$-1\r\n")
    case .bulkString(let bytes?): bulk("$", bytes)
    case .array(nil): buffer.writeStaticString("*-1\r\n")
    case .array(let elements?): return aggregate("*", elements)
    case .null: buffer.writeStaticString("_\r\n")
    case .double(let number):
        let text = number.isNaN ? "nan" : number == .infinity ? "inf" : number == -.infinity ? "-inf" : "\(number)"
        buffer.writeString(",\(text)\r\n")
    case .boolean(let flag): buffer.writeStaticString(flag ? "#t\r\n" : "#f\r\n")
    case .bulkError(let bytes): bulk("!", bytes)
    case .verbatimString(let format, let text):
        guard format.utf8.count == 3 else { return false }
        var payload = ByteBuffer(string: format + ":")
        var text = text
        payload.writeBuffer(&text)
        bulk("=", payload)
    case .bigNumber(let text): buffer.writeString("(\(text)\r\n")
    case .map(let elements): return pairs("%", elements)
    case .set(let elements): return aggregate("~", elements)
    case .push(let elements): return aggregate(">", elements)
    case .attribute(let elements, let reply): return pairs("|", elements) && encode(reply, into: &buffer)
    }
    return true
}

func checkRoundTrip(_ value: RESPValue) {
    var encoded = ByteBuffer()
    guard encode(value, into: &encoded) else { return }
    let bytes = Array(encoded.readableBytesView)
    let again = decodeAll(bytes, sizes: [bytes.count], decoder: RESPDecoder())
    invariant(
        again.error == nil && again.values == [value] && again.leftover == 0,
        "\(value) encoded as \(String(decoding: bytes.prefix(200), as: UTF8.self).debugDescription) decodes as \(again.values), \(String(describing: again.error))"
    )
}

/// The input split at NUL bytes as a command's arguments: its encoding decodes to those bulk strings.
func checkCommand(_ input: [UInt8]) {
    let arguments = input.split(separator: 0, maxSplits: 15, omittingEmptySubsequences: false).map { ByteBuffer(bytes: $0) }
    var encoded = ByteBuffer()
    RESPCommand(arguments: arguments).encode(into: &encoded)
    let bytes = Array(encoded.readableBytesView)
    let decoded = decodeAll(bytes, sizes: [bytes.count], decoder: RESPDecoder())
    invariant(
        decoded.error == nil && decoded.values == [.array(arguments.map { .bulkString($0) })] && decoded.leftover == 0,
        "command \(arguments.count) arguments does not decode back")
}
