import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Herald's listening TCP socket, accepted from on a thread of its own.
///
/// Herald accepts connections itself (instead of through NIO's `ServerBootstrap`) so that it
/// knows each connection's descriptor: a WebSocket then writes deliveries to it with one
/// `send` (see ``SocketOutbox``), below NIO's per-write pipeline bookkeeping. NIO still owns and
/// closes the descriptor: the accepted socket is handed over with `withConnectedSocket`.
///
/// The accept thread blocks in `accept4`; ``stop()`` shuts the socket down, which wakes it.
final class ListeningSocket: @unchecked Sendable {
    /// The listening descriptor; -1 while out of the `SO_REUSEPORT` group (at capacity).
    private let current: Atomic<CInt>
    var descriptor: CInt { current.load(ordering: .acquiring) }
    /// The bound port (the kernel's choice when asked for port 0).
    let port: Int
    private let host: String
    private let backlog: Int
    private let reusePort: Bool
    private let stopped = Atomic(false)

    /// Binds and listens: `SO_REUSEADDR`, `SO_REUSEPORT` when `reusePort` (several worker
    /// processes on one port), `TCP_NODELAY` (inherited by accepted sockets: every write is a
    /// whole frame, so Nagle's delay would only add latency).
    init(host: String, port: Int, backlog: Int, reusePort: Bool) throws(ListenError) {
        let (fd, boundPort) = try Self.open(host: host, port: port, backlog: backlog, reusePort: reusePort)
        self.current = Atomic(fd)
        self.port = boundPort
        self.host = host
        self.backlog = backlog
        self.reusePort = reusePort
    }

