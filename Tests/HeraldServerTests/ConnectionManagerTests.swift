import Foundation
import Herald
import HeraldServer
import HeraldWire
import NIOCore
import Testing

/// The seed's "cleanup, pings and limits", against a real server and real clients.
@Suite("Connection manager")
struct ConnectionManagerTests {
    @Test func badFramesGetBadRequestAndTheConnectionStaysUsable() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.connect(port: server.port, query: "user=carol")
            _ = try await client.next(type: "welcome")
            let bad = [
                "not json", #"{"type":"join","id":6}"#, #"{"type":"bogus"}"#, #"{"type":"publish","room":"r"}"#,
                #"{"type":"publish","room":"r","data":1"#, "[1,2]", #"{"type":"join","room":""}"#,
            ]
            for frame in bad {
                try await client.send(frame)
                let error = try await client.nextJSON()
                #expect(error["type"] as? String == "error" && error["code"] as? String == "bad_request", "frame \(frame)")
                if frame.contains(#""id":6"#) { #expect(error["id"] as? Int == 6) }
            }
            try await client.sendBinary([0, 1, 2])
            #expect(try await client.nextJSON()["code"] as? String == "bad_request")
            try await client.send(#"{"type":"join","room":"r2","id":8}"#)
            #expect(try await client.next() == #"{"type":"joined","room":"r2","id":8}"#)
            await client.close()
        }
    }

