import Foundation
import Synchronization
import Testing

@testable import HeraldServer

#if canImport(Glibc)
import Glibc
#endif

@Suite("Overload: new connections refused early, with a retry hint")
struct OverloadTests {
    /// A node already setting up its limit of connections (here: counted by hand, as a node
    /// waiting for a slow Redis would) answers the next WebSocket request `503` with
    /// `Retry-After`, before any upgrade work, instead of letting the handshake wait and time
    /// out; once it has room again, the next request is upgraded.
    @Test func pastTheConnectingLimitAWebSocketRequestIsAnswered503WithRetryAfter() async throws {
        try await TestServer.with({ $0.maxConnectingConnections = 1 }) { server in
            server.node.connecting.add(1, ordering: .relaxed)
            let refused = try await RawWebSocket.run { () -> String in
                let socket = try connectLoopback(port: server.port)
                defer { close(socket) }
                let request =
                    "GET /ws?user=second HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                _ = Array(request.utf8).withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                return readUntilClosed(socket).answer
            }
            #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused.prefix(200))")
            let retryAfter = refused.split(separator: "\r\n").first { $0.lowercased().hasPrefix("retry-after:") }
                .flatMap { Int($0.dropFirst("retry-after:".count).trimmingCharacters(in: .whitespaces)) }
            #expect(retryAfter.map { (1...5).contains($0) } == true, "\(refused.prefix(300))")
            #expect(refused.contains(#""error":"overloaded""#))
            #expect(server.node.overloadRefusals.load(ordering: .relaxed) == 1)

            server.node.connecting.subtract(1, ordering: .relaxed)
            let client = try await TestClient.connect(port: server.port, query: "user=third")
            _ = try await client.next(type: "welcome")
            await client.close()
            // Its welcome sent, it no longer counts as being set up.
            #expect(server.node.connecting.load(ordering: .relaxed) == 0)
        }
    }
}
