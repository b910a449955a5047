// Helpers shared by the fuzz targets: reading libFuzzer's input, checking invariants, and
// deterministic pseudo-random choices (how to split a stream into reads, masks) so that a
// crashing input always replays the same way.
import NIOCore

/// The bytes libFuzzer passes to `LLVMFuzzerTestOneInput`.
public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
    guard let data, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: count))
}

/// Stops the run (libFuzzer saves the input as a crash artifact) when an invariant does not hold.
public func invariant(
    _ condition: @autoclosure () -> Bool,
    _ message: @autoclosure () -> String,
    file: StaticString = #fileID,
    line: UInt = #line
) {
    if !condition() {
        fatalError("fuzz invariant violated: \(message())", file: file, line: line)
    }
}

/// Lowercase hex, for invariant messages.
public func hex<S: Sequence<UInt8>>(_ bytes: S, limit: Int = 256) -> String {
    var out = ""
    var count = 0
    for byte in bytes {
        if count == limit { return out + "…" }
        let digits = Array("0123456789abcdef")
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
        count += 1
    }
    return out
}

public func hex(_ buffer: ByteBuffer, limit: Int = 256) -> String {
    hex(buffer.readableBytesView, limit: limit)
}

/// A small deterministic generator (SplitMix64), seeded from the input.
public struct SplitMix: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// Seeded by an FNV-1a hash of `bytes`.
    public init<S: Sequence<UInt8>>(hashing bytes: S) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        state = hash
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// Splits `count` bytes into the sizes of successive socket reads: half of them small (1 to 8
/// bytes, so header boundaries get crossed), the others larger (up to 1 KiB, or a sixteenth
/// of a long stream, so that a long stream takes a few hundred reads, not tens of thousands).
public func readSizes(total count: Int, using generator: inout SplitMix) -> [Int] {
    var sizes: [Int] = []
    var left = count
    let large = UInt64(max(1024, count / 16))
    while left > 0 {
        let size: Int
        switch generator.next() % 4 {
        case 0, 1: size = Int(generator.next() % 8) + 1
        case 2: size = Int(generator.next() % 64) + 1
        default: size = Int(generator.next() % large) + 1
        }
        sizes.append(min(size, left))
        left -= sizes.last!
    }
    return sizes
}

/// Whether `bytes` are valid UTF-8.
public func isValidUTF8<C: Collection<UInt8>>(_ bytes: C) -> Bool {
    String(validating: bytes, as: UTF8.self) != nil
}
