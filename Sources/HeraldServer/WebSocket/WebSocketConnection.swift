import Herald
import HeraldWire
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// One client WebSocket: a channel handler at the top of the upgraded pipeline, and the
/// ``ClientConnection`` the hub delivers to.
///
/// There is no task per connection: inbound frames are handled as they are read, on the
/// channel's event loop, and deliveries are written on the same loop by the hub's shard. All
/// mutable state is confined to that loop (hence `@unchecked Sendable`).
///
/// Outbound bytes are bounded by the channel's write-buffer high-water mark, set to
/// ``HeraldConfiguration/maxOutboundBytes``: a delivery that finds the channel unwritable cuts
/// the connection off with 1013 (slow consumer) instead of queueing more.
final class WebSocketConnection: ChannelInboundHandler, ClientConnection, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let id: String
    let user: String
    let eventLoop: any EventLoop
    let node: HeraldNode
    /// Why the connection is refused (close 4001), or `nil` when it authenticated.
    private let rejection: String?
    /// Rooms this client may join by itself.
    let permissions: RoomPermissions

    private enum State { case starting, open, closing, closed }
    private var state = State.starting
    private var context: ChannelHandlerContext?
    /// The frame encoder's context: pre-framed deliveries are written from there, straight to
    /// the socket, skipping the handlers in between and the encoder itself.
    private var framedContext: ChannelHandlerContext?
    /// Mirrors the channel's writability (its outbound bytes under the high-water mark), kept
    /// up to date by `channelWritabilityChanged` so the per-delivery check is a plain load.
    private var isWritable = true
    private var registered = false
    private var needsFlush = false
    private var awaitingPong = false
    private var bucket: TokenBucket
    private var refusedFrames = 0
    private var refusalWindowStart = NIODeadline.now()
    private var closeCode: CloseCode?
    private var closeReason = ""

    init(identity: Result<Identity, AuthenticationFailure>, node: HeraldNode, eventLoop: any EventLoop) {
        self.node = node
        self.eventLoop = eventLoop
        self.id = node.makeConnectionID()
        switch identity {
        case .success(let identity):
            self.user = identity.user
            self.permissions = identity.rooms
            self.rejection = nil
        case .failure(let failure):
            self.user = ""
            self.permissions = .none
            self.rejection = failure.reason
        }
        self.bucket = TokenBucket(rate: node.configuration.rateLimit, burst: node.configuration.rateBurst)
    }

    /// Logs with the connection's id and user. Only at open and close: no logger is kept per
    /// connection, since its metadata would cost memory on every idle connection.
    private func log(_ message: Logger.Message, _ metadata: Logger.Metadata = [:]) {
        var metadata = metadata
        metadata["connection"] = .string(id)
        if !user.isEmpty { metadata["user"] = .string(user) }
        node.logger.info(message, metadata: metadata)
    }

    // MARK: - Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.framedContext = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        self.isWritable = context.channel.isWritable
        // The upgrade installs this handler on an active channel.
        start()
    }

    private func start() {
        guard state == .starting else { return }
        if let rejection {
            state = .open
            log("connection refused", ["reason": .string(rejection)])
            close(.unauthorized, reason: rejection)
        } else {
            do {
                try node.hub.register(self)
            } catch {
                state = .open
                log("connection refused", ["reason": .string(error.description)])
                close(.tooManyConnections, reason: error.description)
                return
            }
            registered = true
            state = .open
            log("connection open")
            let welcome = ServerFrame.welcome(
                user: user,
                connection: id,
                node: node.nodeID,
                heartbeat: Int(node.configuration.hub.heartbeat.nanoseconds / 1_000_000_000)
            )
            send(welcome, flush: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasRegistered = registered
        registered = false
        state = .closed
        if wasRegistered {
            node.hub.unregister(self)
            let code = closeCode.map { String($0.rawValue) } ?? "none"
            log("connection closed", ["code": .string(code), "reason": .string(closeReason.isEmpty ? "connection lost" : closeReason)])
        }
        self.context = nil
        self.framedContext = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        isWritable = context.channel.isWritable
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            close(.serviceRestart, reason: "server shutting down")
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketFrameAggregator.Error, error == .accumulatedFrameSizeIsTooLarge {
            close(.frameTooLarge, reason: "message larger than \(node.configuration.maxFrameSize) bytes")
        } else if error is NIOWebSocketFrameAggregator.Error {
            close(.protocolError, reason: "malformed fragmented message")
        } else if let error = error as? NIOWebSocketError {
            // WebSocketProtocolErrorHandler, below us, has already sent the close frame and closes the channel.
            state = .closing
            closeCode = error == .invalidFrameLength ? .frameTooLarge : .protocolError
            closeReason = error == .invalidFrameLength ? "frame larger than \(node.configuration.maxFrameSize) bytes" : "protocol error: \(error)"
        } else {
            // Protocol errors from the frame decoder are answered by WebSocketProtocolErrorHandler;
            // I/O errors end the connection.
            closeReason = closeReason.isEmpty ? "error: \(error)" : closeReason
            context.close(promise: nil)
        }
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        awaitingPong = false  // any frame proves the peer is alive
        switch frame.opcode {
        case .text:
            guard state == .open, admit() else { return }
            handle(text: frame.unmaskedData)
        case .binary:
            guard state == .open, admit() else { return }
            send(ServerFrame.error(.badRequest, message: "binary frames are not supported: send JSON text frames", id: nil))
        case .ping:
            guard state == .open else { return }
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.write(wrapOutboundOut(pong), promise: nil)
            needsFlush = true
        case .connectionClose:
            receivedClose(frame)
        default:
            break  // pong: liveness noted above; continuation frames are merged by the aggregator
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush()
        context.fireChannelReadComplete()
    }

    /// The per-connection token bucket. Refused frames get `rate_limited`; more than `burst`
    /// refusals within 10 seconds is sustained abuse and closes the connection with 1008.
    private func admit() -> Bool {
        let now = NIODeadline.now()
        if bucket.take(now: now) { return true }
        if now - refusalWindowStart > .seconds(10) {
            refusalWindowStart = now
            refusedFrames = 0
        }
        refusedFrames += 1
        if refusedFrames > node.configuration.rateBurst {
            close(.policyViolation, reason: "rate limit exceeded repeatedly")
        } else {
            send(ServerFrame.error(.rateLimited, message: "too many frames: at most \(node.configuration.rateLimit) per second", id: nil))
        }
        return false
    }

    private func handle(text: ByteBuffer) {
        let frame: ClientFrame
        do {
            frame = try ClientFrame.decode(text)
        } catch {
            send(ServerFrame.error(.badRequest, message: error.message, id: error.id))
            return
        }
        perform(frame)
    }

    private func receivedClose(_ frame: WebSocketFrame) {
        var data = frame.unmaskedData
        let code = data.readInteger(as: UInt16.self)
        if state == .open {
            closeReason = "closed by client" + (code.map { " (\($0))" } ?? "")
            // Echo the client's code, as RFC 6455 asks, then drop the socket once it is written.
            var payload = ByteBuffer()
            if let code { payload.writeInteger(code) }
            state = .closing
            context?.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
                .whenComplete { [weak self] _ in self?.context?.close(promise: nil) }
            scheduleHardClose()
        } else if state == .closing {
            context?.close(promise: nil)  // the client answered our close frame
        }
    }

    // MARK: - Outbound (ClientConnection)

    func enqueue(_ frame: ByteBuffer) -> Bool {
        guard state == .open, let framedContext else { return false }
        guard isWritable else {
            cutSlowConsumer()
            return false
        }
        framedContext.write(NIOAny(IOData.byteBuffer(frame)), promise: nil)
        if needsFlush { return false }
        needsFlush = true
        return true
    }

    func flush() {
        guard needsFlush else { return }
        needsFlush = false
        // From the encoder's context the flush reaches the socket in one hop; everything this
        // handler wrote has already passed the encoder.
        (framedContext ?? context)?.flush()
    }

    func heartbeat() {
        guard state == .open, let context else { return }
        if awaitingPong {
            close(.heartbeatTimeout, reason: "heartbeat timeout: no answer to the last ping")
            return
        }
        awaitingPong = true
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer())), promise: nil)
    }

    func close(_ code: CloseCode, reason: String) {
        guard state == .open || state == .starting, let context else { return }
        state = .closing
        closeCode = code
        closeReason = reason
        var payload = ByteBuffer()
        payload.writeInteger(code.rawValue)
        payload.writeString(Self.truncatedReason(reason))
        // RFC 6455 closing handshake: wait for the client's close frame before dropping TCP.
        // Closing at once would make the client's reply hit a closed socket, and the reset can
        // destroy our close frame (and its reason) in the client's receive buffer.
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
        scheduleHardClose()
    }

    /// Sends a reply frame; flushed at the end of the read batch unless `flush` is set.
    func send(_ frame: ByteBuffer, flush: Bool = false) {
        guard state == .open, let context else { return }
        guard isWritable else {
            cutSlowConsumer()
            return
        }
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: frame)), promise: nil)
        needsFlush = true
        if flush { self.flush() }
    }

    private func cutSlowConsumer() {
        node.hub.statistics.recordSlowConsumer()
        close(.slowConsumer, reason: "slow consumer: more than \(node.configuration.maxOutboundBytes) bytes queued")
    }

    /// A peer that never reads will never take our close frame: drop it after the close timeout.
    private func scheduleHardClose() {
        eventLoop.scheduleTask(in: node.configuration.closeTimeout) { [weak self] in
            guard let self, self.state != .closed else { return }
            self.context?.close(promise: nil)
        }
    }

    /// Close reasons are limited to 123 bytes by RFC 6455; cut at a character boundary.
    static func truncatedReason(_ reason: String) -> String {
        guard reason.utf8.count > 123 else { return reason }
        var result = ""
        for character in reason {
            if result.utf8.count + character.utf8.count > 123 { break }
            result.append(character)
        }
        return result
    }
}
