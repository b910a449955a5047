import AsyncHTTPClient
import DequeModule
import Foundation
import HeraldWire
public import NIOCore
import NIOHTTP1
import Synchronization

/// Asks the application's backend over HTTP whether a connection or a join is allowed
/// (`--connect-hook URL`, `--join-hook URL`), for deployments whose tokens cannot carry every
/// room. docs/security.md, "Backend hooks", states every outcome.
///
/// Each question is a `POST` of `{"event":"connect","user":U}` or
/// `{"event":"join","user":U,"room":R}` (with `Authorization: Bearer <hook secret>` when one is
/// set: a credential of its own, never the node's API key); the answer must be `200` with
/// `{"allow":true}` or `{"allow":false[,"reason":TEXT]}`.
///
/// Bounded everywhere:
/// - **time**: each question waits at most ``Configuration/timeout``;
/// - **concurrency**: at most ``Configuration/maxConcurrent`` questions at once; a question
///   beyond that is not queued, it fails at once (``Verdict/unavailable(_:)``);
/// - **failures**: after ``Configuration/failureThreshold`` failures in a row (timeouts, errors,
///   other statuses, garbage) the circuit opens for ``Configuration/openDuration``: questions fail
///   at once without reaching the backend; then one question probes it;
/// - **cache**: answers (allow and deny, never failures) are kept per question for
///   ``Configuration/cacheTTL``, at most ``Configuration/cacheCapacity`` of them (the oldest go first).
public final class BackendHook: Sendable {
    public struct Configuration: Sendable {
        public var url: URL
        public var timeout: TimeAmount = .seconds(2)
        public var maxConcurrent = 64
        public var failureThreshold = 5
        public var openDuration: Duration = .seconds(10)
        public var cacheTTL: Duration = .seconds(30)
        public var cacheCapacity = 100_000
        /// Sent as `Authorization: Bearer` (`--hook-secret`), so the backend can tell Herald's
        /// questions from anyone else's. Its own secret: the API key never leaves the node.
        public var bearer: String?

