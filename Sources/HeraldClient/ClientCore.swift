import HeraldWire
import Logging
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The client's state machine: requests, positions, rooms, timers, behind one lock.
///
/// Every change happens under the lock and returns "effects" (resuming a caller, yielding to a
/// stream) that run after it is released, so no callback ever runs with the lock held and
/// nothing re-enters it. Frames of one connection are handled in order by one reader.
final class ClientCore: Sendable {
    typealias Completion = @Sendable (Result<InboundFrame, HeraldClientError>) -> Void
    typealias Effects = [@Sendable () -> Void]

    enum Phase: Sendable, Equatable { case idle, connecting, connected, disconnected, closed }

    /// Background work a frame asks for that must await (the token provider), done by ``run()``'s job task.
    enum Job: Sendable { case refreshToken }

    struct Pending: Sendable {
        let body: RequestBody
        var sent = false
        let deadline: ContinuousClock.Instant
        let completion: Completion
    }

    struct Link: Sendable {
        let generation: UInt64
        let outbox: AsyncStream<String>.Continuation
        let connectDeadline: ContinuousClock.Instant
        /// Set when the client gives up on the connection itself (no welcome, no pong).
        var localClose: (code: UInt16, reason: String)?
    }

    struct RoomEntry: Sendable {
        var joined = false
        let stream: StreamFanOut<HeraldMessage>
        /// The room's presence as its presence events keep it.
        var presence: PresenceUpdate?
        /// A whole-state request is scheduled (after a change the server cut short).
        var presenceResyncing = false
    }

    struct State: Sendable {
        var phase = Phase.idle
        var started = false
        var link: Link?
        var generation: UInt64 = 0
        var welcome: Welcome?
        var welcomedAt: ContinuousClock.Instant?
        var attempt = 0
        var nextID = 0
        var pending: [Int: Pending] = [:]
        var queue: [Int] = []
        var rooms: [String: RoomEntry] = [:]
        /// Rooms whose join with `since` is on the wire: their messages are ignored until the
        /// reply, after which the server sends every message past `since` with no gap. (The
        /// user is still a member, so live messages arrive before the reply; accepting them
        /// would move the position past the replay, which would then be dropped as duplicates.)
        var resuming: Set<String> = []
        /// `ack:true` messages acknowledged (or being acknowledged): they, not the highest offset
        /// processed, tell a resent one from a new one, since the server resends unacknowledged
        /// messages after the live ones of a connection's setup.
        var acknowledged = AcknowledgedOffsets()
        var positions: ChannelPositions
        var lastReceived = ContinuousClock.now
        var ping: (id: Int, sentAt: ContinuousClock.Instant)?
        var refreshAt: ContinuousClock.Instant?
        var refreshing = false
        var authRetried = false
        var statistics = HeraldClient.Statistics()
        var jobs: AsyncStream<Job>.Continuation?
    }

    let configuration: HeraldClient.Configuration
    let urls: [String]
    let credentials: Credentials
    let messages: StreamFanOut<HeraldMessage>
    let events: StreamFanOut<HeraldEvent>
    let state: Mutex<State>

    init(urls: [String], credentials: Credentials, configuration: HeraldClient.Configuration) {
        self.urls = urls
        self.credentials = credentials
        self.configuration = configuration
        messages = StreamFanOut(policy: .oldest(configuration.messageBufferSize), limit: configuration.maxSubscribers)
        events = StreamFanOut(policy: .newest(configuration.eventBufferSize), limit: configuration.maxSubscribers)
        state = Mutex(State(positions: ChannelPositions(limit: configuration.maxPositions)))
    }

    /// Runs `body` under the lock, then its effects.
    func locked<R: Sendable>(_ body: (inout State, inout Effects) -> R) -> R {
        var effects: Effects = []
        let result = state.withLock { state in
            var collected: Effects = []
            defer { effects = collected }
            return body(&state, &collected)
        }
        for effect in effects { effect() }
        return result
    }

    func emit(_ event: HeraldEvent, _ effects: inout Effects) {
        let events = self.events
        effects.append { events.yield(event) }
    }

    // MARK: requests

