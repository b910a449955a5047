import Foundation
@testable import HeraldServer
import HeraldTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Overload: new connections refused early, with a retry hint")
struct OverloadTests {
    /// A node already setting up its limit of connections (Redis paused: none can finish)
    /// answers the next WebSocket request `503` with `Retry-After`, before any upgrade work,
    /// instead of letting the handshake wait and time out.
    @Test func pastTheConnectingLimitAWebSocketRequestIsAnswered503WithRetryAfter() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        try await TestServer.with({
            $0.redisURL = "redis://127.0.0.1:\(redis.port)"
            $0.maxConnectingConnections = 1
        }) { server in
            kill(redis.pid, SIGSTOP)
            defer { kill(redis.pid, SIGCONT) }
            // Upgraded, then waits for Redis: the node's one connection being set up.
            let first = try await RawWebSocket.run { try RawWebSocket(port: server.port, query: "user=first") }
            try await eventually("the first connection counts as being set up") { server.node.connecting.load(ordering: .relaxed) == 1 }
            let refused = try await RawWebSocket.run { () -> String in
                let second = try connectLoopback(port: server.port)
                defer { close(second) }
                let request = "GET /ws?user=second HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                _ = Array(request.utf8).withUnsafeBytes { send(second, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                return readUntilClosed(second).answer
            }
            withExtendedLifetime(first) {}
            #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused.prefix(200))")
            let retryAfter = refused.split(separator: "\r\n").first { $0.lowercased().hasPrefix("retry-after:") }
                .flatMap { Int($0.dropFirst("retry-after:".count).trimmingCharacters(in: .whitespaces)) }
            #expect(retryAfter.map { (1...5).contains($0) } == true, "\(refused.prefix(300))")
            #expect(refused.contains(#""error":"overloaded""#))
        }
    }
}
