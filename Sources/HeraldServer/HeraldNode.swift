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
    public let authenticator: Authenticator
    public let nodeID: String
    let logger: Logger
    private let nextConnection = Atomic<UInt64>(0)

    public init(configuration: HeraldConfiguration, hub: Hub, broker: any Broker, roster: any Roster, authenticator: Authenticator, logger: Logger) {
        self.configuration = configuration
        self.hub = hub
        self.broker = broker
        self.roster = roster
        self.authenticator = authenticator
        self.nodeID = configuration.nodeID ?? Self.randomNodeID()
        self.logger = logger
    }

    /// A connection id unique on this node and, with the node id in it, across the cluster.
    func makeConnectionID() -> String {
        let number = nextConnection.add(1, ordering: .relaxed).newValue
        return "\(nodeID)-\(String(number, radix: 36))"
    }

    /// Why `id` cannot name a node (it appears in Redis channel names and notices), or `nil`.
    static func problem(withID id: String) -> String? {
        guard !id.isEmpty, id.utf8.count <= 64 else { return "must be 1 to 64 characters" }
        let allowed = id.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" || $0 == "." }
        return allowed ? nil : "may contain only letters, digits, '-', '_' and '.'"
    }

    static func randomNodeID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<8).map { _ in alphabet.randomElement()! })
    }
}