    /// Sends a request (or queues it while not connected) and waits for its reply.
    func request(_ body: RequestBody, internal isInternal: Bool = false) async throws(HeraldClientError) -> InboundFrame {
        let id = locked { state, _ in
            state.nextID += 1
            return state.nextID
        }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<InboundFrame, HeraldClientError>, Never>) in
                locked { state, effects in
                    if Task.isCancelled {
                        effects.append { continuation.resume(returning: .failure(.closed("the task awaiting the \(body.name) reply was cancelled"))) }
                        return
                    }
                    enqueue(id: id, body, internal: isInternal, &state, &effects) { continuation.resume(returning: $0) }
                }
            }
        } onCancel: {
            locked { state, effects in
                fail(id, .closed("the task awaiting the \(body.name) reply was cancelled"), &state, &effects)
            }
        }
        return try result.get()
    }

    /// A request whose outcome only matters when it fails (re-joins, automatic acks): reported as an event.
    func requestInBackground(_ body: RequestBody, what: String, _ state: inout State, _ effects: inout Effects) {
        state.nextID += 1
        let events = self.events
        enqueue(id: state.nextID, body, internal: true, &state, &effects) { result in
            if case .failure(let error) = result, error.code != "closed" {
                events.yield(.error(Self.context(error, what)))
            }
        }
    }

    static func context(_ error: HeraldClientError, _ what: String) -> HeraldClientError {
        switch error {
        case .server(let code, let message): .server(code: code, message: "\(what): \(message)")
        case .timeout(let message): .timeout("\(what): \(message)")
        case .disconnected(let message): .disconnected("\(what): \(message)")
        default: error
        }
    }

    func enqueue(id: Int, _ body: RequestBody, internal isInternal: Bool, _ state: inout State, _ effects: inout Effects, completion: @escaping Completion) {
        func refuse(_ error: HeraldClientError) { effects.append { completion(.failure(error)) } }
        if state.phase == .closed { return refuse(.closed("the client stopped: \(body.name) was not sent")) }
        if !isInternal, state.pending.count >= configuration.maxPendingRequests {
            return refuse(.tooManyRequests(limit: configuration.maxPendingRequests))
        }
        let connected = state.phase == .connected
        if !connected, state.queue.count >= configuration.maxQueuedRequests { return refuse(.queueFull(limit: configuration.maxQueuedRequests)) }
        state.pending[id] = Pending(body: body, deadline: .now + configuration.requestTimeout, completion: completion)
        if connected { write(id, &state) } else { state.queue.append(id) }
    }

    /// Writes a pending request on the current connection, or queues it when there is none.
    func write(_ id: Int, _ state: inout State) {
        guard var request = state.pending[id] else { return }
        guard let link = state.link, link.localClose == nil else { return state.queue.append(id) }
        let since = request.body.joinedRoom.flatMap { state.positions.resume(.room($0)) }
        if case .enqueued = link.outbox.yield(request.body.text(id: id, since: since)) {
            request.sent = true
            state.pending[id] = request
            if since != nil, let room = request.body.joinedRoom { state.resuming.insert(room) }
        } else {
            state.queue.append(id)  // the connection is going away: the next one sends it
        }
    }

    /// Removes a request from the pending table and the queue.
    @discardableResult
    func settle(_ id: Int, _ state: inout State, byReply: Bool = false) -> Pending? {
        guard let request = state.pending.removeValue(forKey: id) else { return nil }
        // A join's resumption ends with its reply (the replay follows it), not with a timeout: a
        // late reply still comes, and its replay must not be taken for duplicates.
        if byReply, request.sent, let room = request.body.joinedRoom { state.resuming.remove(room) }
        if !request.sent, let index = state.queue.firstIndex(of: id) { state.queue.remove(at: index) }
        return request
    }

    func fail(_ id: Int, _ error: HeraldClientError, _ state: inout State, _ effects: inout Effects) {
        guard let request = settle(id, &state) else { return }
        effects.append { request.completion(.failure(error)) }
    }

    func flushQueue(_ state: inout State) {
        let queued = state.queue
        state.queue = []
        for id in queued where state.pending[id] != nil { write(id, &state) }
    }

    /// Requests sent on a connection that went away: idempotent ones go first in the queue for
    /// the next connection; publish, send, broadcast and refresh fail `disconnected`.
    func requeueInFlight(_ state: inout State, _ effects: inout Effects) {
        var retry: [Int] = []
        for (id, request) in state.pending.sorted(by: { $0.key < $1.key }) where request.sent {
            if request.body.isIdempotent {
                state.pending[id]?.sent = false
                retry.append(id)
            } else {
                fail(
                    id, .disconnected("the connection closed before the reply to \(request.body.name): it may or may not have been acted on"), &state, &effects)
            }
        }
        state.queue = retry + state.queue
    }

    func failAll(_ error: HeraldClientError, _ state: inout State, _ effects: inout Effects) {
        for id in Array(state.pending.keys).sorted() { fail(id, error, &state, &effects) }
        state.queue = []
    }

    // MARK: timers

    /// Request deadlines, the connect timeout, the heartbeat, the backoff reset and token refresh.
    func tick(now: ContinuousClock.Instant = .now) {
        locked { state, effects in
            for (id, request) in state.pending where request.deadline <= now {
                fail(id, .timeout("no reply to \(request.body.name) within \(configuration.requestTimeout)"), &state, &effects)
            }
            guard let link = state.link, link.localClose == nil else { return }
            if state.phase == .connecting, now >= link.connectDeadline {
                return drop(&state, reason: "no welcome within \(configuration.connectTimeout)")
            }
            guard state.phase == .connected, let welcome = state.welcome else { return }
            if state.attempt != 0, let welcomedAt = state.welcomedAt, now - welcomedAt >= configuration.resetBackoffAfter { state.attempt = 0 }
            // Liveness is "any frame received": WebSocket pings are handled below us, and a
            // proxy may answer them for a dead server. A JSON ping needs the server itself.
            if let ping = state.ping {
                if state.lastReceived >= ping.sentAt {
                    state.ping = nil
                } else if now - ping.sentAt >= configuration.pongTimeout {
                    return drop(&state, reason: "heartbeat timeout: nothing received")
                }
            } else if now - state.lastReceived >= configuration.heartbeat ?? .seconds(welcome.heartbeat > 0 ? welcome.heartbeat : 25) {
                state.nextID += 1
                state.ping = (state.nextID, now)
                link.outbox.yield(#"{"type":"ping","id":\#(state.nextID)}"#)
            }
            if let refreshAt = state.refreshAt, now >= refreshAt {
                state.refreshAt = nil
                startRefresh(&state, &effects)
            }
        }
    }

    /// Gives up on the current connection (tests: a network failure).
    func dropConnection(reason: String) {
        locked { state, _ in drop(&state, reason: reason) }
    }

    /// Gives up on the current connection: its close frame goes out, later frames are ignored.
    func drop(_ state: inout State, reason: String) {
        guard let link = state.link else { return }
        state.link?.localClose = (4000, reason)
        link.outbox.finish()
    }

    // MARK: tokens

    func startRefresh(_ state: inout State, _ effects: inout Effects) {
        guard case .tokenProvider = credentials else {
            return emit(.error(.token("the token expires soon and no token provider was given to refresh it: pass Credentials.tokenProvider")), &effects)
        }
        guard !state.refreshing, state.phase == .connected, let jobs = state.jobs else { return }
        state.refreshing = true
        jobs.yield(.refreshToken)
    }

    /// Asks the provider for a token and sends it as a `refresh` on the open connection.
    func refreshToken() async {
        defer { locked { state, _ in state.refreshing = false } }
        guard case .tokenProvider(let provider) = credentials else { return }
        let token: String
        do {
            token = try await provider()
        } catch {
            events.yield(.error(.token("the token provider failed, the token was not refreshed: \(error)")))
            return
        }
        do {
            let reply = try await request(.refresh(token: token), internal: true)
            events.yield(.tokenRefreshed(expires: reply.integer("expires")))
        } catch {
            // The server closes with 4001 `token expired` if no refresh succeeds; the next
            // connection then asks the provider again.
            events.yield(.error(Self.context(error, "token refresh failed")))
        }
    }

    /// Refreshes a little before `expires` in case no warning comes: at most half the remaining
    /// lifetime early, so that short-lived tokens do not refresh in a loop.
    func scheduleRefresh(expires: Int64?, _ state: inout State) {
        state.refreshAt = nil
        guard let expires, case .tokenProvider = credentials else { return }
        // A hostile or absurd `expires` must not overflow: a year ahead is far enough to wait.
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let expiresAt = expires > now / 1000 + 366 * 86_400 ? now + 366 * 86_400_000 : max(0, expires) * 1000
        let remaining = Duration.milliseconds(expiresAt - now)
        let delay = remaining - min(configuration.tokenRefreshMargin, remaining / 2)
        state.refreshAt = .now + max(.seconds(1), delay)
    }
}