    @Test func oversizeFrameClosesWith1009() async throws {
        try await TestServer.with({ $0.maxFrameSize = 1024 }) { server in
            let client = try await TestClient.connect(port: server.port, query: "user=big")
            _ = try await client.next(type: "welcome")
            try await client.send(#"{"type":"publish","room":"r","data":""# + String(repeating: "x", count: 2000) + #""}"#)
            #expect(try await client.closed().code == 1009)
            try await eventually("the connection is removed") { server.hub.connectionCount == 0 }
        }
    }

    @Test func silentClientIsRemovedByTheHeartbeat() async throws {
        // 2 s, not 1: the lively client must answer each ping before the next, and on a loaded
        // 2-core machine running the suites in parallel a 1 s deadline was once missed.
        try await TestServer.with({ $0.hub.heartbeat = .seconds(2) }) { server in
            let lively = try await TestClient.connect(port: server.port, query: "user=lively")
            #expect(try await lively.nextJSON()["heartbeat"] as? Int == 2)
            try await lively.send(#"{"type":"join","room":"r"}"#)
            _ = try await lively.next(type: "joined")
            _ = try await TestClient.connect(port: server.port, query: "user=silent", reading: false)
            try await eventually("silent connects") { server.hub.connectionCount(of: "silent") == 1 }
            // Within two heartbeats the silent client is pinged, misses it, and is removed from every index.
            try await eventually("silent is removed", within: 15) { server.hub.connectionCount(of: "silent") == 0 }
            let user = try json(try await server.http("GET", "/api/users/silent").body)
            #expect(user["online"] as? Bool == false)
            // The client that answers pings (WSClient does, while reading) is still there and usable.
            #expect(server.hub.connectionCount(of: "lively") == 1)
            #expect(try await server.http("POST", "/api/rooms/r/publish", body: #"{"data":1}"#).status == 202)
            #expect(try await lively.next(type: "message")["data"] as? Int == 1)
            await lively.close()
        }
    }

    @Test func rateLimitRefusesThenClosesSustainedAbuse() async throws {
        try await TestServer.with({
            $0.rateLimit = 2
            $0.rateBurst = 5
        }) { server in
            let client = try await TestClient.connect(port: server.port, query: "user=spammer")
            _ = try await client.next(type: "welcome")
            for n in 0..<40 {
                try? await client.send(#"{"type":"join","room":"r\#(n)"}"#)
            }
            var joined = 0
            var limited = 0
            while let frame = try? await client.nextJSON(timeout: 5) {
                if frame["type"] as? String == "joined" { joined += 1 }
                if frame["code"] as? String == "rate_limited" { limited += 1 }
            }
            #expect(joined >= 5 && joined < 40)
            #expect(limited >= 1)
            #expect(try await client.closed().code == 1008)
        }
    }

    @Test func pingFloodsAreRateLimitedToo() async throws {
        try await TestServer.with({
            $0.rateLimit = 2
            $0.rateBurst = 5
        }) { server in
            let client = try await TestClient.connect(port: server.port, query: "user=pinger")
            _ = try await client.next(type: "welcome")
            for _ in 0..<40 { try? await client.sendPing() }
            #expect(try await client.closed().code == 1008)
        }
    }

    @Test func slowConsumerIsCutOffWhileOthersKeepReceiving() async throws {
        try await TestServer.with({
            $0.maxOutboundBytes = 64 * 1024
            $0.closeTimeout = .milliseconds(500)
        }) { server in
            let fast = try await TestClient.connect(port: server.port, query: "user=fast")
            _ = try await fast.next(type: "welcome")
            _ = try await TestClient.connect(port: server.port, query: "user=slow", reading: false)
            try await eventually("slow connects") { server.hub.connectionCount(of: "slow") == 1 }
            _ = try await server.node.roster.join(user: "fast", room: "big")
            _ = try await server.node.roster.join(user: "slow", room: "big")

            let payload = "\"" + String(repeating: "p", count: 16 * 1024) + "\""
            var sent = 0
            // The slow client's kernel buffers fill first (several MB), then its 64 KiB queue: it
            // must be cut long before 4,000 messages (64 MB). The fast client receives each one.
            while server.hub.statistics.snapshot().slowConsumersCut == 0 && sent < 4000 {
                let data = try RawJSON(validating: #"{"n":\#(sent),"p":\#(payload)}"#)
                try await server.node.broker.publish(.message(to: .room("big"), from: nil, data: data), on: server.hub.anyEventLoop)
                let frame = try await fast.nextJSON()
                #expect((frame["data"] as? [String: Any])?["n"] as? Int == sent)
                sent += 1
            }
            #expect(server.hub.statistics.snapshot().slowConsumersCut == 1)
            #expect(sent < 4000)
            try await eventually("the slow consumer is removed") { server.hub.connectionCount(of: "slow") == 0 }
            // Everyone else carries on.
            #expect(try await server.http("POST", "/api/rooms/big/publish", body: #"{"data":"after"}"#).status == 202)
            #expect(try await fast.nextJSON()["data"] as? String == "after")
            #expect(server.hub.connectionCount(of: "fast") == 1)
            await fast.close()
        }
    }

    /// A consumer that stops reading until far more is queued than the kernel's socket buffers
    /// hold: what the socket did not take waits in NIO, and once the consumer reads again it
    /// gets every message once, in order, and later messages (sent directly again) after them.
    @Test func aConsumerThatFallsBehindCatchesUpInOrder() async throws {
        try await TestServer.with({
            $0.maxOutboundBytes = 128 * 1024 * 1024
            // Not a heartbeat test: a ping queued behind 24 MB on a loaded machine may not be
            // answered before the next one, which would close the connection.
            $0.hub.heartbeat = .seconds(300)
        }) { server in
            let gate = ReadGate()
            let lagging = try await TestClient.connect(port: server.port, query: "user=lagging", pausesAfterFirstFrameUntil: gate)
            _ = try await lagging.next(type: "welcome")
            let payload = "\"" + String(repeating: "p", count: 16 * 1024) + "\""
            // 24 MB: several times what the kernel buffers for a socket that is not read.
            let behind = 1_500
            for n in 0..<behind {
                let data = try RawJSON(validating: #"{"n":\#(n),"p":\#(payload)}"#)
                try await server.node.broker.publish(.message(to: .user("lagging"), from: nil, data: data), on: server.hub.anyEventLoop)
            }
            gate.open()
            var misplaced: [Int] = []
            for n in 0..<behind {
                let frame = try await lagging.nextJSON(timeout: 30)
                if (frame["data"] as? [String: Any])?["n"] as? Int != n { misplaced.append(n) }
            }
            #expect(misplaced.isEmpty, "\(misplaced.count) messages out of place, first \(misplaced.prefix(5))")
            for n in behind..<(behind + 20) {
                #expect(try await server.http("POST", "/api/users/lagging/send", body: #"{"data":{"n":\#(n)}}"#).status == 202)
                #expect((try await lagging.nextJSON()["data"] as? [String: Any])?["n"] as? Int == n)
            }
            #expect(server.hub.statistics.snapshot().slowConsumersCut == 0)
            await lagging.close()
        }
    }

    @Test func perUserConnectionLimitClosesWith4029() async throws {
        try await TestServer.with({ $0.hub.maxConnectionsPerUser = 1 }) { server in
            let first = try await TestClient.connect(port: server.port, query: "user=solo")
            _ = try await first.next(type: "welcome")
            let second = try await TestClient.connect(port: server.port, query: "user=solo")
            #expect(try await second.endsWithoutFrames())
            let closed = try await second.closed()
            #expect(closed.code == 4029)
            #expect(closed.reason?.contains("too many connections") == true)
            await first.close()
        }
    }

    @Test func gracefulShutdownSends1012() async throws {
        let server = try await TestServer.start()
        let client = try await TestClient.connect(port: server.port, query: "user=stayer")
        _ = try await client.next(type: "welcome")
        try await server.shutdown()
        let closed = try await client.closed()
        #expect(closed.code == 1012)
    }

    @Test func developmentModeNeedsAUserName() async throws {
        try await TestServer.with { server in
            let client = try await TestClient.connect(port: server.port, query: "nobody=1")
            #expect(try await client.endsWithoutFrames())
            let closed = try await client.closed()
            #expect(closed.code == 4001)
            #expect(closed.reason?.contains("user missing") == true)
        }
    }

    /// RFC 6455 7.1.7: after a violation the server sends its close frame and closes TCP at once,
    /// without waiting for a close frame it could not parse anyway.
    @Test func aProtocolViolationClosesTheConnectionAtOnceWithItsCode() async throws {
        // A close timeout far longer than "at once" may take on a loaded machine.
        try await TestServer.with({ $0.closeTimeout = .seconds(30) }) { server in
            let port = server.port
            let (code, closedWithin) = try await RawWebSocket.run { () throws -> (UInt16, Duration) in
                let client = try RawWebSocket(port: port, query: "user=mallory")
                _ = try client.nextFrame()  // welcome
                try client.sendFrame(opcode: 0x1, payload: [0x7B, 0xFF, 0x7D])  // "{\xFF}": not UTF-8
                let started = ContinuousClock.now
                guard let close = try client.nextFrame(), close.opcode == 0x8, close.payload.count >= 2 else { throw TestFailure("no close frame") }
                // The client answers nothing; the server closes TCP by itself.
                while try client.nextFrame() != nil {}
                return (UInt16(close.payload[0]) << 8 | UInt16(close.payload[1]), ContinuousClock.now - started)
            }
            #expect(code == 1007)
            #expect(closedWithin < .seconds(15), "TCP closed right after the close frame, not after the 30 s close timeout: \(closedWithin)")
        }
    }

    /// A client that sends FIN will send nothing more: its slot and presence are released at
    /// once, not when a write fails much later.
    @Test func aClientThatHalfClosesIsUnregisteredAtOnce() async throws {
        try await TestServer.with { server in
            let port = server.port
            let client = try await RawWebSocket.run { () throws -> RawWebSocket in
                let client = try RawWebSocket(port: port, query: "user=halfway")
                _ = try client.nextFrame()  // welcome
                return client
            }
            #expect(server.hub.connectionCount == 1)
            client.shutdownWrite()
            try await eventually("the half-closed connection is unregistered", within: 2) { server.hub.connectionCount == 0 }
            #expect(server.hub.connectionCount(of: "halfway") == 0)

            // Frames sent just before the FIN are still handled and answered, then the
            // connection closes: a join waiting for the roster, and a publish after it.
            let watcher = try await TestClient.connect(port: port, query: "user=watcher")
            _ = try await watcher.next(type: "welcome")
            try await watcher.send(#"{"type":"join","room":"R"}"#)
            _ = try await watcher.next(type: "joined")
            let frames = try await RawWebSocket.run { () throws -> [String] in
                let client = try RawWebSocket(port: port, query: "user=last-words")
                try client.sendFrame(opcode: 0x1, payload: Array(#"{"type":"join","room":"R","id":1}"#.utf8))
                try client.sendFrame(opcode: 0x1, payload: Array(#"{"type":"publish","room":"R","data":"bye","id":2}"#.utf8))
                client.shutdownWrite()
                var texts: [String] = []
                while let frame = try client.nextFrame() { if frame.opcode == 0x1 { texts.append(String(decoding: frame.payload, as: UTF8.self)) } }
                return texts
            }
            #expect(frames.first?.contains(#""type":"welcome""#) == true, "\(frames)")
            #expect(frames.map(withoutPosition).contains(#"{"type":"joined","room":"R","id":1}"#), "\(frames)")
            #expect(frames.contains(#"{"type":"ok","id":2}"#), "\(frames)")
            #expect(try await watcher.nextPositioned()["data"] as? String == "bye")
            await watcher.close()
        }
    }
}
