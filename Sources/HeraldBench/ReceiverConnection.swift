import Foundation
import NIOCore
import NIOWebSocket
import Synchronization

/// The generator's end of one WebSocket: counts welcomes and replies, checks every delivery
/// (exactly once, in order per stream) and records its latency. Confined to its event loop.
final class ReceiverConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let index: Int
    let statistics: ReceiverStatistics
    /// The event loop the connection lives on; every method is called there.
    let channelLoop: any EventLoop
    /// Succeeds when the server's `welcome` arrives.
    let welcome: EventLoopFuture<Void>
    private(set) var isActive = true
    private(set) var ledger = DeliveryLedger()
    private var context: ChannelHandlerContext?
    private var welcomed: EventLoopPromise<Void>?
    private var pendingReplies: [EventLoopPromise<Void>] = []
    private(set) var closeCode: UInt16?
    /// The last position seen on the user's channel (`storm`: where a reconnect resumes).
    private(set) var position: ChannelPosition?
    /// `storm`: called when a welcomed connection is lost without our asking (on its loop).
    var onLost: ((ReceiverConnection) -> Void)?
    private var wasWelcomed = false
    private var closedByUs = false

    /// - Parameters:
    ///   - ledger: what earlier connections of this receiver got (a reconnect carries it on).
    ///   - position: where earlier connections got to, kept until a delivery moves it.
    init(
        index: Int, statistics: ReceiverStatistics, welcomed: EventLoopPromise<Void>, ledger: DeliveryLedger = DeliveryLedger(),
        position: ChannelPosition? = nil
    ) {
        self.index = index
        self.statistics = statistics
        self.welcomed = welcomed
        self.welcome = welcomed.futureResult
        self.channelLoop = welcomed.futureResult.eventLoop
        self.ledger = ledger
        self.position = position
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            statistics.framesReceived.add(1, ordering: .relaxed)
            let now = NIODeadline.now().uptimeNanoseconds
            let payload = frame.unmaskedData.withUnsafeReadableBytes { BenchPayload.parse(frame: $0) }
            if let payload {
                if onLost != nil, let seen = frame.unmaskedData.withUnsafeReadableBytes({ ChannelPosition.parse(frame: $0) }) { position = seen }
                ledger.record(stream: payload.stream, sequence: payload.sequence)
                statistics.deliveries.add(1, ordering: .relaxed)
                let latency = now > payload.sentAt ? (now - payload.sentAt) / 1000 : 0
                statistics.recordLatency(max(latency, 1), on: context.eventLoop)
            } else {
                classify(frame.unmaskedData)
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            closeCode = data.readInteger(as: UInt16.self)
            if let welcomed {
                // Refused before the welcome: an attempt that failed, not a connection closed.
                let reason = data.readString(length: data.readableBytes) ?? ""
                welcomed.fail(ConnectFailure.closed(code: closeCode, reason: reason))
                self.welcomed = nil
            } else {
                statistics.recordClose(code: closeCode)
            }
            let reply = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: ByteBuffer())
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in bound.value.close(promise: nil) }
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        isActive = false
        if wasWelcomed, !closedByUs, let onLost {
            self.onLost = nil
            onLost(self)
        }
        welcomed?.fail(ConnectFailure(cause: "connection closed before its welcome"))
        welcomed = nil
        for promise in pendingReplies { promise.fail(BenchError("connection closed before the reply")) }
        pendingReplies.removeAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Sends a client frame; the promise completes with the next reply (`joined`, `ok`, or an error).
    func send(_ text: String, reply: EventLoopPromise<Void>?) {
        guard let context else {
            reply?.fail(BenchError("not connected"))
            return
        }
        if let reply { pendingReplies.append(reply) }
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text))
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    /// Stops reading from the socket (the `slow` scenario's stalled client).
    func stopReading() {
        context?.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    func close() {
        closedByUs = true
        context?.close(promise: nil)
    }

    private func classify(_ buffer: ByteBuffer) {
        switch Self.frameType(String(buffer: buffer)) {
        case "welcome":
            wasWelcomed = true
            statistics.welcomes.add(1, ordering: .relaxed)
            welcomed?.succeed()
            welcomed = nil
        case "error":
            statistics.errors.add(1, ordering: .relaxed)
            if !pendingReplies.isEmpty { pendingReplies.removeFirst().fail(BenchError("server answered \(String(buffer: buffer))")) }
        case "joined", "ok", "left":
            statistics.replies.add(1, ordering: .relaxed)
            if !pendingReplies.isEmpty { pendingReplies.removeFirst().succeed() }
        default:
            break
        }
    }

    /// The value of the frame's `type` field, tolerant of any JSON spacing (the seed baseline
    /// writes `"type": "welcome"`).
    static func frameType(_ text: String) -> Substring? {
        guard let key = text.range(of: #""type""#) else { return nil }
        var rest = text[key.upperBound...].drop { $0 == " " || $0 == ":" || $0 == "\t" }
        guard rest.first == "\"" else { return nil }
        rest = rest.dropFirst()
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return rest[..<end]
    }
}

/// Why one connection attempt failed, grouped by cause in the report; `retryAfter` is set when
/// the server asked the client to come back later (503 with Retry-After, close 1013 or 4029).
struct ConnectFailure: Error, CustomStringConvertible, Sendable {
    var cause: String
    var retryAfter: Double?

    var description: String { cause }

    /// A close before the welcome: 1013 (try again later, "retry in N s") and 4029 (a limit)
    /// are hints to retry; anything else is final.
    static func closed(code: UInt16?, reason: String) -> ConnectFailure {
        let code = code.map(String.init) ?? "without a code"
        switch code {
        case "1013", "4029":
            var delay: Double = 1
            if let range = reason.range(of: "retry in "), let seconds = Double(reason[range.upperBound...].prefix { $0.isNumber }) {
                delay = seconds
            }
            return ConnectFailure(cause: "closed \(code) before the welcome (retry hint)", retryAfter: delay)
        default:
            return ConnectFailure(cause: "closed \(code) before the welcome: \(reason.prefix(80))")
        }
    }
}
