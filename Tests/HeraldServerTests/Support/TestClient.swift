import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOSSL
import NIOWebSocket

/// A real WebSocket client (swift-websocket's WSClient) with its text frames queued for the test.
final class TestClient: Sendable {
    private let frames: FrameQueue
    private let outbound: WebSocketOutboundWriter
    private let session: Task<WebSocketCloseFrame?, any Error>
    let label: String

    private init(label: String, frames: FrameQueue, outbound: WebSocketOutboundWriter, session: Task<WebSocketCloseFrame?, any Error>) {
        self.label = label
        self.frames = frames
        self.outbound = outbound
        self.session = session
    }

    /// Connects to `/ws?QUERY`. With `reading: false` the client never reads: no pongs, and the
    /// server's writes back up (a silent or slow consumer). With a `gate`, it stops reading
    /// after the first frame until the gate opens (a consumer that falls behind, then catches up).
    static func connect(
        port: Int,
        query: String,
        headers: HTTPFields = [:],
        reading: Bool = true,
        pausesAfterFirstFrameUntil gate: ReadGate? = nil,
        label: String? = nil,
        tls: TLSConfiguration? = nil
    ) async throws -> TestClient {
        let frames = FrameQueue()
        let (writers, writerContinuation) = AsyncStream<WebSocketOutboundWriter>.makeStream()
        var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 24, additionalHeaders: headers, closeTimeout: .seconds(5))
        // SNI cannot carry an IP address: the test certificates name localhost too.
        if tls != nil { configuration.sniHostname = "localhost" }
        let session = Task<WebSocketCloseFrame?, any Error> {
            defer {
                frames.finish()
                writerContinuation.finish()
            }
            return try await WebSocketClient.connect(
                url: "\(tls == nil ? "ws" : "wss")://127.0.0.1:\(port)/ws?\(query)",
                configuration: configuration,
                tlsConfiguration: tls,
                logger: Logger(label: "test.client")
            ) { inbound, outbound, _ in
                writerContinuation.yield(outbound)
                if reading {
                    var paused = gate == nil
                    for try await message in inbound.messages(maxSize: 1 << 24) {
                        if case .text(let text) = message { frames.push(text) }
                        if !paused, let gate {
                            paused = true
                            await gate.wait()
                        }
                    }
                } else {
                    // Hold the socket open without reading until the test cancels or the server drops us.
                    try? await Task.sleep(for: .seconds(3600))
                }
            }
        }
        let outbound = try await withTimeout(10, "WebSocket upgrade") {
            var iterator = writers.makeAsyncIterator()
            guard let writer = await iterator.next() else { throw TestFailure("WebSocket upgrade failed") }
            return writer
        }
        return TestClient(label: label ?? query, frames: frames, outbound: outbound, session: session)
    }

    /// The next text frame, without a message's `"offset"`, `"epoch"` and `"ts"`, and a plain
    /// `joined` reply's `"offset"` and `"epoch"` (the tests of
    /// positions and times read them with ``nextPositioned(timeout:)``); throws on timeout or when the
    /// connection ended.
    func next(timeout: Double = 5) async throws -> String {
        withoutPosition(try await nextRaw(timeout: timeout))
    }

    /// The next text frame exactly as sent.
    func nextRaw(timeout: Double = 5) async throws -> String {
        let frames = self.frames
        let result = try await withTimeout(timeout, "a frame on \(label)") { await frames.next() }
        guard let result else { throw TestFailure("\(label): connection ended while waiting for a frame") }
        return result
    }

    /// The next frame as sent, parsed.
    func nextPositioned(timeout: Double = 5) async throws -> [String: Any] {
        try json(try await nextRaw(timeout: timeout))
    }

    /// The next frame, parsed.
    func nextJSON(timeout: Double = 5) async throws -> [String: Any] {
        try json(try await next(timeout: timeout))
    }

    /// Frames until one whose `type` is `type` (skipping others), bounded.
    func next(type: String, timeout: Double = 5) async throws -> [String: Any] {
        for _ in 0..<10_000 {
            let frame = try await nextJSON(timeout: timeout)
            if frame["type"] as? String == type { return frame }
            if ProcessInfo.processInfo.environment["HERALD_TEST_TRACE"] != nil { print("\(label) skipped \(frame)") }
        }
        throw TestFailure("\(label): no \(type) frame")
    }

    func send(_ text: String) async throws {
        try await outbound.write(.text(text))
    }

    func sendPing() async throws {
        try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(string: "p"))))
    }

    func sendBinary(_ bytes: [UInt8]) async throws {
        try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
    }

    /// Waits for the connection to end and returns the server's close code and reason.
    func closed(timeout: Double = 10) async throws -> (code: UInt16?, reason: String?) {
        let session = self.session
        let frame = try await withTimeout(timeout, "\(label) to be closed") { try await session.value }
        return (frame.map { UInt16(webSocketErrorCode: $0.closeCode) }, frame?.reason)
    }

    /// Whether the connection ended without another text frame arriving.
    func endsWithoutFrames(timeout: Double = 10) async throws -> Bool {
        do {
            let frame = try await next(timeout: timeout)
            _ = frame
            return false
        } catch let failure as TestFailure where failure.description.contains("connection ended") {
            return true
        }
    }

    func close() async {
        try? await outbound.close(.normalClosure, reason: nil)
        session.cancel()
    }
}

/// `frame` without the `,"offset":N,"epoch":"E"` a broker inserts into message frames.
func withoutPosition(_ frame: String) -> String {
    // A plain join's reply carries the room's position too (a join with `since` keeps it: those
    // tests read it).
    if frame.hasPrefix(#"{"type":"joined""#), !frame.contains(#""recovered":"#) { return withoutOffsetAndEpoch(frame) }
    guard frame.hasPrefix(#"{"type":"message""#) else { return frame }
    return withoutTime(withoutOffsetAndEpoch(frame))
}

private func withoutOffsetAndEpoch(_ frame: String) -> String {
    guard let start = frame.range(of: #","offset":"#) else { return frame }
    guard let epoch = frame.range(of: #","epoch":""#, range: start.upperBound..<frame.endIndex),
        let close = frame[epoch.upperBound...].firstIndex(of: "\"")
    else { return frame }
    return String(frame[..<start.lowerBound]) + String(frame[frame.index(after: close)...])
}

/// Without `,"ts":MS` (the time the node accepted the message), which comes before `,"data":`.
private func withoutTime(_ frame: String) -> String {
    guard let data = frame.range(of: #","data":"#), let ts = frame.range(of: #","ts":"#, range: frame.startIndex..<data.lowerBound) else { return frame }
    let digitsEnd = frame[ts.upperBound...].firstIndex { !$0.isASCII || !$0.isNumber } ?? frame.endIndex
    return String(frame[..<ts.lowerBound]) + String(frame[digitsEnd...])
}

/// Holds a ``TestClient``'s reading back until ``open()``.
final class ReadGate: Sendable {
    private let opened: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() {
        (opened, continuation) = AsyncStream.makeStream()
    }

    func open() { continuation.finish() }

    func wait() async {
        for await _ in opened {}
    }
}
