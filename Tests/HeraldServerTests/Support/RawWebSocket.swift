import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A WebSocket client on a plain blocking socket, for what a well-behaved client library will
/// not do: send invalid frames, half-close the connection. Every call is bounded by a 5 s
/// receive timeout; run it on a thread of its own (``run(_:)``), not the tests' shared pool.
final class RawWebSocket: @unchecked Sendable {
    let fd: Int32
    private var received: [UInt8] = []

    /// Connects and completes the upgrade for `/ws?QUERY`.
    init(port: Int, query: String) throws {
        fd = try connectLoopback(port: port)
        try send(
            Array(
                "GET /ws?\(query) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    .utf8
            ))
        while received.firstRange(of: Array("\r\n\r\n".utf8)) == nil { try receive() }
        let end = received.firstRange(of: Array("\r\n\r\n".utf8))!.upperBound
        guard String(decoding: received[..<end], as: UTF8.self).hasPrefix("HTTP/1.1 101") else { throw TestFailure("upgrade refused") }
        received.removeFirst(end)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        guard bytes.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }) == bytes.count else { throw TestFailure("send failed") }
    }

    /// Sends a masked frame.
    func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true) throws {
        let mask: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        precondition(payload.count < 126)
        try send([(fin ? 0x80 : 0) | opcode, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset & 3] })
    }

    /// The next server frame: its opcode and payload; `nil` once the server closed TCP.
    func nextFrame() throws -> (opcode: UInt8, payload: [UInt8])? {
        while true {
            if received.count >= 2 {
                var length = Int(received[1] & 0x7F)
                var header = 2
                if length == 126, received.count >= 4 {
                    length = Int(received[2]) << 8 | Int(received[3])
                    header = 4
                } else if length == 127 {
                    throw TestFailure("unexpected 64-bit frame")
                }
                if length < 126 || header == 4, received.count >= header + length {
                    let frame = (received[0] & 0x0F, Array(received[header..<(header + length)]))
                    received.removeFirst(header + length)
                    return frame
                }
            }
            guard try receive() else { return nil }
        }
    }

    /// Half-closes: the server reads end of input.
    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads more; `false` at end of input.
    @discardableResult
    private func receive() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = recv(fd, &chunk, chunk.count, 0)
        if count == 0 { return false }
        guard count > 0 else { throw TestFailure("receive failed or timed out (errno \(errno))") }
        received += chunk[..<count]
        return true
    }

    /// Runs blocking socket work on a thread of its own.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }
}
