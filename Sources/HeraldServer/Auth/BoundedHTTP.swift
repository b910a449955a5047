import AsyncHTTPClient
import NIOCore
import NIOHTTP1

/// The HTTP client Herald asks identity providers (JWKS) and backends (hooks) with.
///
/// - No redirects: an answer comes from the URL configured, never from wherever it points
///   (which could be another scheme or host).
/// - A pool wide enough for the hooks' concurrency (``maxConnectionsPerHost``), instead of the
///   shared client's 8 connections per host, behind which questions would queue and time out.
/// - Every request bounded as a whole: AsyncHTTPClient's own deadline ends once the response
///   head arrives, so a server trickling its body would otherwise hold the request for as long
///   as it keeps the connection alive.
///
/// One client for the process, like `HTTPClient.shared`: it lives as long as the process.
enum BoundedHTTP {
    static let maxConnectionsPerHost = 256

    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: maxConnectionsPerHost)
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(10))
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    struct TimedOut: Error, CustomStringConvertible {
        let timeout: TimeAmount
        var description: String { "no complete answer within \(timeout.nanoseconds / 1_000_000) ms" }
    }

    struct TooLarge: Error, CustomStringConvertible {
        let limit: Int
        var description: String { "the answer is larger than \(limit) bytes" }
    }

    /// Sends `request` and reads at most `maxBytes` of the answer, head and body within `timeout`.
    /// - Throws: ``TimedOut``, ``TooLarge``, or the client's error (unreachable, a redirect, …).
    static func fetch(_ request: HTTPClientRequest, timeout: TimeAmount, maxBytes: Int) async throws -> (status: HTTPResponseStatus, body: ByteBuffer) {
        try await withThrowingTaskGroup(of: (HTTPResponseStatus, ByteBuffer)?.self) { group in
            group.addTask {
                let response = try await client.execute(request, timeout: timeout)
                if let length = response.headers.first(name: "Content-Length").flatMap(Int.init), length > maxBytes {
                    throw TooLarge(limit: maxBytes)
                }
                do {
                    return (response.status, try await response.body.collect(upTo: maxBytes))
                } catch is NIOTooManyBytesError {
                    throw TooLarge(limit: maxBytes)
                }
            }
            group.addTask {
                try await Task.sleep(for: .nanoseconds(timeout.nanoseconds))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let answer = first else { throw TimedOut(timeout: timeout) }
            return answer
        }
    }
}
