public import Herald
public import Logging
import Synchronization

/// One running Herald node: its configuration, hub, broker and authenticator, shared by the
/// WebSocket endpoint and the HTTP API.
public final class HeraldNode: Sendable {
    public let configuration: HeraldConfiguration
    public let hub: Hub
    public let broker: any Broker
    public let authenticator: Authenticator
    public let nodeID: String
    let logger: Logger
    private let nextConnection = Atomic<UInt64>(0)

    public init(configuration: HeraldConfiguration, hub: Hub, broker: any Broker, authenticator: Authenticator, logger: Logger) {
        self.configuration = configuration
        self.hub = hub
        self.broker = broker
        self.authenticator = authenticator
        self.nodeID = configuration.nodeID ?? Self.randomNodeID()
        self.logger = logger
    }

    /// A connection id unique on this node and, with the node id in it, across the cluster.
    func makeConnectionID() -> String {
        let number = nextConnection.add(1, ordering: .relaxed).newValue
        return "\(nodeID)-\(String(number, radix: 36))"
    }

    private static func randomNodeID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<8).map { _ in alphabet.randomElement()! })
    }
}
