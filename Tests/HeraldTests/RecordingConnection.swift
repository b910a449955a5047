import Herald
import HeraldWire
import NIOCore
import Synchronization

/// A transport stand-in for the hub's unit tests: records what the hub writes to it.
final class RecordingConnection: ClientConnection {
    let id: String
    let user: String
    let eventLoop: any EventLoop
    private let state = Mutex<(frames: [String], closed: CloseCode?, flushes: Int, pending: Bool)>(([], nil, 0, false))

    init(id: String, user: String, eventLoop: any EventLoop) {
        self.id = id
        self.user = user
        self.eventLoop = eventLoop
    }

    var frames: [String] { state.withLock { $0.frames } }
    var closedWith: CloseCode? { state.withLock { $0.closed } }
    var flushCount: Int { state.withLock { $0.flushes } }

    func enqueue(_ frame: ByteBuffer) -> Bool {
        state.withLock { state in
            state.frames.append(String(buffer: frame))
            defer { state.pending = true }
            return !state.pending
        }
    }

    func flush() {
        state.withLock { state in
            state.pending = false
            state.flushes += 1
        }
    }

    private let pings = Mutex<[(at: ContinuousClock.Instant, judging: Bool)]>([])
    /// When the hub pinged this connection.
    var pingTimes: [ContinuousClock.Instant] { pings.withLock { $0.map(\.at) } }
    /// Each heartbeat, and whether it judged (could close a connection that did not answer).
    var heartbeats: [(at: ContinuousClock.Instant, judging: Bool)] { pings.withLock { $0 } }

    func heartbeat(judging: Bool) {
        pings.withLock { $0.append((.now, judging)) }
    }

    func close(_ code: CloseCode, reason: String) {
        state.withLock { $0.closed = code }
    }
}

/// Waits until every loop of `group` has run the tasks queued on it so far (deliveries and flushes).
func settle(_ group: any EventLoopGroup) async throws {
    for _ in 0..<2 {
        for loop in group.makeIterator() {
            try await loop.submit {}.get()
        }
    }
}
