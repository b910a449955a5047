import NIOCore

/// The reconnection loop shared by ``RedisClient`` and ``RedisSubscriber``: wait while the
/// connection is up, and after it is lost, connect again with capped exponential backoff and
/// jitter until it is back or the task is cancelled.
struct ConnectionKeeper {
    var backoff: Backoff
    /// The connection in use now (`nil` while there is none).
    let current: @Sendable () -> RedisConnection?
    /// Opens a connection and puts it in use (a subscriber also resubscribes); throws to retry.
    let connect: @Sendable () async throws -> Void
    /// The connection in use was lost: take it out of use.
    let lost: @Sendable (RedisConnection) -> Void
    /// Called each time a connection is back after a loss (not for the first one).
    let reconnected: @Sendable () -> Void
    /// Returns when the connection in use should be given up although it is up (its server is
    /// no longer the master Sentinel names); `nil` keeps a connection until it is lost.
    var watch: (@Sendable (RedisConnection) async -> Void)? = nil

    /// Runs until the task is cancelled, then closes the connection in use.
    mutating func run() async {
        // A connection made before run() (by connect()) counts: losing it is a reconnect.
        var connectedBefore = current() != nil
        var connectedAt: ContinuousClock.Instant? = nil
        while !Task.isCancelled {
            if let connection = current(), connection.isActive {
                await withTaskCancellationHandler { [watch] in
                    guard let watch else {
                        try? await connection.closeFuture.get()
                        return
                    }
                    await withTaskGroup(of: Void.self) { group in
                        group.addTask { try? await connection.closeFuture.get() }
                        group.addTask {
                            await watch(connection)
                            // The master moved: close, so that the loop below reconnects to it.
                            if !Task.isCancelled { await connection.close() }
                        }
                        await group.next()
                        group.cancelAll()
                    }
                } onCancel: {
                    Task { await connection.close() }
                }
                lost(connection)
                continue
            }
            do {
                // A connection that was lost within a second of being made (a server that keeps
                // closing it, a redirection to a server that redirects back) does not reset the
                // backoff: reconnects slow down instead of looping.
                if let made = connectedAt, ContinuousClock.now - made < .seconds(1) { try? await Task.sleep(for: backoff.next()) }
                try await connect()
                connectedAt = ContinuousClock.now
                backoff.reset()
                if connectedBefore { reconnected() }
                connectedBefore = true
            } catch {
                try? await Task.sleep(for: backoff.next())
            }
        }
        if let connection = current() { await connection.close() }
    }
}
