import DequeModule
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Publishes over one keep-alive HTTP/1.1 connection, pipelined: requests are written as they
/// are due, responses counted as they come back in order.
final class HTTPPublisher: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let statistics: PublishStatistics
    private let host: String
    private var context: ChannelHandlerContext?
    private var status: UInt = 0
    /// `storm`: where unconfirmed messages are recorded, and the messages awaiting their
    /// response, in order (HTTP/1.1 answers pipelined requests in order).
    private let unconfirmed: StormCounters?
    private var inFlight = Deque<MessageID>()
    private let active = Atomic<Bool>(true)
    private(set) var channelLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any()

    init(host: String, statistics: PublishStatistics, unconfirmed: StormCounters? = nil) {
        self.host = host
        self.statistics = statistics
        self.unconfirmed = unconfirmed
    }

    /// Whether the connection is still up (from any thread).
    var isActive: Bool { active.load(ordering: .relaxed) }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        channelLoop = context.eventLoop
    }

    /// `storm`: posts a message whose fate is tracked by id.
    func post(path: String, body: String, id: MessageID) {
        guard context != nil, isActive else {
            unconfirmed?.unconfirmed.withLock { _ = $0.insert(id) }
            return
        }
        inFlight.append(id)
        post(path: path, body: body)
    }

    func channelInactive(context: ChannelHandlerContext) {
        active.store(false, ordering: .relaxed)
        if let unconfirmed, !inFlight.isEmpty {
            // Died with its server: these may or may not have been published.
            let ids = inFlight
            inFlight.removeAll()
            unconfirmed.unconfirmed.withLock { $0.formUnion(ids) }
        }
        context.fireChannelInactive()
    }

    /// Messages each request in flight carries, in order (more than 1: a `POST /api/publish` batch).
    private var messagesInFlight = Deque<Int>()
    /// The body of a batch's response, whose results say which messages were accepted.
    private var batchResponse = ByteBuffer()

    /// Writes one `POST path` with a JSON body carrying `messages` messages. Call on the channel's event loop.
    func post(path: String, body: String, messages: Int = 1) {
        guard let context else {
            statistics.failed.add(messages, ordering: .relaxed)
            return
        }
        messagesInFlight.append(messages)
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        statistics.sent.add(messages, ordering: .relaxed)
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status.code
        case .body(var part):
            if (messagesInFlight.first ?? 1) > 1 { batchResponse.writeBuffer(&part) }
        case .end:
            let messages = messagesInFlight.popFirst() ?? 1
            if messages > 1 {
                // {"results":[{"status":202,"accepted":true},…]}: one result per message.
                let accepted = (200..<300).contains(status) ? Self.count(#""status":202"#, in: batchResponse) : 0
                statistics.accepted.add(accepted, ordering: .relaxed)
                statistics.failed.add(messages - accepted, ordering: .relaxed)
                batchResponse.clear()
                return
            }
            let id = inFlight.popFirst()
            if (200..<300).contains(status) {
                statistics.accepted.add(1, ordering: .relaxed)
            } else {
                statistics.failed.add(1, ordering: .relaxed)
                if let id { unconfirmed?.unconfirmed.withLock { _ = $0.insert(id) } }
            }
        }
    }

    private static func count(_ needle: String, in buffer: ByteBuffer) -> Int {
        let pattern = Array(needle.utf8)
        return buffer.withUnsafeReadableBytes { bytes in
            var found = 0
            var index = 0
            while index + pattern.count <= bytes.count {
                if bytes[index] == pattern[0], zip(pattern.indices, pattern).allSatisfy({ bytes[index + $0] == $1 }) {
                    found += 1
                    index += pattern.count
                } else {
                    index += 1
                }
            }
            return found
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Publish counters, shared by the publishers.
final class PublishStatistics: Sendable {
    let sent = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
}
