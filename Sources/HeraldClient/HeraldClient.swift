public import HeraldWire
public import ServiceLifecycle

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A Herald connection that reconnects by itself: the official Swift client (protocol v1,
/// docs/protocol.md), with the policies of the JavaScript client (herald.js).
///
/// ```swift
/// let client = HeraldClient(url: URL(string: "ws://127.0.0.1:8080/ws")!, credentials: .user("alice"))
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { try await client.run() }
///     let lobby = client.room("lobby")
///     try await lobby.join()
///     try await lobby.publish(["text": "hi"])
///     for await message in lobby.messages { print(message.data) }
/// }
/// ```
///
/// ``run()`` connects, fails over between the URLs, and reconnects with exponential backoff and
/// full jitter (or the server's 1013 `retry in N s` hint). After every `welcome` it re-joins the
/// application's rooms from the last processed offset of each (and resumes the user channel),
/// drops duplicates, reports what could not be recovered, acknowledges `ack:true` messages,
/// refreshes tokens and detects dead connections. It ends when cancelled (or at a graceful
/// shutdown of its `ServiceGroup`), or throws ``HeraldClientError/stopped(closeCode:reason:)``
/// after a close code that reconnecting cannot fix.
///
/// Requests made while not connected wait in a bounded queue and go out after the next welcome
/// (after the re-joins); every request fails with ``HeraldClientError/timeout(_:)`` after
/// ``Configuration/requestTimeout`` counted from the call. A request sent on a connection that
/// dies before the reply is sent again when it is a join, leave, presence or ack; a publish, send
/// or broadcast fails ``HeraldClientError/disconnected(_:)`` (it may or may not have been delivered).
public final class HeraldClient: Service, Sendable {
    let core: ClientCore

    /// - Parameters:
    ///   - urls: `ws://host:port/ws` (or `wss://`), one per node: each attempt takes the next.
    ///   - credentials: development mode's user name, a token, or a token provider.
    ///   - configuration: the client's policies (defaults: those of herald.js).
    public init(urls: [URL], credentials: Credentials, configuration: Configuration = Configuration()) {
        core = ClientCore(urls: urls.map(\.absoluteString), credentials: credentials, configuration: configuration)
    }

    /// A client of one node (or of a load balancer in front of several).
    public convenience init(url: URL, credentials: Credentials, configuration: Configuration = Configuration()) {
        self.init(urls: [url], credentials: credentials, configuration: configuration)
    }

    /// Connects and keeps connected until the task is cancelled (then returns: the socket is
    /// closed, pending requests fail ``HeraldClientError/closed(_:)``, streams finish).
    ///
    /// - Throws: ``HeraldClientError/stopped(closeCode:reason:)`` when the server closed with 4001,
    ///   4003, 1002, 1007 or 1008; ``HeraldClientError/invalidUse(_:)`` when called twice or
    ///   without a usable URL. A client runs once: make a new one to start again.
    public func run() async throws {
        if let problem = urlProblem {
            core.shutdown(.invalidUse(problem))
            throw HeraldClientError.invalidUse(problem)
        }
        guard core.start() else {
            throw HeraldClientError.invalidUse("run() was already called: a HeraldClient runs once, make a new one to start again")
        }
        let core = self.core
        let error = await cancelWhenGracefulShutdown { await core.runAll() }
        core.shutdown(error)
        if let error { throw error }
    }

    private var urlProblem: String? {
        if core.urls.isEmpty { return "no URL: give at least one ws:// or wss:// URL" }
        for url in core.urls where !(url.hasPrefix("ws://") || url.hasPrefix("wss://")) {
            return "\(url) is not a WebSocket URL: use ws://host:port/ws or wss://host/ws"
        }
        return nil
    }

    /// The handle of room `name` (cheap: make one whenever needed).
    public func room(_ name: String) -> HeraldRoom {
        core.locked { state, _ in
            if state.rooms[name] == nil {
                state.rooms[name] = ClientCore.RoomEntry(
                    stream: StreamFanOut(policy: .oldest(core.configuration.messageBufferSize), limit: core.configuration.maxSubscribers))
                if state.phase == .closed { state.rooms[name]?.stream.finish() }
            }
        }
        return HeraldRoom(name: name, core: core)
    }

    /// Sends `data` to every connection of `user` (the send policy of the server decides who may).
    public func send(to user: String, data: RawJSON) async throws(HeraldClientError) {
        _ = try await core.request(.send(user: user, data: data))
    }

    /// Sends `value`, encoded as JSON, to every connection of `user`.
    public func send<T: Encodable>(to user: String, _ value: T) async throws(HeraldClientError) {
        try await send(to: user, data: RawJSON(encoding: value))
    }

    /// Sends `data` to every connection (only when the server runs with `--allow-client-broadcast`).
    public func broadcast(_ data: RawJSON) async throws(HeraldClientError) {
        _ = try await core.request(.broadcast(data))
    }

    /// A new stream of every delivered message (room, user and broadcast), duplicates removed.
    ///
    /// Each access opens a separate stream (at most ``Configuration/maxSubscribers`` at once).
    /// Each buffers up to ``Configuration/messageBufferSize`` messages for a consumer that falls
    /// behind; beyond it new messages are refused by that stream. A message no stream took is
    /// reported as ``HeraldEvent/messageDropped(_:)`` and not acknowledged. The stream finishes
    /// when the client stops. Messages are read from the socket as they come: a consumer that
    /// does not read does not slow the connection down.
    public var messages: AsyncStream<HeraldMessage> {
        Self.subscribe(core.messages, core: core, what: "client.messages")
    }

    /// A new stream of the client's events (connection state, recoveries, memberships, errors).
    /// Each buffers the newest ``Configuration/eventBufferSize`` events; older ones are dropped.
    public var events: AsyncStream<HeraldEvent> {
        Self.subscribe(core.events, core: core, what: "client.events")
    }

    static func subscribe<T: Sendable>(_ source: StreamFanOut<T>, core: ClientCore, what: String) -> AsyncStream<T> {
        if let stream = source.subscribe() { return stream }
        core.events.yield(.error(.invalidUse("more than \(core.configuration.maxSubscribers) \(what) streams are open: the new one is finished at once")))
        return AsyncStream { $0.finish() }
    }

    /// The current connection's welcome; `nil` while not connected.
    public var welcome: Welcome? { core.locked { state, _ in state.welcome } }

    /// The user channel's position the next connection resumes from.
    public var userPosition: StreamPosition? { core.locked { state, _ in state.positions.resume(.user) } }

    /// Counters since the client was made.
    public var statistics: Statistics { core.locked { state, _ in state.statistics } }

    /// The sizes of the internal structures, all bounded by the configuration.
    public var sizes: Sizes {
        core.locked { state, _ in
            Sizes(pending: state.pending.count, queued: state.queue.count, positions: state.positions.count, rooms: state.rooms.count)
        }
    }

    /// Counters, for monitoring and tests.
    public struct Statistics: Sendable, Equatable {
        /// WebSocket connections attempted.
        public var connectAttempts = 0
        /// Welcomes received (successful connections).
        public var welcomes = 0
        /// Messages handed to the application.
        public var messages = 0
        /// Messages dropped as already processed.
        public var duplicates = 0
    }

    /// The sizes of the internal structures.
    public struct Sizes: Sendable, Equatable {
        /// Requests awaiting a reply (queued ones included).
        public var pending: Int
        /// Requests waiting for a connection.
        public var queued: Int
        /// Channels with a remembered position.
        public var positions: Int
        /// Room handles made.
        public var rooms: Int
    }
}
