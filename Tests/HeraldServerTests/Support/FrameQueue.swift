import Synchronization

/// Frames received by a test client, in order, awaitable one at a time.
final class FrameQueue: Sendable {
    private struct State {
        var buffered: [String] = []
        var head = 0
        var finished = false
        var waiter: CheckedContinuation<String?, Never>?
    }

    private let state = Mutex(State())

    func push(_ frame: String) {
        let waiter: CheckedContinuation<String?, Never>? = state.withLock { state in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.buffered.append(frame)
            return nil
        }
        waiter?.resume(returning: frame)
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The next frame, or `nil` once the connection ended (or the waiting task was cancelled).
    func next() async -> String? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: String?? = state.withLock { state in
                    if state.head < state.buffered.count {
                        defer { state.head += 1 }
                        return .some(state.buffered[state.head])
                    }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}
