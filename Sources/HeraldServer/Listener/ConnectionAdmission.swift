import DequeModule
import NIOCore
import Synchronization

/// Who may hold a connection, before any byte of it is read: at most
/// ``HeraldConfiguration/maxConnectionsPerIP`` open connections per client address, and at most
/// ``HeraldConfiguration/maxPendingConnections`` connections still negotiating (no complete
/// WebSocket upgrade request yet and no complete first HTTP request: the server is waiting for
/// the client; one waiting for the server is not evicted).
///
/// Policies at the bounds, chosen against slowloris (connections that trickle or never finish
/// their request, to use up the server's descriptors):
/// - past the per-address cap a new connection is closed at once (its address holds enough);
/// - past the pending cap, the oldest pending connection *of the address with the most pending
///   connections* is closed to admit the new one, if it has been negotiating for at least
///   ``minimumAgeToEvict`` (1 s); if not, the new one is admitted over the cap. A flood of
///   never-finishing connections evicts its own, while a real client, one pending connection for
///   a few milliseconds, is not the one evicted however fast the flood reconnects; and a storm of
///   real clients all connecting at once (after a deploy, through one proxy) is not cut down
///   while the server works through their handshakes.
///
/// Connections from the loopback addresses 127.0.0.1 and ::1 are not counted per address: they
/// are the machine itself (a local proxy terminating TLS, health checks, benchmarks), and behind
/// a proxy every client would share that address.
///
/// Bounded: one entry per open connection (the open-file limit bounds them), and one per
/// address with an open connection.
final class ConnectionAdmission: Sendable {
    fileprivate struct State {
        var perAddress: [String: Int] = [:]
        var pending: [ObjectIdentifier: (channel: any Channel, address: String, since: NIODeadline)] = [:]
        /// Pending connections per address (IP, loopback included), oldest first.
        var pendingOfAddress: [String: Deque<ObjectIdentifier>] = [:]

        mutating func removePending(_ key: ObjectIdentifier) -> (any Channel)? {
            guard let entry = pending.removeValue(forKey: key) else { return nil }
            pendingOfAddress[entry.address]?.removeAll { $0 == key }
            if pendingOfAddress[entry.address]?.isEmpty == true { pendingOfAddress[entry.address] = nil }
            return entry.channel
        }

        /// The oldest pending connection of the address holding the most, if it has been
        /// negotiating since `before` or longer.
        mutating func evictOne(negotiatingSince before: NIODeadline) -> (any Channel)? {
            guard let crowded = pendingOfAddress.max(by: { $0.value.count < $1.value.count })?.key,
                let oldest = pendingOfAddress[crowded]?.first,
                let since = pending[oldest]?.since, since <= before
            else { return nil }
            return removePending(oldest)
        }
    }

    private let maxPerAddress: Int
    private let maxPending: Int
    /// How long a connection must have been negotiating before it may be evicted.
    static let minimumAgeToEvict: TimeAmount = .seconds(1)
    private let state = Mutex(State())

    /// - Parameters:
    ///   - maxPerAddress: open connections per client address; 0 for no limit.
    ///   - maxPending: connections still negotiating; 0 for no limit.
    init(maxPerAddress: Int, maxPending: Int) {
        self.maxPerAddress = maxPerAddress
        self.maxPending = maxPending
    }

    /// Connections still negotiating (for tests and statistics).
    var pendingCount: Int { state.withLock { $0.pending.count } }

    /// One connection's slot of its address; given back once, by whichever comes first: the
    /// channel closing, or a set-up that failed before there was a channel.
    final class Reservation: Sendable {
        let address: String?
        private let counted: String?
        private let returned = Atomic<Bool>(false)

        fileprivate init(address: String?, counted: String?) {
            self.address = address
            self.counted = counted
        }

        fileprivate func giveBack(to state: borrowing Mutex<State>) {
            guard let counted, !returned.exchange(true, ordering: .relaxed) else { return }
            state.withLock { state in
                let held = state.perAddress[counted, default: 1] - 1
                state.perAddress[counted] = held > 0 ? held : nil
            }
        }
    }

    /// Reserves a connection slot for `address` (the peer of a connection just accepted, before
    /// any of it is read); `nil` when the address holds its limit already: close the socket.
    func reserve(_ address: String?) -> Reservation? {
        guard let counted = Self.countedAddress(address), maxPerAddress > 0 else {
            return Reservation(address: address, counted: nil)
        }
        let reserved = state.withLock { state in
            let held = state.perAddress[counted, default: 0]
            guard held < maxPerAddress else { return false }
            state.perAddress[counted] = held + 1
            return true
        }
        return reserved ? Reservation(address: address, counted: counted) : nil
    }

    /// Gives back a reservation (idempotent).
    func release(_ reservation: Reservation) {
        reservation.giveBack(to: state)
    }

    /// Admits `channel`, whose slot is `reservation`: it is pending until ``established(_:)``;
    /// past the pending cap another pending connection is closed. The reservation is given back
    /// when the channel closes.
    func admit(_ channel: any Channel, reservation: Reservation) {
        let key = ObjectIdentifier(channel)
        let address = reservation.address ?? ""
        let now = NIODeadline.now()
        let evicted: (any Channel)? = state.withLock { state in
            let evicted =
                maxPending > 0 && state.pending.count >= maxPending
                ? state.evictOne(negotiatingSince: now - Self.minimumAgeToEvict) : nil
            state.pending[key] = (channel, address, now)
            state.pendingOfAddress[address, default: []].append(key)
            return evicted
        }
        evicted?.close(promise: nil)
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { _ = $0.removePending(key) }
            self.release(reservation)
        }
    }

    /// `channel` finished negotiating: it upgraded to a WebSocket or completed an HTTP request.
    func established(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        state.withLock { _ = $0.removePending(key) }
    }

    /// The address a connection is counted under: its IP, or `nil` for loopback's own
    /// addresses (not counted) and non-IP sockets.
    static func countedAddress(_ address: String?) -> String? {
        guard let ip = address, ip != "127.0.0.1", ip != "::1", ip != "::ffff:127.0.0.1" else { return nil }
        return ip
    }
}
