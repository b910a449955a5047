import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What a WebSocket has to send, and how it reaches the socket.
///
/// **Direct** while NIO holds nothing for the connection: the frames of one event-loop turn are
/// gathered (the first one shared, not copied; more are appended behind it, up to
/// ``gatherLimit``) and sent with one `send` on the connection's descriptor when the turn flushes. That is the kernel call the
/// floor baseline makes per delivery, without NIO's per-write pipeline traversal, pending-writes
/// bookkeeping and flush (about a quarter of the CPU of a delivery when measured).
///
/// **Through NIO** for whatever the socket does not take at once (its buffer is full, or the
/// send failed): the rest is handed to NIO, which queues it against the channel's high-water
/// mark (so a slow consumer is still cut off at ``HeraldConfiguration/maxOutboundBytes``), writes
/// it when the socket drains, and handles errors and closing as for any channel. Until NIO has
/// written everything it was given, later frames queue behind it in NIO, so order is kept.
///
/// The descriptor belongs to NIO. It is written to only on the channel's event loop and only
/// while the channel is open: NIO closes it on that loop too, and direct sends stop before any
/// other code of this connection runs (``detach()`` on `channelInactive`; and when a write NIO
/// was given fails, which NIO reports first when it closes); each `send` also checks the
/// channel's `isActive` first. Without a descriptor every write goes through NIO.
///
/// Why it exists: going around NIO's write path took the `rooms` benchmark from 15.3 to 14.0 µs
/// of server CPU per delivery (BENCHMARKS.md, "What was changed, and what stands in the way";
/// one run, on a profile where NIO's pipeline and pending-writes bookkeeping were about 10 % of
/// the CPU). It is built only on Linux (`#if os(Linux)`, Glibc's `send` with `MSG_NOSIGNAL`);
/// elsewhere the descriptor is ignored and every write goes through NIO. It must never be given
/// the descriptor of a TLS connection: the bytes would bypass encryption
/// (``HeraldChildChannel`` passes none when the node serves TLS).
final class SocketOutbox {
    private var descriptor: CInt?
    private var context: ChannelHandlerContext?
    /// The bytes of this turn not yet sent (direct mode).
    private var pending: ByteBuffer?
    /// NIO writes not yet completed; while any, everything goes through NIO, behind them.
    private var writesInNIO = 0
    private var nioNeedsFlush = false

    init(descriptor: CInt?) {
        #if os(Linux)
        self.descriptor = descriptor
        #else
        self.descriptor = nil
        #endif
    }

    /// Bytes gathered this turn and not sent yet.
    var gatheredBytes: Int { pending?.readableBytes ?? 0 }

    private var isDirect: Bool { descriptor != nil && writesInNIO == 0 && !nioNeedsFlush }

    /// Starts writing on `context`. NIO may still hold the handshake's response: direct sends
    /// start once it has been written.
    func attach(_ context: ChannelHandlerContext) {
        self.context = context
        if descriptor != nil {
            track(context.writeAndFlush(NIOAny(ByteBuffer())))
        }
    }

    /// The channel closed: nothing more is written.
    func detach() {
        descriptor = nil
        pending = nil
        context = nil
    }

    /// Queues framed bytes until ``flush()``.
    func append(_ bytes: ByteBuffer) {
        guard isDirect else {
            context?.write(NIOAny(bytes), promise: nil)
            nioNeedsFlush = true
            return
        }
        guard var gathered = pending.take() else {
            pending = bytes  // shared with every other recipient, not copied
            return
        }
        if gathered.readableBytes + bytes.readableBytes <= Self.gatherLimit {
            gathered.writeImmutableBuffer(bytes)
            pending = gathered
            return
        }
        // Enough for one send: send it now, so a burst holds at most this much per connection.
        if let context { send(gathered, context: context) }
        append(bytes)
    }

    /// The most bytes gathered for one connection before they are sent, even mid-turn. Frames
    /// gathered are copied into one buffer (the first is shared), so this bounds the memory a
    /// burst costs per connection; 16 KiB is about a hundred small frames per `send`.
    static let gatherLimit = 16 * 1024

    /// Sends what was queued.
    func flush() {
        guard let context else { return }
        if let bytes = pending.take() {
            send(bytes, context: context)
        }
        guard nioNeedsFlush else { return }
        nioNeedsFlush = false
        if descriptor != nil {
            // Tells when NIO has written everything it holds: then direct sends resume.
            track(context.writeAndFlush(NIOAny(ByteBuffer())))
        } else {
            context.flush()
        }
    }

    /// Writes `bytes` after everything queued, through NIO; the future completes once they are written.
    func writeThroughNIO(_ bytes: ByteBuffer) -> EventLoopFuture<Void>? {
        flush()
        guard let context else { return nil }
        let written = context.writeAndFlush(NIOAny(bytes))
        if descriptor != nil { track(written) }
        return written
    }

    private func send(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        #if os(Linux)
        var sent = 0
        // NIO closes the descriptor on this loop when the channel closes; once it is inactive
        // the number may already name another socket: never send to it then.
        guard let descriptor, context.channel.isActive else {
            descriptor = nil
            context.writeAndFlush(NIOAny(bytes), promise: nil)
            return
        }
        while true {
            let result = bytes.withUnsafeReadableBytes { raw in
                Glibc.send(descriptor, raw.baseAddress! + sent, raw.count - sent, CInt(MSG_NOSIGNAL))
            }
            if result > 0 {
                sent += result
                if sent == bytes.readableBytes { return }
                continue  // a short send: try the rest once more; EAGAIN then hands it to NIO
            }
            if result < 0 && errno == EINTR { continue }
            break
        }
        #else
        let sent = 0
        #endif
        // The socket is full (EAGAIN) or failed: NIO takes the rest, waits for the socket to
        // drain or reports the error and closes, as for any channel.
        var rest = bytes
        rest.moveReaderIndex(forwardBy: sent)
        track(context.writeAndFlush(NIOAny(rest)))
    }

    private func track(_ written: EventLoopFuture<Void>) {
        writesInNIO += 1
        written.assumeIsolated().whenComplete { [self] result in
            writesInNIO -= 1
            // A failed write means the channel is closing: its descriptor may be closed already.
            // No more direct sends; anything else goes to NIO, which fails it harmlessly.
            if case .failure = result { descriptor = nil }
        }
    }
}
