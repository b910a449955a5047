import Foundation
import HeraldBench
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// A tiny protocol-v1 server for the bench's own tests: welcome, join, publish over WebSocket,
/// and deliveries with scripted faults (a message dropped, one duplicated, two swapped), so the
/// bench's counting can be checked against known answers.
final class FaultyServer: Sendable {
    struct Faults: Sendable {
        var drop: Set<Int> = []
        var duplicate: Set<Int> = []
        /// Deliver `key + 1` before `key`.
        var swap: Set<Int> = []
    }

    let faults: Faults
    private let channel: any Channel
    private let state: NIOLockedValueBox<State>

    struct State {
        var members: [String: [Connection]] = [:]
        var held: [Int: ByteBuffer] = [:]
    }

    var port: Int { channel.localAddress!.port! }

    init(group: any EventLoopGroup, faults: Faults) async throws {
        self.faults = faults
        let state = NIOLockedValueBox(State())
        self.state = state
        let loop = group.next()
        channel = try await ServerBootstrap(group: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                    upgradePipelineHandler: { channel, head in
                        let user = head.uri.split(separator: "=").last.map(String.init) ?? "?"
                        return channel.pipeline.addHandler(Connection(user: user, faults: faults, state: state))
                    }
                )
                return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async throws {
        try await channel.close()
    }

    /// One client, on the server's single event loop (so shared state needs no hops).
    final class Connection: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = WebSocketFrame
        typealias OutboundOut = WebSocketFrame
        let user: String
        let faults: Faults
        let state: NIOLockedValueBox<State>
        var context: ChannelHandlerContext?

        init(user: String, faults: Faults, state: NIOLockedValueBox<State>) {
            self.user = user
            self.faults = faults
            self.state = state
        }

        func handlerAdded(context: ChannelHandlerContext) {
            self.context = context
            write(#"{"type":"welcome","user":"\#(user)","connection":"x","node":"faulty","heartbeat":0}"#)
        }

        func write(_ text: String) {
            context?.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            guard frame.opcode == .text else { return }
            let text = String(buffer: frame.unmaskedData)
            if text.contains(#""type":"join""#) {
                state.withLockedValue { $0.members["r0", default: []].append(self) }
                write(#"{"type":"joined","room":"r0"}"#)
            } else if text.contains(#""type":"publish""#), let dataStart = text.range(of: #""data":"#) {
                write(#"{"type":"ok"}"#)
                let data = String(text[dataStart.upperBound...].dropLast())
                let sequence = ByteBuffer(string: text).withUnsafeReadableBytes { BenchPayload.parse(frame: $0) }?.sequence ?? -1
                deliver(#"{"type":"message","scope":"room","room":"r0","data":\#(data)}"#, sequence: sequence)
            }
        }

        private func deliver(_ message: String, sequence: Int) {
            if faults.drop.contains(sequence) { return }
            let members = state.withLockedValue { $0.members["r0"] ?? [] }
            if faults.swap.contains(sequence) {
                state.withLockedValue { $0.held[sequence] = ByteBuffer(string: message) }
                return
            }
            for member in members {
                member.write(message)
                if faults.duplicate.contains(sequence) { member.write(message) }
            }
            if let held = state.withLockedValue({ $0.held.removeValue(forKey: sequence - 1) }) {
                for member in members { member.write(String(buffer: held)) }
            }
        }
    }
}
