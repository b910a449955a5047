// An RFC 6455 echo server made of Herald's own WebSocket parts, for the Autobahn|Testsuite
// (scripts/autobahn). Herald itself is not an echo server: its text frames are commands, so most
// Autobahn cases (which expect every message echoed) can only judge its parser, framing,
// upgrader and close handling through a harness like this one. Test-only: it is built in debug
// (`@testable` reaches the parser's internals) and never shipped.
//
//   swift run HeraldEchoHarness [PORT]   (prints "listening on PORT" once ready)

import HeraldWire
import NIOCore
import NIOHTTP1
import NIOPosix

@testable import HeraldServer

/// Echoes every message, answers pings, and closes as RFC 6455 says: the parser's violations
/// close with their code (1002, 1007, 1009), a client's close is answered with its code.
final class EchoConnection: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Autobahn's 9.x cases send messages of up to 16 MiB.
    private var parser = WebSocketFrameParser(maxMessageSize: 16 << 20)
    private var closing = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        parser.append(unwrapInboundIn(data))
        do {
            while let frame = try parser.next() {
                switch frame {
                case .text(let payload):
                    context.write(wrapOutboundOut(WebSocketFraming.frame(opcode: 0x1, payload: payload)), promise: nil)
                case .binary(let payload):
                    context.write(wrapOutboundOut(WebSocketFraming.frame(opcode: 0x2, payload: payload)), promise: nil)
                case .ping(let payload):
                    context.write(wrapOutboundOut(WebSocketFraming.frame(opcode: WebSocketFraming.pong, payload: payload)), promise: nil)
                case .pong:
                    break
                case .close(let code):
                    var payload = ByteBuffer()
                    if let code { payload.writeInteger(code) }
                    close(context: context, frame: WebSocketFraming.frame(opcode: WebSocketFraming.close, payload: payload))
                    return
                }
            }
            context.flush()
        } catch {
            close(context: context, frame: WebSocketFraming.closeFrame(code: error.code.rawValue, reason: error.reason))
        }
    }

    private func close(context: ChannelHandlerContext, frame: ByteBuffer) {
        closing = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in channel.close(promise: nil) }
    }
}

let port = CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 9001
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let bootstrap = ServerBootstrap(group: group)
    .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
        let upgrader = WebSocketUpgrader<Void>(
            shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
            upgradePipeline: { channel, _ in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoConnection()) }
            }
        )
        return channel.eventLoop.makeCompletedFuture {
            let configuration = NIOUpgradableHTTPServerPipelineConfiguration<Void>(
                upgradeConfiguration: .init(
                    upgraders: [upgrader],
                    notUpgradingCompletionHandler: { channel in
                        channel.close().map { _ in }
                    })
            )
            _ = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
        }
    }
let server = try await bootstrap.bind(host: "127.0.0.1", port: port).get()
print("listening on \(server.localAddress?.port ?? port)")
try await server.closeFuture.get()
