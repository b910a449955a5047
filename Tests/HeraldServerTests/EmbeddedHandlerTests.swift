import Foundation
import HTTPTypes
import Herald
import HeraldWire
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Testing

@testable import HeraldServer

/// A node whose hub runs on one `EmbeddedEventLoop`: handlers under test run without sockets
/// or threads, every step driven by the test.
struct EmbeddedNode {
    let loop = EmbeddedEventLoop()
    let node: HeraldNode
    let broker: LocalBroker

    init(_ configure: (inout HeraldConfiguration) -> Void = { _ in }) async throws {
        var configuration = HeraldConfiguration()
        configure(&configuration)
        let hub = Hub(configuration: configuration.hub, eventLoopGroup: loop, logger: TestServer.logger, framing: WebSocketFraming.textFrame)
        let broker = LocalBroker(deliveringTo: hub, history: configuration.history)
        let roster = LocalRoster(limits: configuration.hub, notifying: hub)
        self.broker = broker
        node = try await HeraldServer(configuration: configuration, hub: hub, broker: broker, roster: roster, logger: TestServer.logger).node
    }
}

/// `WebSocketConnection` in an `EmbeddedChannel`: frames in as bytes, frames out as bytes.
@Suite struct WebSocketConnectionEmbeddedTests {
    /// A masked client frame.
    static func clientFrame(opcode: UInt8, _ payload: [UInt8]) -> ByteBuffer {
        let mask: [UInt8] = [0x11, 0x22, 0x33, 0x44]
        var buffer = ByteBuffer()
        buffer.writeInteger(0x80 | opcode)
        if payload.count < 126 {
            buffer.writeInteger(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            buffer.writeInteger(UInt8(0x80 | 126))
            buffer.writeInteger(UInt16(payload.count))
        } else {
            buffer.writeInteger(UInt8(0x80 | 127))
            buffer.writeInteger(UInt64(payload.count))
        }
        buffer.writeBytes(mask)
        buffer.writeBytes(payload.enumerated().map { $0.element ^ mask[$0.offset & 3] })
        return buffer
    }

    static func text(_ text: String) -> ByteBuffer { clientFrame(opcode: 0x1, Array(text.utf8)) }

    /// The server frames written so far: opcode and payload each.
    static func written(_ channel: EmbeddedChannel) throws -> [(opcode: UInt8, payload: ByteBuffer)] {
        var bytes = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&chunk) }
        var frames: [(UInt8, ByteBuffer)] = []
        while let first = bytes.readInteger(as: UInt8.self), var length = bytes.readInteger(as: UInt8.self).map(Int.init) {
            if length == 126 { length = Int(bytes.readInteger(as: UInt16.self)!) } else if length == 127 { length = Int(bytes.readInteger(as: UInt64.self)!) }
            frames.append((first & 0x0F, bytes.readSlice(length: length)!))
        }
        return frames
    }

    static func texts(_ channel: EmbeddedChannel) throws -> [[String: Any]] {
        try written(channel).filter { $0.opcode == 0x1 }.map {
            try #require(JSONSerialization.jsonObject(with: Data(String(buffer: $0.payload).utf8)) as? [String: Any])
        }
    }

    /// The close frames written so far, as code and reason.
    static func closes(_ frames: [(opcode: UInt8, payload: ByteBuffer)]) -> [(code: UInt16, reason: String)] {
        frames.filter { $0.opcode == 0x8 }.map { frame in
            var payload = frame.payload
            return (payload.readInteger(as: UInt16.self) ?? 0, payload.readString(length: payload.readableBytes) ?? "")
        }
    }

    static func open(_ embedded: EmbeddedNode, user: String = "ada") throws -> (EmbeddedChannel, WebSocketConnection) {
        let channel = EmbeddedChannel(loop: embedded.loop)
        let connection = WebSocketConnection(identity: .success(Identity(user: user, rooms: .any)), node: embedded.node, eventLoop: embedded.loop)
        try channel.pipeline.syncOperations.addHandler(connection)
        embedded.loop.run()
        return (channel, connection)
    }

    @Test func theWelcomeComesFirstAndEveryFrameGetsItsAnswer() async throws {
        let embedded = try await EmbeddedNode()
        let (channel, _) = try Self.open(embedded)
        #expect(try Self.texts(channel).first?["type"] as? String == "welcome")
        // Two frames in one read: both answered, in order.
        var reads = Self.text("not json")
        var second = Self.text(#"{"type":"nope","id":7}"#)
        reads.writeBuffer(&second)
        try channel.writeInbound(reads)
        embedded.loop.run()
        let answers = try Self.texts(channel)
        #expect(answers.map { $0["type"] as? String } == ["error", "error"])
        #expect(answers.last?["id"] as? Int == 7)
        // A delivery to the user reaches the connection as one frame, stamped with its position.
        try await embedded.broker.publish(.message(to: .user("ada"), from: nil, data: try RawJSON(validating: "42")), on: embedded.loop)
        embedded.loop.run()
        let delivered = try #require(try Self.texts(channel).first)
        #expect(delivered["type"] as? String == "message" && delivered["offset"] as? Int == 1 && delivered["data"] as? Int == 42)
    }

    @Test func aRefusedTokenIsClosedWith4001() async throws {
        let embedded = try await EmbeddedNode()
        let channel = EmbeddedChannel(loop: embedded.loop)
        let connection = WebSocketConnection(
            identity: .failure(ConnectionRefusal(AuthenticationFailure("token expired"))), node: embedded.node, eventLoop: embedded.loop)
        try channel.pipeline.syncOperations.addHandler(connection)
        embedded.loop.run()
        let frames = try Self.written(channel)
        #expect(frames.count == 1, "no welcome")
        #expect(Self.closes(frames).first?.code == 4001 && Self.closes(frames).first?.reason == "token expired")
        #expect(embedded.node.hub.connectionCount == 0)
    }

    @Test func anOversizeFrameFailsTheConnectionWith1009() async throws {
        let embedded = try await EmbeddedNode { $0.maxFrameSize = 1024 }
        let (channel, _) = try Self.open(embedded)
        _ = try Self.written(channel)
        try channel.writeInbound(Self.text(String(repeating: "x", count: 2048)))
        embedded.loop.run()
        let frames = try Self.written(channel)
        #expect(Self.closes(frames).map(\.code) == [1009])
        #expect(frames.allSatisfy { $0.opcode == 0x8 }, "nothing of the frame was handled")
        // What the client sends after the violation is dropped unparsed.
        try channel.writeInbound(Self.text(#"{"type":"join","room":"r"}"#))
        embedded.loop.run()
        #expect(try Self.written(channel).isEmpty)
    }

    @Test func aSlowConsumerIsCutOffWith1013InsteadOfQueueing() async throws {
        let embedded = try await EmbeddedNode()
        let (channel, _) = try Self.open(embedded)
        _ = try Self.written(channel)
        // Its outbound bytes passed the high-water mark: the channel is not writable.
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        try await embedded.broker.publish(.message(to: .user("ada"), from: nil, data: try RawJSON(validating: "1")), on: embedded.loop)
        embedded.loop.run()
        let frames = try Self.written(channel)
        #expect(frames.filter { $0.opcode == 0x1 }.isEmpty, "the delivery is not queued")
        #expect(Self.closes(frames).first?.code == 1013)
        #expect(Self.closes(frames).first?.reason.hasPrefix("slow consumer") == true)
        #expect(embedded.node.hub.statistics.snapshot().slowConsumersCut == 1)
    }

    @Test func theClientsCloseIsEchoedAndTheChannelCloses() async throws {
        let embedded = try await EmbeddedNode()
        let (channel, _) = try Self.open(embedded)
        _ = try Self.written(channel)
        var code = ByteBuffer()
        code.writeInteger(UInt16(1000))
        try channel.writeInbound(Self.clientFrame(opcode: 0x8, Array(code.readableBytesView)))
        embedded.loop.run()
        #expect(Self.closes(try Self.written(channel)).map(\.code) == [1000])
        #expect(!channel.isActive)
        #expect(embedded.node.hub.connectionCount == 0, "unregistered once the channel closed")
    }
}

/// `PublishRequestHandler` in an `EmbeddedChannel` behind NIO's HTTP/1 codec and pipelining
/// handler, as the listener installs it; a stand-in for the router answers what it forwards.
@Suite struct PublishRequestHandlerEmbeddedTests {
    /// Answers every request forwarded to it with 401 (what the router answers a publishing
    /// call without the API key).
    final class RouterStandIn: ChannelInboundHandler {
        typealias InboundIn = HTTPRequestPart
        typealias OutboundOut = HTTPResponsePart

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            let body = ByteBuffer(string: #"{"error":"unauthorized"}"#)
            context.write(wrapOutboundOut(.head(HTTPResponse(status: .unauthorized, headerFields: [.contentLength: String(body.readableBytes)]))), promise: nil)
            context.write(wrapOutboundOut(.body(body)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    static func channel(_ embedded: EmbeddedNode) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(loop: embedded.loop)
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
        try channel.pipeline.syncOperations.addHandler(PublishRequestHandler(node: embedded.node))
        try channel.pipeline.syncOperations.addHandler(RouterStandIn())
        return channel
    }

    static func post(_ path: String, _ body: String, key: String? = "k") -> String {
        let authorization = key.map { "Authorization: Bearer \($0)\r\n" } ?? ""
        return "POST \(path) HTTP/1.1\r\nHost: x\r\n\(authorization)Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    /// The status lines written so far, in order.
    static func statuses(_ channel: EmbeddedChannel) throws -> [Int] {
        var text = ""
        while let chunk = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: chunk) }
        // A body is not followed by CRLF: the next status line starts right after it.
        return text.components(separatedBy: "HTTP/1.1 ").dropFirst().compactMap { Int($0.prefix(3)) }
    }

    @Test func pipelinedRequestsAreAnsweredInOrderAndPublished() async throws {
        let embedded = try await EmbeddedNode { $0.apiKey = "k" }
        let channel = try Self.channel(embedded)
        let requests =
            Self.post("/api/rooms/lobby/publish", #"{"data":1}"#) + Self.post("/api/rooms/lobby/publish", #"{"data":2}"#, key: "wrong")
            + Self.post("/api/users/ada/send", #"{"data":3}"#) + Self.post("/api/rooms/bad%00name/publish", #"{"data":4}"#)
        try channel.writeInbound(ByteBuffer(string: requests))
        embedded.loop.run()
        let statuses = try Self.statuses(channel)
        #expect(statuses == [202, 401, 202, 400], "one answer per request, in request order; a wrong key goes to the router")
        #expect(embedded.broker.history(of: .room("lobby"), since: 0, limit: 10).latest.offset == 1, "only the authorized publish was taken")
        #expect(embedded.broker.history(of: .user("ada"), since: 0, limit: 10).latest.offset == 1)
    }

    @Test func aBodyPastTheLimitIsAnswered413AndNotPublished() async throws {
        let embedded = try await EmbeddedNode {
            $0.apiKey = "k"
            $0.maxBodySize = 256
        }
        let channel = try Self.channel(embedded)
        try channel.writeInbound(ByteBuffer(string: Self.post("/api/rooms/lobby/publish", #"{"data":""# + String(repeating: "x", count: 1000) + #""}"#)))
        embedded.loop.run()
        #expect(try Self.statuses(channel) == [413])
        #expect(embedded.broker.history(of: .room("lobby"), since: 0, limit: 1).latest.offset == 0)
    }

    @Test func aBodyThatIsNotJSONIsAnswered400() async throws {
        let embedded = try await EmbeddedNode { $0.apiKey = "k" }
        let channel = try Self.channel(embedded)
        try channel.writeInbound(ByteBuffer(string: Self.post("/api/broadcast", "{nope")))
        embedded.loop.run()
        #expect(try Self.statuses(channel) == [400])
    }
}