        /// - Throws: ``ConfigurationError`` for a URL that is not `http(s)`.
        public init(url text: String) throws(ConfigurationError) {
            guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), scheme == "https" || scheme == "http", url.host?.isEmpty == false else {
                throw ConfigurationError("hook URL \(text) is not an http(s) URL: give your backend's address, e.g. https://backend.internal/herald/join")
            }
            self.url = url
        }
    }

    /// What the backend decided.
    public enum Verdict: Sendable, Equatable {
        case allow
        /// The backend refused, with its reason (or a default).
        case deny(String)
        /// No decision: the backend timed out, failed, answered garbage, the circuit is open or
        /// too many questions are under way. Says which.
        case unavailable(String)
    }

    /// A question: a connect (`room` nil) or a join.
    struct Question: Hashable, Sendable {
        var user: String
        var room: String?
    }

    /// The most questions a hook may have under way (the HTTP client's connections per host).
    public static let maxConcurrency = BoundedHTTP.maxConnectionsPerHost

    public let configuration: Configuration
    private let state = Mutex(State())

    struct State {
        var inFlight = 0
        var consecutiveFailures = 0
        var openUntil: ContinuousClock.Instant?
        var probing = false
        var cache = AnswerCache()
    }

    public init(configuration: Configuration) {
        var configuration = configuration
        configuration.maxConcurrent = min(max(1, configuration.maxConcurrent), Self.maxConcurrency)
        self.configuration = configuration
    }

    /// Forgets the cached answers about `user` (the backend disconnected them: the next
    /// connect asks again).
    public func forget(user: String) {
        state.withLock { state in
            state.cache.forget(user: user)
        }
    }

    /// Whether `user` may connect.
    public func connect(user: String) async -> Verdict {
        await decide(Question(user: user, room: nil))
    }

    /// Whether `user` may join `room`.
    public func join(user: String, room: String) async -> Verdict {
        await decide(Question(user: user, room: room))
    }

    /// Why the hook will not be asked now, or `nil` to ask (and the slot taken).
    private enum Admission {
        case cached(Verdict)
        case refused(String)
        case ask(probe: Bool)
    }

    func decide(_ question: Question) async -> Verdict {
        let now = ContinuousClock.now
        let admission: Admission = state.withLock { state in
            if let verdict = state.cache.answer(to: question, at: now) { return .cached(verdict) }
            var probe = false
            if let until = state.openUntil {
                if now < until || state.probing {
                    return .refused("the backend hook failed \(configuration.failureThreshold) times in a row; not asked again yet")
                }
                state.probing = true
                probe = true
            }
            guard state.inFlight < configuration.maxConcurrent else {
                if probe { state.probing = false }
                return .refused("\(configuration.maxConcurrent) questions to the backend hook are already under way")
            }
            state.inFlight += 1
            return .ask(probe: probe)
        }
        switch admission {
        case .cached(let verdict): return verdict
        case .refused(let why): return .unavailable(why)
        case .ask:
            let verdict = await ask(question)
            record(verdict, for: question)
            return verdict
        }
    }

    private func record(_ verdict: Verdict, for question: Question) {
        state.withLock { state in
            state.inFlight -= 1
            state.probing = false
            if case .unavailable = verdict {
                state.consecutiveFailures += 1
                if state.consecutiveFailures >= configuration.failureThreshold { state.openUntil = .now + configuration.openDuration }
                return
            }
            state.consecutiveFailures = 0
            state.openUntil = nil
            guard configuration.cacheTTL > .zero, configuration.cacheCapacity > 0 else { return }
            state.cache.remember(verdict, for: question, until: .now + configuration.cacheTTL, capacity: configuration.cacheCapacity)
        }
    }

    /// The largest answer read.
    static let maxAnswerBytes = 16 * 1024

    private func ask(_ question: Question) async -> Verdict {
        var request = HTTPClientRequest(url: configuration.url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let bearer = configuration.bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        var body = ByteBuffer()
        body.writeStaticString(#"{"event":"#)
        body.writeJSONString(question.room == nil ? "connect" : "join")
        body.writeStaticString(#","user":"#)
        body.writeJSONString(question.user)
        if let room = question.room {
            body.writeStaticString(#","room":"#)
            body.writeJSONString(room)
        }
        body.writeStaticString("}")
        request.body = .bytes(body)
        do {
            let (status, answer) = try await BoundedHTTP.fetch(request, timeout: configuration.timeout, maxBytes: Self.maxAnswerBytes)
            guard status == .ok else { return .unavailable("the backend hook answered \(status.code)") }
            return Self.verdict(from: answer)
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            return .unavailable("the backend hook did not answer within \(configuration.timeout.nanoseconds / 1_000_000) ms")
        } catch let error as BoundedHTTP.TimedOut {
            return .unavailable("the backend hook gave \(error)")
        } catch {
            return .unavailable("the backend hook cannot be reached: \(error)")
        }
    }

    /// `{"allow":true}` or `{"allow":false[,"reason":TEXT]}`; anything else is garbage.
    static func verdict(from answer: ByteBuffer) -> Verdict {
        struct Answer: Decodable {
            var allow: Bool
            var reason: String?
        }
        guard let decoded = try? JSONDecoder().decode(Answer.self, from: Data(answer.readableBytesView)) else {
            return .unavailable(#"the backend hook answered something other than {"allow":true|false}"#)
        }
        guard !decoded.allow else { return .allow }
        let reason = decoded.reason.map(Self.printable(_:)) ?? ""
        return .deny(reason.isEmpty ? "refused by the backend" : reason)
    }

    /// The backend's reason as a close reason can carry it: printable, at most 80 bytes of UTF-8.
    static func printable(_ text: String) -> String {
        var scalars = String.UnicodeScalarView()
        var bytes = 0
        for scalar in text.unicodeScalars where scalar.value >= 0x20 && scalar.value != 0x7F && !(0x80...0x9F).contains(scalar.value) {
            bytes += UTF8.width(scalar)
            guard bytes <= 80 else { break }
            scalars.append(scalar)
        }
        return String(scalars)
    }
}

/// The hook's answers, at most `capacity` of them: the oldest answer goes first. Each answer
/// has a serial number, and the order queue holds (question, serial): an entry replaced or
/// forgotten leaves a stale queue item that eviction skips, and the queue is compacted once
/// it holds twice the capacity, so it stays bounded whatever is forgotten.
struct AnswerCache {
    private var answers: [BackendHook.Question: (verdict: BackendHook.Verdict, expires: ContinuousClock.Instant, serial: UInt64)] = [:]
    private var order = Deque<(question: BackendHook.Question, serial: UInt64)>()
    private var nextSerial: UInt64 = 0

    var count: Int { answers.count }
    var queueLength: Int { order.count }

    func answer(to question: BackendHook.Question, at now: ContinuousClock.Instant) -> BackendHook.Verdict? {
        guard let hit = answers[question], hit.expires > now else { return nil }
        return hit.verdict
    }

    mutating func remember(_ verdict: BackendHook.Verdict, for question: BackendHook.Question, until expires: ContinuousClock.Instant, capacity: Int) {
        nextSerial &+= 1
        answers[question] = (verdict, expires, nextSerial)
        order.append((question, nextSerial))
        while answers.count > capacity, let oldest = order.popFirst() {
            if answers[oldest.question]?.serial == oldest.serial { answers[oldest.question] = nil }
        }
        if order.count > 2 * capacity + 1024 {
            order = Deque(order.filter { answers[$0.question]?.serial == $0.serial })
        }
    }

    mutating func forget(user: String) {
        for question in answers.keys where question.user == user { answers[question] = nil }
    }
}