    private static func open(host: String, port: Int, backlog: Int, reusePort: Bool) throws(ListenError) -> (CInt, Int) {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw ListenError(host: host, port: port, step: "resolve", detail: "\(error)", advice: "pass an IP address or a resolvable name as --host")
        }
        let fd = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            throw ListenError(host: host, port: port, step: "socket", errno: errno, advice: "the process may be out of file descriptors")
        }
        func option(_ level: CInt, _ name: CInt, _ value: CInt) {
            var value = value
            _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
        }
        option(SOL_SOCKET, SO_REUSEADDR, 1)
        if reusePort { option(SOL_SOCKET, SO_REUSEPORT, 1) }
        option(CInt(IPPROTO_TCP), TCP_NODELAY, 1)
        let bound = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw ListenError(
                host: host, port: port, step: "bind", errno: code,
                advice: code == EADDRINUSE ? "another process holds this port: stop it or choose another --port" : "check --host and --port"
            )
        }
        guard listen(fd, CInt(clamping: backlog)) == 0 else {
            let code = errno
            close(fd)
            throw ListenError(host: host, port: port, step: "listen", errno: code, advice: "check --backlog")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        // sin_port and sin6_port are both the big-endian 16 bits at offset 2.
        let boundPort = withUnsafeBytes(of: storage) { UInt16($0[2]) << 8 | UInt16($0[3]) }
        return (fd, Int(boundPort))
    }

    /// Accepts until ``stop()``, calling `onAccept` with each new connection's descriptor (which
    /// it then owns), on the accept thread. Returns at once; `onStop` runs when the thread ends.
    ///
    /// - Parameter load: with `SO_REUSEPORT`, whether the process is full (`.full`: stop
    ///   taking connections) or has room again (`.room`); given the descriptor just accepted,
    ///   or `nil` while waiting for room. While full, the socket leaves the
    ///   port's group: the kernel sends new connections to the other workers instead of queueing
    ///   them here (connections already queued are reset, and their clients retry elsewhere).
    func startAccepting(
        load: @escaping @Sendable (_ accepted: CInt?) -> ListenerLoad = { _ in .room },
        onError: @escaping @Sendable (String) -> Void,
        onAccept: @escaping @Sendable (CInt, String?) -> Void,
        onStop: @escaping @Sendable () -> Void
    ) {
        let thread = Thread { [self] in
            acceptLoop(load: load, onError: onError, onAccept: onAccept)
            onStop()
        }
        thread.name = "herald-accept"
        thread.start()
    }

    private func acceptLoop(load: @Sendable (CInt?) -> ListenerLoad, onError: @Sendable (String) -> Void, onAccept: @Sendable (CInt, String?) -> Void) {
        var reportedAt = ContinuousClock.now - .seconds(60)
        while true {
            var peer = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(descriptor, $0, &length) }
            }
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                onAccept(fd, PeerAddress.numeric(peer, length: length))
                if reusePort, load(fd) == .full, !leaveGroupUntilRoom(load: load, onError: onError) { return }
                continue
            }
            let code = errno
            if stopped.load(ordering: .acquiring) { return }
            switch code {
            case EINTR, ECONNABORTED, EPROTO, EPERM:
                continue  // that connection is gone; the next one is fine
            case EMFILE where reusePort, ENFILE where reusePort:
                if !leaveGroupUntilRoom(load: load, onError: onError) { return }
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors or memory: connections wait in the backlog meanwhile. Said
                // at most once a minute, and retried after a pause rather than in a busy loop.
                if ContinuousClock.now - reportedAt > .seconds(60) {
                    reportedAt = .now
                    onError(
                        "cannot accept connections: \(String(cString: strerror(code))); new connections wait in the listen backlog (raise the open-file limit, or run more --workers)"
                    )
                }
                usleep(50_000)
            default:
                onError("accept failed: \(String(cString: strerror(code))); no longer accepting connections")
                return
            }
        }
    }

    /// Full: closes the listening socket, so the kernel sends new connections to the other
    /// workers sharing the port, then waits until the process has room again and listens anew.
    /// Returns `false` when stopped meanwhile (or listening failed for good).
    private func leaveGroupUntilRoom(load: @Sendable (CInt?) -> ListenerLoad, onError: @Sendable (String) -> Void) -> Bool {
        let old = current.exchange(-1, ordering: .acquiringAndReleasing)
        if old >= 0 { close(old) }
        onError(
            "this worker is full (its open-file limit): it stopped taking connections on port \(port) until it has room; the other workers sharing the port take them"
        )
        var failures = 0
        while !stopped.load(ordering: .acquiring) {
            usleep(100_000)
            guard load(nil) == .room else { continue }
            do {
                let (fd, _) = try Self.open(host: host, port: port, backlog: backlog, reusePort: true)
                current.store(fd, ordering: .releasing)
                // Stopped while reopening: stop() found no socket to wake.
                if stopped.load(ordering: .acquiring) { return false }
                onError("this worker has room again: taking connections on port \(port)")
                return true
            } catch {
                failures += 1
                if failures == 50 {
                    onError("cannot listen again on port \(port): \(error); no longer accepting connections")
                    return false
                }
            }
        }
        return false
    }

    /// Stops accepting: wakes the accept thread, then closes the socket once it has ended.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let fd = descriptor
        if fd >= 0 { shutdown(fd, CInt(SHUT_RDWR)) }
    }

    /// Closes the listening socket (after the accept thread ended).
    func closeSocket() {
        let fd = current.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { close(fd) }
    }
}

/// How full the process is, for a listener sharing its port with other workers.
enum ListenerLoad: Sendable {
    /// It may take connections.
    case room
    /// It holds as many as its open-file limit allows (with room kept for Redis, files, logs).
    case full
}

/// Herald could not listen on the address it was given.
public struct ListenError: Error, CustomStringConvertible {
    public let description: String

    init(host: String, port: Int, step: String, detail: String, advice: String) {
        description = "cannot listen on \(host):\(port): \(step) failed: \(detail); \(advice)"
    }

    init(host: String, port: Int, step: String, errno code: CInt, advice: String) {
        self.init(host: host, port: port, step: step, detail: String(cString: strerror(code)), advice: advice)
    }
}

/// The numeric IP address of an accepted connection's peer.
enum PeerAddress {
    /// `nil` for a peer that is not IPv4 or IPv6.
    static func numeric(_ peer: sockaddr_storage, length: socklen_t) -> String? {
        var peer = peer
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let status = withUnsafePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST)
            }
        }
        guard status == 0 else { return nil }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
