import HTTPTypes
import Herald
import HeraldWire
public import HummingbirdCore
public import Logging
public import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOSSL

/// Hummingbird child channel: HTTP/1.1 for the API and the demo page, and a WebSocket upgrade on
/// `/ws` into Herald's own pipeline.
///
/// Hummingbird's stock WebSocket handler runs one task per connection behind an async channel
/// (about 31 KB per idle connection measured here). Herald's upgraded pipeline is one plain
/// channel handler, `WebSocketConnection`: no task, no async sequence buffers, no NIO frame
/// decoder or encoder, and deliveries written straight into the channel by the hub.
public struct HeraldChildChannel: ServerChildChannel, HTTPChannelHandler {
    public enum UpgradeResult: Sendable {
        /// Upgraded: the connection lives in the channel pipeline, nothing to await.
        case webSocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    }

    public struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        public let channel: any Channel
    }

    public let responder: HTTPChannelHandler.Responder
    let node: HeraldNode
    /// Per-address and still-negotiating connection caps, shared by every connection.
    let admission: ConnectionAdmission

    init(responder: @escaping HTTPChannelHandler.Responder, node: HeraldNode) {
        self.responder = responder
        self.node = node
        self.admission = ConnectionAdmission(
            maxPerAddress: node.configuration.maxConnectionsPerIP,
            maxPending: node.configuration.maxPendingConnections
        )
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let reservation = admission.reserve(channel.remoteAddress?.ipAddress)
        guard let reservation else { return channel.close().flatMapThrowing { throw ChannelError.inputClosed } }
        return setup(channel: channel, descriptor: nil, reservation: reservation, logger: logger)
    }

    /// Sets up a connection whose socket descriptor the listener knows: a WebSocket upgraded
    /// on it sends its deliveries to the descriptor directly (``SocketOutbox``), unless the node
    /// serves TLS. `reservation` is the client address's slot, from ``ConnectionAdmission/reserve(_:)``.
    ///
    /// With TLS the pipeline starts with ``PlaintextRejector``, the TLS handler (the node's
    /// current certificate) and ``TLSHandshakeWatcher``; everything else is as without.
    func setup(channel: any Channel, descriptor: CInt?, reservation: ConnectionAdmission.Reservation, logger: Logger) -> EventLoopFuture<Value> {
        let node = self.node
        let configuration = node.configuration
        let admission = self.admission
        let tls = node.tls
        // Direct sends would put plaintext on a TLS socket, under the TLS handler: with TLS
        // every byte goes through the pipeline.
        let directDescriptor = tls == nil ? descriptor : nil
        return channel.eventLoop.makeCompletedFuture {
            admission.admit(channel, reservation: reservation)
            if let tls {
                try channel.pipeline.syncOperations.addHandler(PlaintextRejector())
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                try channel.pipeline.syncOperations.addHandler(TLSHandshakeWatcher(logger: logger))
            }
            // NIO keeps each channel's last read buffer to reuse it; its default 2 KiB first
            // buffer was the largest single item of an idle connection's memory. Clients mostly
            // send small frames, and the allocator grows the buffer when reads fill it.
            try channel.syncOptions?.setOption(
                ChannelOptions.recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)
            )
            let firstRequestGuard = FirstRequestGuard(timeout: configuration.requestHeadTimeout)
            try channel.pipeline.syncOperations.addHandler(firstRequestGuard)
            let upgrader = WebSocketUpgrader<UpgradeResult>(
                shouldUpgrade: { channel, head in
                    // Every /ws request is upgraded, even one with bad credentials: a browser can
                    // read a close code and reason, but not the status of a refused handshake.
                    let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
                    return channel.eventLoop.makeSucceededFuture(path == "/ws" ? HTTPHeaders() : nil)
                },
                upgradePipeline: { channel, head in
                    Self.installConnection(channel: channel, head: head, node: node, descriptor: directDescriptor)
                }
            )
            let upgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: tls != nil))
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPRequestDeadline(limits: configuration.requestLimits) { admission.established(channel) }
                        )
                        try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: .seconds(60), logger: logger))
                        try channel.pipeline.syncOperations.addHandler(PublishRequestHandler(node: node))
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return UpgradeResult.notUpgraded(asyncChannel)
                    }
                }
            )
            var pipelineConfiguration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(
                upgradeConfiguration: upgradeConfiguration
            )
            // One request at a time (pipelined ones wait in NIO's handler): PublishRequestHandler
            // answers some requests itself, the router the others, and responses keep their order.
            pipelineConfiguration.enablePipelining = true
            // UpgradeRequestFilter answers what the decoder refuses (see there why not NIO's).
            pipelineConfiguration.enableErrorHandling = false
            pipelineConfiguration.enableResponseHeaderValidation = false
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(
                configuration: pipelineConfiguration
            )
            let upgradeHandler = try channel.pipeline.syncOperations.handler(type: NIOTypedHTTPServerUpgradeHandler<UpgradeResult>.self)
            // A client that sent its whole upgrade request waits for the server: it is no longer
            // one of the negotiating connections a flood of new ones may evict (in a reconnect
            // storm the server is slow, and evicting them reset every client it had not served).
            let filter = UpgradeRequestFilter(
                retryAfter: { node.overloadRetryAfter() },
                admitsOrigin: { origin, host in node.admitsUpgrade(origin: origin, host: host) },
                onUpgradeRequest: { admission.established(channel) }
            )
            try channel.pipeline.syncOperations.addHandler(filter, position: .before(upgradeHandler))
            let boundGuard = NIOLoopBound(firstRequestGuard, eventLoop: channel.eventLoop)
            result.whenComplete { result in
                channel.pipeline.syncOperations.removeHandler(boundGuard.value, promise: nil)
                if case .success(.webSocket) = result { admission.established(channel) }
            }
            return Value(upgradeResult: result, channel: channel)
        }
    }

    public func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .webSocket:
                return
            case .notUpgraded(let http):
                await handleHTTP(asyncChannel: http, logger: logger)
            }
        } catch {
            logger.debug("connection ended before its first request", metadata: ["error": .string("\(error)")])
        }
    }

    /// The connect hook's verdict on an authenticated connection: allowed, refused by the backend
    /// (4003 with its reason), or undecided (1013 "retry in N s", or let through with
    /// `--hook-fail-open`).
    static func askConnectHook(_ hook: BackendHook, identity: Identity, failOpen: Bool, logger: Logger) async -> Result<Identity, ConnectionRefusal> {
        switch await hook.connect(user: identity.user) {
        case .allow:
            return .success(identity)
        case .deny(let reason):
            return .failure(ConnectionRefusal(code: .disconnectedByBackend, reason: "refused by the backend: \(reason)"))
        case .unavailable(let why):
            logger.warning(
                "connect hook undecided", metadata: ["user": "\(identity.user)", "why": "\(why)", "outcome": "\(failOpen ? "let through" : "refused")"])
            if failOpen { return .success(identity) }
            return .failure(ConnectionRefusal(code: .tryAgainLater, reason: "retry in \(Int.random(in: 1...5)) s: the backend hook is unavailable"))
        }
    }

    /// Authenticates the upgrade request and puts a `WebSocketConnection` at the top of the pipeline.
    static func installConnection(channel: any Channel, head: HTTPRequestHead, node: HeraldNode, descriptor: CInt?) -> EventLoopFuture<UpgradeResult> {
        let query = URI(head.uri).queryParameters
        let bearer = head.headers.first(name: "authorization").flatMap { value in
            value.lowercased().hasPrefix("bearer ") ? String(value.dropFirst("bearer ".count)) : nil
        }
        let token = query["token"].map(String.init) ?? bearer
        let user = query["user"].map(String.init)
        // ?since_offset=O&since_epoch=E: resume the user's channel (replay what was missed). A
        // malformed position is a bad request, not a failed authentication: the connection is
        // served and its welcome says recovery failed (`invalid_position`).
        // ?since=latest: the welcome says where the channel stands (a position to resume from).
        let resume = ResumeRequest(
            offset: query["since_offset"].map(String.init), epoch: query["since_epoch"].map(String.init), since: query["since"].map(String.init))
        // ?presence_events=true: the client wants presence_change frames of its rooms.
        let wantsPresenceEvents = ["true", "1"].contains(query["presence_events"].map(String.init) ?? "")
        let authenticator = node.authenticator
        let configuration = node.configuration
        let promise = channel.eventLoop.makePromise(of: Result<Identity, ConnectionRefusal>.self)
        if let hook = node.connectHook {
            let failOpen = configuration.hookFailOpen
            let logger = node.logger
            promise.completeWithTask {
                let authenticated = await authenticator.authenticate(token: token, user: user)
                guard case .success(let identity) = authenticated else { return authenticated.mapError(ConnectionRefusal.init) }
                return await Self.askConnectHook(hook, identity: identity, failOpen: failOpen, logger: logger)
            }
        } else if authenticator.isDevelopmentMode {
            // No await needed: skip the task hop on the hot connect path.
            promise.succeed(Authenticator.developmentIdentity(user: user).mapError(ConnectionRefusal.init))
        } else {
            promise.completeWithTask { await authenticator.authenticate(token: token, user: user).mapError(ConnectionRefusal.init) }
        }
        return promise.futureResult.flatMapThrowing { authenticated in
            let water = max(configuration.maxOutboundBytes, 1024)
            try channel.syncOptions?.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: water / 2, high: water))
            try channel.pipeline.syncOperations.addHandler(
                WebSocketConnection(
                    identity: authenticated,
                    node: node,
                    eventLoop: channel.eventLoop,
                    descriptor: descriptor,
                    resume: resume,
                    wantsPresenceEvents: wantsPresenceEvents
                )
            )
            return .webSocket
        }
    }
}
