import NIOCore

/// The `data` of every message `herald bench` publishes: `{"b":STREAM,"s":SEQ,"t":NANOS,"p":"xx…"}`.
///
/// `b` names the stream (a room, a user, or 0 for broadcasts), `s` numbers the messages of a
/// stream from 0, `t` is the send time on the generator's monotonic clock, `p` pads the value
/// to the requested size.
public struct BenchPayload: Sendable, Equatable {
    public var stream: Int
    public var sequence: Int
    public var sentAt: UInt64

    public init(stream: Int, sequence: Int, sentAt: UInt64) {
        self.stream = stream
        self.sequence = sequence
        self.sentAt = sentAt
    }

    /// The JSON text, padded with `p` to at least `size` bytes.
    public func json(size: Int) -> String {
        let head = #"{"b":\#(stream),"s":\#(sequence),"t":\#(sentAt),"p":""#
        let padding = max(0, size - head.utf8.count - 2)
        return head + String(repeating: "x", count: padding) + #""}"#
    }

    /// Finds the payload inside a delivered `message` frame without decoding the whole frame.
    /// Returns `nil` for frames that carry no bench payload (welcome, replies).
    public static func parse(frame bytes: UnsafeRawBufferPointer) -> BenchPayload? {
        guard let streamStart = find(#"{"b":"#, in: bytes, from: 0) else { return nil }
        var index = streamStart
        guard let stream = readInteger(bytes, &index),
            let sequenceStart = find(#","s":"#, in: bytes, from: index)
        else { return nil }
        index = sequenceStart
        guard let sequence = readInteger(bytes, &index),
            let timeStart = find(#","t":"#, in: bytes, from: index)
        else { return nil }
        index = timeStart
        guard let time = readInteger(bytes, &index) else { return nil }
        return BenchPayload(stream: stream, sequence: sequence, sentAt: UInt64(time))
    }

    /// Index just past `needle`, searching from `start`.
    private static func find(_ needle: StaticString, in bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        let count = needle.utf8CodeUnitCount
        let pattern = UnsafeBufferPointer(start: needle.utf8Start, count: count)
        guard bytes.count >= count else { return nil }
        var index = start
        while index + count <= bytes.count {
            if bytes[index] == pattern[0] {
                var matched = true
                for offset in 1..<count where bytes[index + offset] != pattern[offset] {
                    matched = false
                    break
                }
                if matched { return index + count }
            }
            index += 1
        }
        return nil
    }

    private static func readInteger(_ bytes: UnsafeRawBufferPointer, _ index: inout Int) -> Int? {
        var value = 0
        var digits = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9"), digits < 19 {
            value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
            index += 1
            digits += 1
        }
        return digits > 0 ? value : nil
    }
}
