#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The listening socket and its accept loop: Hummingbird's server, less what Herald does not
/// use, plus `SO_REUSEPORT` so that several worker processes can share one port
/// (`herald serve --workers N`), the kernel spreading new connections over them.
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
        let quiescing = ServerQuiescingHelper(group: eventLoopGroup)
        let bootstrap = ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(ChannelOptions.backlog, value: numericCast(backlog))
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: reusePort ? 1 : 0)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
        let childChannel = self.childChannel
        let logger = self.logger
        let server = try await bootstrap.bind(host: host, port: port) { channel in
            childChannel.setup(channel: channel, logger: logger)
        }
        await onListening(server.channel.localAddress?.port ?? port)
        // Set when shutdown begins: completes once every connection has closed.
        let closing = Mutex<EventLoopFuture<Void>?>(nil)
        let loop = eventLoopGroup.any()
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                do {
                    try await server.executeThenClose { inbound in
                        for try await child in inbound {
                            group.addTask { await childChannel.handle(value: child, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("accept loop ended", metadata: ["error": "\(error)"])
                }
            }
            // The accept loop ends when the listening socket closes; the WebSockets are still
            // finishing their closing handshakes (1012) then: wait for them before returning.
            if let allClosed = closing.withLock({ $0 }) { try? await allClosed.get() }
        } onGracefulShutdown: {
            let promise = loop.makePromise(of: Void.self)
            closing.withLock { $0 = promise.futureResult }
            quiescing.initiateShutdown(promise: promise)
        }
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
        let text = "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
        cache.withLock { $0 = (second, text) }
        return text
    }
}
