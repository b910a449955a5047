import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The listening socket and its accept loop: Hummingbird's server, less what Herald does not
/// use, plus `SO_REUSEPORT` so that several worker processes can share one port
/// (`herald serve --workers N`), the kernel spreading new connections over them.
///
/// Connections are accepted by ``ListeningSocket`` (so that a WebSocket knows its descriptor)
/// and handed to NIO, spread over the event loops.
///
/// On graceful shutdown it stops accepting, tells every connection to quiesce (WebSockets
/// close with 1012) and returns once they have closed.
struct HeraldListener: Service {
    let childChannel: HeraldChildChannel
    let host: String
    let port: Int
    let backlog: Int
    let reusePort: Bool
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    let onListening: @Sendable (Int) async -> Void

    func run() async throws {
        let socket = try ListeningSocket(host: host, port: port, backlog: backlog, reusePort: reusePort)
        let connections = OpenConnections()
        // HTTP connections, from their event loops to the task group below, which picks each
        // up at once (so this holds at most the connections of a moment; the open-file limit
        // bounds it).
        let (accepted, acceptedSink) = AsyncStream.makeStream(of: HeraldChildChannel.Value.self)
        let acceptEnded = eventLoopGroup.any().makePromise(of: Void.self)
        let childChannel = self.childChannel
        let group = self.eventLoopGroup
        let logger = self.logger
        let usesTLS = childChannel.node.tls != nil
        // With workers sharing the port: one short of the open-file limit (room kept for Redis,
        // files and the connections being handed over), a worker leaves the port's group until
        // it is back under it by a margin, so a reconnect storm after another worker died is
        // spread over the workers with room instead of queueing at the full ones.
        let capacity = Self.connectionCapacity
        let wasFull = Atomic<Bool>(false)
        socket.startAccepting(
            load: { accepted in
                // The kernel hands out the lowest free descriptor: an accepted one numbered at the
                // capacity means every descriptor below it is in use, even while the channels of
                // a burst of accepts are still being set up (and not yet counted as open).
                let open = max(connections.count, Int(accepted ?? 0))
                let full = wasFull.load(ordering: .relaxed) ? open >= capacity - 1024 : open >= capacity
                wasFull.store(full, ordering: .relaxed)
                return full ? .full : .room
            },
            onError: { message in logger.error("\(message)") },
            onAccept: { descriptor, peer in
                // Refused before NIO sees it: the socket is just closed.
                guard let reservation = childChannel.admission.reserve(peer) else {
                    close(descriptor)
                    return
                }
                ClientBootstrap(group: group)
                    // Over TLS a half-closure is TLS's close_notify, which the TLS handler reports
                    // itself; a bare TCP FIN under it would otherwise leave a closing connection
                    // waiting for a close_notify that never comes.
                    .channelOption(ChannelOptions.allowRemoteHalfClosure, value: !usesTLS)
                    .channelInitializer { channel in
                        connections.insert(channel)
                        return childChannel.setup(channel: channel, descriptor: descriptor, reservation: reservation, logger: logger).map { value in
                            // Only HTTP connections need a task (the router is async); an upgraded
                            // WebSocket lives in its channel handler.
                            value.upgradeResult.whenComplete { result in
                                switch result {
                                case .success(.notUpgraded): acceptedSink.yield(value)
                                case .success(.webSocket): break
                                case .failure(let error):
                                    logger.debug("connection ended before its first request", metadata: ["error": "\(error)"])
                                }
                            }
                        }
                    }
                    .withConnectedSocket(descriptor)
                    .whenFailure { error in
                        // Given back here too in case the channel never existed (given back once).
                        childChannel.admission.release(reservation)
                        logger.debug("accepted connection could not be set up", metadata: ["error": "\(error)"])
                    }
            },
            onStop: {
                acceptedSink.finish()
                acceptEnded.succeed()
            }
        )
        await onListening(socket.port)
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withDiscardingTaskGroup { tasks in
                    for await child in accepted {
                        tasks.addTask { await childChannel.handle(value: child, logger: logger) }
                    }
                }
            } onCancel: {
                socket.stop()
            }
            try? await acceptEnded.futureResult.get()
            socket.closeSocket()
            // The WebSockets are still finishing their closing handshakes (1012) once accepting
            // stopped: wait for them before returning.
            if connections.isQuiescing { await connections.allClosed() }
        } onGracefulShutdown: {
            socket.stop()
            connections.quiesce()
        }
    }

    /// Connections one process can hold: its open-file limit less 512 descriptors kept for
    /// Redis, files, logs and the event loops.
    static var connectionCapacity: Int {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let files = limit.rlim_cur > UInt64(Int.max) ? Int.max : Int(limit.rlim_cur)
        return max(64, files - 512)
    }

    /// Hummingbird's request handling around a router: the request context, and a 500 for an
    /// error the router did not turn into a response.
    static func responder(
        for router: Router<BasicRequestContext>,
        logger: Logger
    ) -> HTTPChannelHandler.Responder {
        let responder = router.buildResponder()
        return { request, responseWriter, channel in
            let context = BasicRequestContext(source: ApplicationRequestContextSource(channel: channel, logger: logger))
            var response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch {
                logger.debug("unhandled error", metadata: ["error": "\(error)"])
                response = Response(status: .internalServerError)
            }
            response.headers[.server] = "herald"
            response.headers[.date] = HTTPDate.now
            try await responseWriter.write(response: response.head, body: response.body)
        }
    }
}

/// The `Date` header's value (RFC 9110 IMF-fixdate), formatted at most once per second.
enum HTTPDate {
    private static let cache = Mutex<(second: Int, text: String)>((-1, ""))

    static var now: String {
        var time = time_t()
        Foundation.time(&time)
        let second = Int(time)
        if let cached = cache.withLock({ $0.second == second ? $0.text : nil }) { return cached }
        var parts = tm()
        gmtime_r(&time, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let text =
            "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
        cache.withLock { $0 = (second, text) }
        return text
    }
}
