import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A tiny HTTP/1.1 server on 127.0.0.1 whose answer the test sets and changes: a JWKS that
/// rotates, an identity provider that goes down, a backend hook that allows, denies, stalls or
/// answers garbage. It records the requests it received.
final class LoopbackHTTPServer: Sendable {
    /// What the server does with the next requests.
    enum Behaviour: Sendable {
        /// Answers with this status and body.
        case answer(status: Int, body: String)
        /// Answers after `delay` (a backend that is too slow).
        case stall(delay: Duration, status: Int, body: String)
        /// Closes the connection without an answer (a provider that is down).
        case hangUp
        /// Answers 302 to `location`.
        case redirect(to: String)
        /// Sends the head and a first bytes of the body, then nothing (a trickling server).
        case stallBody
    }

    struct Received: Sendable {
        var method: String
        var uri: String
        var body: String
        var authorization: String?
    }

    /// What the server does and what it received, shared with its connections' handlers.
    final class State: Sendable {
        let mutex: Mutex<(behaviour: Behaviour, received: [Received])>
        /// Accepted connections, closed with the server: a client's pool must not keep talking
        /// to a stopped server (a later one may get its port).
        let children = Mutex<[any Channel]>([])
        init(_ behaviour: Behaviour) { mutex = Mutex((behaviour, [])) }
        func withLock<T>(_ body: (inout (behaviour: Behaviour, received: [Received])) -> T) -> T { mutex.withLock { body(&$0) } }
    }

    let port: Int
    private let channel: any Channel
    private let state: State

    init(_ behaviour: Behaviour) async throws {
        let state = State(behaviour)
        self.state = state
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                state.children.withLock { $0.append(channel) }
                return channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(Handler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
    }

    var url: String { "http://127.0.0.1:\(port)" }

    func set(_ behaviour: Behaviour) {
        state.withLock { $0.behaviour = behaviour }
    }

    var received: [Received] { state.withLock { $0.received } }

    func stop() async {
        try? await channel.close()
        for child in state.children.withLock({ $0 }) { try? await child.close() }
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let state: State
        var head: HTTPRequestHead?
        var body = ""

        init(state: State) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = ""
            case .body(let buffer):
                body += String(buffer: buffer)
            case .end:
                guard let head else { return }
                let behaviour = state.withLock { state in
                    state.received.append(
                        Received(method: "\(head.method)", uri: head.uri, body: body, authorization: head.headers.first(name: "Authorization")))
                    return state.behaviour
                }
                switch behaviour {
                case .hangUp:
                    context.close(promise: nil)
                case .answer(let status, let body):
                    respond(context: context, status: status, body: body)
                case .redirect(let location):
                    respond(context: context, status: 302, body: "", extra: ["Location": location])
                case .stallBody:
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Length", value: "1000")
                    context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                    context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: #"{"keys":["#)))), promise: nil)
                case .stall(let delay, let status, let body):
                    let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                    context.eventLoop.scheduleTask(
                        in: .nanoseconds(Int64(delay.components.seconds) * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000)
                    ) {
                        let (handler, context) = loopBound.value
                        handler.respond(context: context, status: status, body: body)
                    }
                }
            }
        }

        func respond(context: ChannelHandlerContext, status: Int, body: String, extra: [String: String] = [:]) {
            guard context.channel.isActive else { return }
            var headers = HTTPHeaders()
            for (name, value) in extra { headers.add(name: name, value: value) }
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
