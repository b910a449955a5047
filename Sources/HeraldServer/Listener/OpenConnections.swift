import NIOCore
import Synchronization

/// The connections a listener accepted and that are still open, so that a graceful shutdown
/// can tell each to quiesce (`ChannelShouldQuiesceEvent`: WebSockets close with 1012, HTTP
/// connections close once their response is written) and wait until all have closed.
///
/// One entry per open connection, removed when it closes: bounded by the open-file limit.
final class OpenConnections: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var quiescing = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    var isQuiescing: Bool { state.withLock { $0.quiescing } }

    /// Connections open now.
    var count: Int { state.withLock { $0.channels.count } }

    func insert(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        let quiescing = state.withLock { state in
            state.channels[key] = channel
            return state.quiescing
        }
        // Accepted while the shutdown was starting: it quiesces too.
        if quiescing { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        channel.closeFuture.whenComplete { _ in self.remove(key) }
    }

    private func remove(_ key: ObjectIdentifier) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.channels[key] = nil
            guard state.channels.isEmpty, state.quiescing else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Tells every open connection to finish up and close.
    func quiesce() {
        let channels = state.withLock { state in
            state.quiescing = true
            return Array(state.channels.values)
        }
        for channel in channels { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
    }

    /// Returns once no connection is open (after ``quiesce()``).
    func allClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state in
                if state.channels.isEmpty { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
