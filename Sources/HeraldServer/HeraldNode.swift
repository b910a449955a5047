public import Herald
public import Logging
import Synchronization

/// One running Herald node: its configuration, hub, broker and authenticator, shared by the
/// WebSocket endpoint and the HTTP API.
public final class HeraldNode: Sendable {
    public let configuration: HeraldConfiguration
    public let hub: Hub
    public let broker: any Broker
    public let roster: any Roster
    /// Revoked token ids, checked at every connect and refresh.
    public let denylist: any TokenDenylist
    public let authenticator: Authenticator
    /// Tells watched rooms' local members of presence changes (`nil`: presence events are off).
    public let presenceNotifier: PresenceNotifier?
    /// The backend's say on connections and joins, when configured.
    let connectHook: BackendHook?
    let joinHook: BackendHook?
    public let nodeID: String
    let logger: Logger
    /// The TLS context new connections take, when the node serves TLS.
    let tls: TLSContextStore?
    private let nextConnection = Atomic<UInt64>(0)
    /// WebSocket connections admitted to the hub whose welcome has not been sent yet.
    let connecting = Atomic<Int>(0)
    /// WebSocket requests answered 503 because too many connections were being set up.
    let overloadRefusals = Atomic<Int>(0)
    /// Set once the listener is bound.
    let listening = Atomic<Bool>(false)
    /// Set when graceful shutdown begins: `/readyz` fails from then on.
    let draining = Atomic<Bool>(false)
    /// The browser origins allowed to open WebSockets (`nil`: the server's own origin, or any
    /// in development mode; see ``CORSPolicy/admitsUpgrade(origin:host:policy:allowsAnyOriginWithoutList:)``).
    let webSocketOrigins: CORSPolicy?
    /// Where this node posts its figures and reads the cluster's for `/status`.
    let statusBoard: any StatusBoard
    /// The node's last warnings and errors, for `/status`.
    let recentEvents: RecentLogEvents

    public convenience init(
        configuration: HeraldConfiguration, hub: Hub, broker: any Broker, roster: any Roster, denylist: (any TokenDenylist)? = nil,
        authenticator: Authenticator,
        logger: Logger
    ) {
        self.init(
            configuration: configuration, hub: hub, broker: broker, roster: roster,
            denylist: denylist ?? LocalTokenDenylist(limit: configuration.maxRevokedTokens, notifying: hub), authenticator: authenticator, tls: nil,
            logger: logger
        )
    }

    init(
        configuration: HeraldConfiguration, hub: Hub, broker: any Broker, roster: any Roster, denylist: any TokenDenylist, authenticator: Authenticator,
        tls: TLSContextStore?, logger: Logger, statusBoard: (any StatusBoard)? = nil, recentEvents: RecentLogEvents = RecentLogEvents()
    ) {
        self.statusBoard = statusBoard ?? LocalStatusBoard()
        self.recentEvents = recentEvents
        self.denylist = denylist
        self.tls = tls
        self.configuration = configuration
        self.hub = hub
        self.broker = broker
        self.roster = roster
        self.authenticator = authenticator
        self.nodeID = configuration.nodeID ?? Self.randomNodeID()
        self.logger = logger
        self.webSocketOrigins = CORSPolicy(configuration.allowedOrigins)
        self.connectHook = configuration.connectHook.map(BackendHook.init(configuration:))
        self.joinHook = configuration.joinHook.map(BackendHook.init(configuration:))
        self.presenceNotifier = configuration.presenceEvents.map { PresenceNotifier(hub: hub, roster: roster, configuration: $0, logger: logger) }
    }

    /// Whether a WebSocket upgrade with this `Origin` (and `Host`) may proceed.
    func admitsUpgrade(origin: String?, host: String?) -> Bool {
        CORSPolicy.admitsUpgrade(origin: origin, host: host, policy: webSocketOrigins, allowsAnyOriginWithoutList: authenticator.isDevelopmentMode)
    }

    /// Re-reads the TLS certificate and key files (what SIGHUP does): new connections get the
    /// new certificate, open connections keep theirs; a file that fails to load keeps the
    /// previous certificate in use (logged). Returns whether the new one is in use; `false`
    /// also without TLS.
    @discardableResult
    func reloadCertificates() -> Bool {
        tls?.reload(logger: logger) ?? false
    }

    /// Seconds a new WebSocket client should wait before trying again when the node is
    /// setting up ``HeraldConfiguration/maxConnectingConnections`` connections already (jittered,
    /// so refused clients do not return together); `nil` when it takes new connections.
    func overloadRetryAfter() -> Int? {
        let limit = configuration.maxConnectingConnections
        guard limit > 0, connecting.load(ordering: .relaxed) >= limit else { return nil }
        overloadRefusals.add(1, ordering: .relaxed)
        return Int.random(in: 1...5)
    }

    /// A connection id unique on this node and, with the node id in it, across the cluster.
    /// Whether this node can serve new connections: listening, its broker ready (with Redis:
    /// connected and subscribed), not draining. What `/readyz` answers.
    public func readiness() -> Readiness {
        var reasons: [String] = []
        if !listening.load(ordering: .relaxed) { reasons.append("not listening yet") }
        if draining.load(ordering: .relaxed) { reasons.append("draining: shutting down, new connections should go to another node") }
        if let problem = broker.unreadiness { reasons.append(problem) }
        return Readiness(status: reasons.isEmpty ? "ready" : "not_ready", node: nodeID, reasons: reasons)
    }

    /// `GET /readyz`'s body.
    public struct Readiness: Sendable, Encodable, Equatable {
        /// `ready` or `not_ready`.
        public var status: String
        public var node: String
        /// Why not, empty when ready.
        public var reasons: [String]

        public var isReady: Bool { reasons.isEmpty }
    }

    func makeConnectionID() -> String {
        let number = nextConnection.add(1, ordering: .relaxed).newValue
        return "\(nodeID)-\(String(number, radix: 36))"
    }

    /// Why `id` cannot name a node (it appears in Redis channel names and notices), or `nil`.
    public static func problem(withID id: String) -> String? {
        guard !id.isEmpty, id.utf8.count <= 64 else { return "must be 1 to 64 characters" }
        let allowed = id.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" || $0 == "."
        }
        return allowed ? nil : "may contain only letters, digits, '-', '_' and '.'"
    }

    /// A fresh node id: what a node is called when its configuration names none.
    public static func randomNodeID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<8).map { _ in alphabet.randomElement()! })
    }
}
