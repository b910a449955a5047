import CoreMetrics
import Foundation
import Herald
import HeraldWire
import Logging
import NIOCore
import Synchronization

/// One client WebSocket: a channel handler at the top of the upgraded pipeline, and the
/// ``ClientConnection`` the hub delivers to.
///
/// There is no task per connection and no other handler in the pipeline: client frames are
/// parsed from socket reads as they arrive (``WebSocketFrameParser``), on the channel's event
/// loop, and every frame written is already framed bytes (deliveries framed once by the hub).
/// All mutable state is confined to that loop (hence `@unchecked Sendable`).
///
/// Outbound bytes are bounded by the channel's write-buffer high-water mark, set to
/// ``HeraldConfiguration/maxOutboundBytes``: a delivery that finds the channel unwritable cuts
/// the connection off with 1013 (slow consumer) instead of queueing more.
final class WebSocketConnection: ChannelInboundHandler, ClientConnection, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let id: String
    let user: String
    let eventLoop: any EventLoop
    let node: HeraldNode
    /// Why the connection is refused (4001 for a bad token), or `nil` when it was admitted.
    private let rejection: ConnectionRefusal?
    /// Rooms this client may join by itself (its current token's `rooms` claim).
    private(set) var permissions: RoomPermissions
    /// Users its current token's `send` claim allows it to `send` to.
    private(set) var recipients: RoomPermissions?
    /// Its current token's `exp`: the connection is warned before and closed at it.
    private(set) var tokenExpires: Date?
    /// Its current token's `jti`.
    private(set) var tokenID: String?
    /// Rooms the user joined themselves that the current token does not allow: this connection
    /// does not receive them, and may not use them (the hub filters them out of deliveries).
    private(set) var revokedRooms: Set<String> = []
    /// The next token event: the `token_expiring` warning, or the close at expiry.
    private var tokenTimer: Scheduled<Void>?
    private var warnedOfExpiry = false

    /// Where the connection is in its life, and what closing it takes (the decisions; this
    /// handler carries them out).
    private var machine = ConnectionStateMachine()
    private var context: ChannelHandlerContext?
    private let outbox: SocketOutbox
    private var parser: WebSocketFrameParser
    /// Mirrors the channel's writability (its outbound bytes under the high-water mark), kept
    /// up to date by `channelWritabilityChanged` so the per-delivery check is a plain load.
    private var isWritable = true
    private var registered = false
    /// Counted in the node's connections being set up (until its welcome or its end).
    private var isConnecting = false
    /// A join, leave or presence is waiting for the roster: later frames wait their turn (so a
    /// publish sent right after a join is checked against the new membership), and reading
    /// pauses so they cannot pile up.
    private var commandInFlight = false
    private var needsFlush = false
    private var awaitingPong = false
    private var bucket: TokenBucket
    private var refusedFrames = 0
    private var refusalWindowStart = NIODeadline.now()

    /// The token's `info` claim (JSON), told to room members with presence events.
    private var presenceInfo: String?
    /// Whether the client asked for `presence_change` frames (`?presence_events=true`).
    let wantsPresenceEvents: Bool

    /// Whether the client asked to resume its user's channel (`?since_offset=&since_epoch=`).
    private let resume: ResumeRequest
    /// The position in its user's channel the client asked to resume from.
    private var resumeFrom: StreamPosition? {
        if case .from(let position) = resume { position } else { nil }
    }
    /// Whether the client asked where its user's channel stands (`?since=latest`), to have a
    /// position to resume from before its first message.
    private var wantsPosition: Bool {
        resume == .latest
    }

    /// - Parameter descriptor: the connection's socket, when the listener knows it: deliveries
    ///   are then sent to it directly (``SocketOutbox``).
    init(
        identity: Result<Identity, ConnectionRefusal>,
        node: HeraldNode,
        eventLoop: any EventLoop,
        descriptor: CInt? = nil,
        resume: ResumeRequest = .none,
        wantsPresenceEvents: Bool = false
    ) {
        self.node = node
        self.wantsPresenceEvents = wantsPresenceEvents
        self.outbox = SocketOutbox(descriptor: descriptor)
        self.resume = resume
        self.eventLoop = eventLoop
        self.id = node.makeConnectionID()
        switch identity {
        case .success(let identity):
            self.user = identity.user
            self.permissions = identity.rooms
            self.recipients = identity.recipients
            self.tokenExpires = identity.expires
            self.tokenID = identity.tokenID
            self.presenceInfo = identity.presenceInfo
            self.rejection = nil
        case .failure(let failure):
            self.user = ""
            self.permissions = .none
            self.rejection = failure
        }
        self.bucket = TokenBucket(rate: node.configuration.rateLimit, burst: node.configuration.rateBurst)
        self.parser = WebSocketFrameParser(maxMessageSize: node.configuration.maxFrameSize)
    }

    /// Logs with the connection's id and user. Only at open and close: no logger is kept per
    /// connection, since its metadata would cost memory on every idle connection.
    private func log(_ message: Logger.Message, _ metadata: Logger.Metadata = [:]) {
        let logger = node.logger
        guard logger.logLevel <= .info else { return }
        var metadata = metadata
        metadata["connection"] = .string(id)
        if !user.isEmpty { metadata["user"] = .string(user) }
        // NIO keeps the peer's address with the channel (also once it closed): nothing extra
        // is stored per connection for it.
        if let remote = context?.channel.remoteAddress { metadata["remote"] = .string(Self.describe(remote)) }
        logger.info(message, metadata: metadata)
    }

    /// `127.0.0.1:52114` or `[::1]:52114`.
    static func describe(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
        return if case .v6 = address { "[\(ip)]:\(port)" } else { "\(ip):\(port)" }
    }

    // MARK: - Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.isWritable = context.channel.isWritable
        outbox.attach(context)
        // The upgrade installs this handler on an active channel.
        start()
    }

    private func start() {
        guard machine.state == .starting, context != nil else { return }
        if let rejection {
            log("connection refused", ["reason": .string(rejection.reason)])
            close(rejection.code, reason: rejection.reason)
            return
        }
        // Checked on the loop the revocation walk runs on: a token revoked before this point is
        // refused here, one revoked after finds this connection registered and closes it.
        if let tokenID, node.denylist.isRevoked(tokenID) {
            log("connection refused", ["reason": "token revoked"])
            close(.unauthorized, reason: Self.revokedReason)
            return
        }
        let ready: EventLoopFuture<Void>
        // Resuming: the user's live messages wait until the missed ones are replayed.
        let hold = resumeFrom != nil || wantsPosition ? node.hub.hold(.user(self.user), for: self) : nil
        do {
            ready = try node.hub.register(self)
        } catch {
            if let hold { node.hub.release(hold, for: self) }
            log("connection refused", ["reason": .string(error.description)])
            close(.tooManyConnections, reason: error.description)
            return
        }
        registered = true
        if node.presenceNotifier != nil, let presenceInfo { node.roster.presenceInfoChanged(user: user, info: presenceInfo) }
        node.connecting.add(1, ordering: .relaxed)
        isConnecting = true
        // Frames sent before the welcome wait until the user's channels are live.
        context?.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        let broker = node.broker
        let user = self.user
        let resumeFrom = self.resumeFrom
        let resumeIsInvalid = resume == .invalid
        let wantsPosition = self.wantsPosition
        let limit = max(1, node.configuration.history.size)
        // What this connection must be sent besides live messages: the user channel's messages
        // it missed (when resuming), and those waiting for an acknowledgement.
        let missed: EventLoopFuture<(HistoryPage?, [HistoryEntry])> = ready.flatMap { [eventLoop] in
            // The common case needs no task: nothing to replay, and the broker batches the
            // unacknowledged reads of every connect under way.
            if resumeFrom == nil, !resumeIsInvalid, !wantsPosition {
                return broker.acknowledgements.unacknowledged(for: user, on: eventLoop).map { entries -> (HistoryPage?, [HistoryEntry]) in (nil, entries) }
            }
            return eventLoop.makeFutureWithTask { [eventLoop] in
                let page: HistoryPage?
                if let resumeFrom {
                    page = try await broker.history(of: .user(user), since: resumeFrom.offset, limit: limit, inEpoch: resumeFrom.epoch)
                } else if wantsPosition {
                    // Only the position (one the next message continues), nothing replayed.
                    let latest = try await broker.position(of: .user(user))
                    page = HistoryPage(latest: latest, entries: [], oldest: latest.offset + 1)
                } else {
                    // Only the channel's position, for the welcome: nothing is replayed.
                    page = try await broker.history(of: .user(user), since: 0, limit: 0)
                }
                return (page, try await broker.acknowledgements.unacknowledged(for: user, on: eventLoop).get())
            }
        }
        missed.hop(to: eventLoop).whenComplete { [self] result in
            finishConnecting()
            if let hold { node.hub.release(hold, for: self) }
            guard machine.state == .starting else { return }
            switch result {
            case .success(let (page, unacknowledged)):
                _ = machine.setUp()
                log("connection open")
                let recovery = page.flatMap { page in
                    resumeIsInvalid ? (Recovery.invalidPosition, page.latest) : resumeFrom.map { (page.recovery(from: $0), page.latest) }
                }
                if let recovery { node.hub.metrics.recordRecovery(recovery.0) }
                let welcome = ServerFrame.welcome(
                    user: user,
                    connection: id,
                    node: node.nodeID,
                    heartbeat: Int(node.configuration.hub.heartbeat.nanoseconds / 1_000_000_000),
                    recovery: recovery,
                    position: wantsPosition ? page?.latest : nil,
                    expires: tokenExpires.map(Self.numericDate),
                    presenceEvents: wantsPresenceEvents ? node.configuration.presenceEvents?.rooms ?? [] : nil
                )
                send(welcome)
                for room in revokedRooms.sorted() { send(ServerFrame.left(room: room, reason: .revoked)) }
                scheduleTokenTimer()
                var written: Set<Int64> = []
                if let hold {
                    // With `since=latest`, what was held up to the welcome's position is before it.
                    let after = wantsPosition ? page?.latest : resumeFrom
                    written = replay(page, after: after, recovered: wantsPosition || recovery?.0 == .recovered, then: hold)
                }
                // At least once: sent again until acknowledged (the client dedups by offset).
                for entry in unacknowledged where !written.contains(entry.offset) {
                    deliver(node.hub.framed(entry.frame))
                }
                flush()
                resumeReading()
            case .failure(let error):
                log("connection refused", ["reason": .string("\(error)")])
                // Redis unavailable or slow: the client should come back, not hammer a node
                // that cannot serve it now (1013 with a jittered delay).
                // The hint first: a close reason is cut at 123 bytes.
                close(.tryAgainLater, reason: "retry in \(Int.random(in: 1...5)) s: cannot set the connection up: \(error)")
                resumeReading()  // to read the client's answer to our close frame
            }
        }
    }

    /// Writes the history `page` after `position` (when it recovers the gap), then the live
    /// messages held meanwhile that history did not already give: no gap, no duplicate.
    /// Returns the offsets it wrote.
    @discardableResult
    func replay(_ page: HistoryPage?, after position: StreamPosition?, recovered: Bool, then hold: DeliveryHold) -> Set<Int64> {
        var last: StreamPosition?
        var written: Set<Int64> = []
        if recovered, let page, let position {
            last = position
            for entry in page.entries where entry.offset > position.offset {
                deliver(node.hub.framed(entry.frame))
                written.insert(entry.offset)
                last = StreamPosition(offset: entry.offset, epoch: page.latest.epoch)
            }
        }
        for (held, frame) in hold.held {
            if let last, last.epoch == held.epoch, held.offset <= last.offset { continue }
            deliver(frame)
            written.insert(held.offset)
        }
        if hold.overflowed {
            close(.slowConsumer, reason: "slow consumer: too many messages arrived while history was replayed")
        }
        return written
    }

    /// Parses what was read while the connection waited (for its welcome or a roster
    /// command), then reads from the socket again.
    func resumeReading() {
        guard let context else { return }
        parseBuffered()
        flush()
        if !commandInFlight {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
    }

    /// Marks a roster command as running: frames after it wait, and reading pauses.
    func beginCommand() {
        commandInFlight = true
        context?.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    /// The roster command finished: carry on with the frames that waited.
    func endCommand() {
        commandInFlight = false
        resumeReading()
    }

    /// The connection stopped counting against ``HeraldConfiguration/maxConnectingConnections``.
    private func finishConnecting() {
        guard isConnecting else { return }
        isConnecting = false
        node.connecting.subtract(1, ordering: .relaxed)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finishConnecting()
        let wasRegistered = registered
        registered = false
        machine.closed()
        tokenTimer?.cancel()
        tokenTimer = nil
        if wasRegistered {
            node.hub.unregister(self)
            node.hub.metrics.recordDisconnect(code: machine.closeCode)
            let code = machine.closeCode.map { String($0.rawValue) } ?? "none"
            log("connection closed", ["code": .string(code), "reason": .string(machine.closeReason.isEmpty ? "connection lost" : machine.closeReason)])
        }
        self.context = nil
        outbox.detach()
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
        if case .inputClosed? = event as? ChannelEvent {
            // The client sent FIN: it will send nothing more, not even a close frame. Its slot,
            // presence and subscriptions are let go of once the frames it sent before are
            // handled (a join waiting for the roster, frames read before the welcome), not
            // when a write fails much later.
            perform(machine.inputClosed(commandInFlight: commandInFlight))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Only I/O errors reach here (protocol errors are the parser's): the connection is gone.
        perform(machine.failed(error))
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard machine.parsesInput else { return }
        parser.append(unwrapInboundIn(data))
        parseBuffered()
    }

    private func parseBuffered() {
        var received = 0
        defer { if received > 0 { node.hub.metrics.framesReceived.increment(by: received) } }
        do {
            while machine.readsFrames(commandInFlight: commandInFlight), let frame = try parser.next() {
                awaitingPong = false  // any frame proves the peer is alive
                received += 1
                handle(frame)
            }
        } catch {
            perform(machine.violated(error))
            return
        }
        closeIfInputEnded()
    }

    /// After the client's FIN, once everything it sent was handled: replies written, then close.
    private func closeIfInputEnded() {
        perform(machine.closeIfInputEnded(commandInFlight: commandInFlight))
    }

    /// Carries out what the state machine decided about closing.
    private func perform(_ action: ConnectionStateMachine.CloseAction) {
        eventLoop.assertInEventLoop()
        guard let context else { return }
        let channel = context.channel
        switch action {
        case .none:
            break
        case .sendClose(let code, let reason):
            // RFC 6455 closing handshake: wait for the client's close frame before dropping TCP.
            // Closing at once would make the client's reply hit a closed socket, and the reset can
            // destroy our close frame (and its reason) in the client's receive buffer.
            write(WebSocketFraming.closeFrame(code: code.rawValue, reason: reason))
            flush()
            scheduleHardClose()
        case .echoClose(let code):
            // Echo the client's code, as RFC 6455 asks, then drop the socket once it is written.
            var payload = ByteBuffer()
            if let code { payload.writeInteger(code) }
            let echoed = outbox.writeThroughNIO(WebSocketFraming.frame(opcode: WebSocketFraming.close, payload: payload))
            echoed?.whenComplete { [weak self] _ in self?.context?.close(promise: nil) }
            scheduleHardClose()
        case .failConnection(let code, let reason):
            // Nothing the client sends after a violation can be parsed, so it is read and
            // dropped until the client closes too (or the close timeout): closing at once while
            // the client still sends would make the kernel answer with a reset, which can
            // destroy the close frame in the client's receive buffer (a lingering close).
            let written = outbox.writeThroughNIO(WebSocketFraming.closeFrame(code: code.rawValue, reason: reason))
            written?.whenComplete { _ in
                channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
            }
            scheduleHardClose()
        case .closeChannel:
            context.close(promise: nil)
        case .flushThenCloseChannel:
            flush()
            if let written = outbox.writeThroughNIO(ByteBuffer()) {
                written.whenComplete { _ in channel.close(promise: nil) }
            } else {
                channel.close(promise: nil)
            }
        }
    }

    private func handle(_ frame: WebSocketFrameParser.Frame) {
        switch machine.received(frame) {
        case .ignore:
            return  // a pong (liveness noted by the caller), or a frame to a connection not open
        case .close(let action):
            perform(action)
            return
        case .handle:
            break
        }
        guard admit() else { return }
        switch frame {
        case .text(let text):
            handle(text: text)
        case .binary:
            send(ServerFrame.error(.badRequest, message: "binary frames are not supported: send JSON text frames", id: nil))
        case .ping(let payload):
            // Pings count against the rate limit too, and their pongs against the outbound
            // bound: a client flooding pings without reading cannot grow our memory.
            guard isWritable else {
                cutSlowConsumer()
                return
            }
            write(WebSocketFraming.frame(opcode: WebSocketFraming.pong, payload: payload))
        case .pong, .close:
            break
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
        node.hub.metrics.rateLimitedFrames.increment()
        if refusedFrames > node.configuration.rateBurst {
            node.hub.metrics.rateLimitDisconnects.increment()
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

    // MARK: - Outbound (ClientConnection)

    func enqueue(_ frame: ByteBuffer) -> Bool {
        eventLoop.assertInEventLoop()
        guard machine.isOpen, context != nil else { return false }
        guard isWritable else {
            cutSlowConsumer()
            return false
        }
        outbox.append(frame)
        if needsFlush { return false }
        needsFlush = true
        return true
    }

    func flush() {
        guard needsFlush else { return }
        needsFlush = false
        outbox.flush()
    }

    func heartbeat(judging: Bool) {
        eventLoop.assertInEventLoop()
        guard machine.isOpen, context != nil else { return }
        if awaitingPong {
            if judging { close(.heartbeatTimeout, reason: "heartbeat timeout: no answer to the last ping") }
            return
        }
        awaitingPong = true
        write(WebSocketFraming.frame(opcode: WebSocketFraming.ping, payload: ByteBuffer()))
        flush()
    }

    func close(_ code: CloseCode, reason: String) {
        eventLoop.assertInEventLoop()
        guard context != nil else { return }
        perform(machine.close(code, reason: reason))
    }

    /// Writes a delivery that is already framed (history replayed to this connection).
    func deliver(_ framed: ByteBuffer) {
        eventLoop.assertInEventLoop()
        guard machine.isOpen else { return }
        guard isWritable else {
            cutSlowConsumer()
            return
        }
        write(framed)
    }

    /// Sends a reply frame; flushed at the end of the read batch unless `flush` is set.
    func send(_ frame: ByteBuffer, flush: Bool = false) {
        eventLoop.assertInEventLoop()
        guard machine.isOpen else { return }
        guard isWritable else {
            cutSlowConsumer()
            return
        }
        write(WebSocketFraming.textFrame(frame))
        if flush { self.flush() }
    }

    /// Queues framed bytes; flushed at the end of the read batch (or by the caller).
    private func write(_ framed: ByteBuffer) {
        outbox.append(framed)
        needsFlush = true
    }

    /// What NIO holds for the socket and what this turn gathered (metrics only).
    var queuedOutboundBytes: Int {
        eventLoop.assertInEventLoop()
        let held = (try? context?.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        return held + outbox.gatheredBytes
    }

    private func cutSlowConsumer() {
        node.hub.statistics.recordSlowConsumer()
        close(.slowConsumer, reason: "slow consumer: more than \(node.configuration.maxOutboundBytes) bytes queued")
    }

    // MARK: - Token expiry

    /// A token's `exp` as sent to clients: whole seconds since 1970.
    static func numericDate(_ date: Date) -> Int64 { Int64(date.timeIntervalSince1970.rounded(.down)) }

    /// Takes the claims of a refreshed token (same user): they apply to the next frame. The
    /// caller then asks the hub to review the rooms they allow (`Hub.review(_:)`).
    func adopt(_ identity: Identity) {
        eventLoop.assertInEventLoop()
        permissions = identity.rooms
        recipients = identity.recipients
        tokenExpires = identity.expires
        tokenID = identity.tokenID
        if node.presenceNotifier != nil, let info = identity.presenceInfo, info != presenceInfo { node.roster.presenceInfoChanged(user: user, info: info) }
        presenceInfo = identity.presenceInfo
        warnedOfExpiry = false
        scheduleTokenTimer()
    }

    func excludedRooms(among joinedByUser: Set<String>) -> Set<String> {
        eventLoop.assertInEventLoop()
        // The common case allocates nothing: a token allowing every room (or development mode)
        // revokes nothing, and nothing was revoked before.
        if revokedRooms.isEmpty, joinedByUser.isEmpty || permissions.allowsEverything { return [] }
        var revoked: Set<String> = []
        for room in joinedByUser where !permissions.allows(room) { revoked.insert(room) }
        // Told once welcomed (the welcome tells what was revoked before it).
        if machine.state == .open {
            let newlyRevoked = revoked.subtracting(revokedRooms).sorted()
            // Allowed again (a token allows it, or the backend granted it), still a member.
            let restored = revokedRooms.subtracting(revoked).filter { node.hub.grant(user: user, room: $0) != nil }.sorted()
            for room in newlyRevoked { send(ServerFrame.left(room: room, reason: .revoked)) }
            for room in restored { send(ServerFrame.joined(room: room, reason: .restored)) }
            // Outside a read batch nothing else flushes these.
            if !newlyRevoked.isEmpty || !restored.isEmpty { flush() }
        }
        revokedRooms = revoked
        return revoked
    }

    static let revokedReason = "token revoked"

    func credentialsRevoked(_ ids: Set<String>) {
        eventLoop.assertInEventLoop()
        guard let tokenID, ids.contains(tokenID), machine.state == .starting || machine.state == .open else { return }
        log("token revoked: closing")
        close(.unauthorized, reason: Self.revokedReason)
    }

    /// Whether this connection may use `room` (publish, presence): its user is a member, by
    /// the backend's grant or by their own join that the current token still allows.
    func mayUse(_ room: String) -> Bool {
        switch node.hub.grant(user: user, room: room) {
        case .backend?: true
        case .user?: permissions.allows(room)
        case nil: false
        }
    }

    /// Schedules the next token event: `token_expiring` ``HeraldConfiguration/tokenExpiryWarning``
    /// before `exp`, then the close with 4001 once `exp` (plus the leeway a new connection
    /// would get) has passed. One scheduled task per connection whose token expires, none
    /// for the others.
    private func scheduleTokenTimer() {
        tokenTimer?.cancel()
        tokenTimer = nil
        guard let expires = tokenExpires, machine.isOpen else { return }
        let secondsLeft = expires.timeIntervalSinceNow + node.authenticator.policy.leewaySeconds
        let warning = Double(node.configuration.tokenExpiryWarning.nanoseconds) / 1e9
        if !warnedOfExpiry {
            if secondsLeft - warning > 0 {
                tokenTimer = eventLoop.scheduleTask(in: .nanoseconds(Int64((secondsLeft - warning) * 1e9))) { [weak self] in
                    self?.warnOfExpiry()
                }
                return
            }
            warnedOfExpiry = true
            send(ServerFrame.tokenExpiring(expires: Self.numericDate(expires)), flush: true)
        }
        guard secondsLeft > 0 else {
            closeForExpiry()
            return
        }
        tokenTimer = eventLoop.scheduleTask(in: .nanoseconds(Int64(secondsLeft * 1e9))) { [weak self] in
            self?.closeForExpiry()
        }
    }

    private func warnOfExpiry() {
        guard machine.isOpen, let expires = tokenExpires else { return }
        warnedOfExpiry = true
        send(ServerFrame.tokenExpiring(expires: Self.numericDate(expires)), flush: true)
        scheduleTokenTimer()
    }

    private func closeForExpiry() {
        tokenTimer = nil
        guard machine.isOpen, let expires = tokenExpires else { return }
        // A refresh may have moved exp while this task waited to run.
        guard expires.timeIntervalSinceNow + node.authenticator.policy.leewaySeconds <= 0 else {
            scheduleTokenTimer()
            return
        }
        log("token expired")
        close(.unauthorized, reason: "token expired")
    }

    /// A peer that never reads will never take our close frame: drop it after the close timeout.
    private func scheduleHardClose() {
        eventLoop.scheduleTask(in: node.configuration.closeTimeout) { [weak self] in
            guard let self else { return }
            self.perform(self.machine.closeTimeoutPassed())
        }
    }

}

extension Optional {
    /// `map` with an async transform.
    fileprivate func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let value = self else { return nil }
        return try await transform(value)
    }
}

/// What a connection asked of its user's channel when it connected.
enum ResumeRequest: Equatable {
    /// Nothing: live messages only.
    case none
    /// Replay what came after this position, then carry on live.
    case from(StreamPosition)
    /// `since_offset`/`since_epoch` were malformed (or only one was given): the welcome says
    /// `"recovered":false,"reason":"invalid_position"`.
    case invalid
    /// `since=latest`: live messages only, and the welcome says from which position
    /// (`"offset"`, `"epoch"`), for a client that has no position yet.
    case latest

    /// From the `since_offset` and `since_epoch` query parameters, or `since=latest`.
    init(offset: String?, epoch: String?, since: String? = nil) {
        if offset == nil, epoch == nil, since == "latest" {
            self = .latest
            return
        }
        switch (offset, epoch) {
        case (nil, nil):
            self = .none
        case (let offset?, let epoch?):
            // An empty epoch is a position too: that of a channel with no message yet.
            if let value = Int64(offset), value >= 0, epoch.utf8.count <= 200 {
                self = .from(StreamPosition(offset: value, epoch: epoch))
            } else {
                self = .invalid
            }
        default:
            self = .invalid
        }
    }
}

/// Why a WebSocket is closed right after its upgrade, without a welcome.
struct ConnectionRefusal: Error, Equatable {
    var code: CloseCode
    var reason: String

    init(code: CloseCode, reason: String) {
        self.code = code
        self.reason = reason
    }

    /// A token (or development-mode user) that did not authenticate: 4001.
    init(_ failure: AuthenticationFailure) {
        self.init(code: .unauthorized, reason: failure.reason)
    }
}
