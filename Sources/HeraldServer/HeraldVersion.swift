/// Herald's release version (`herald --version`) and the protocol version it speaks.
public enum HeraldVersion {
    /// Semantic version of this build of Herald.
    public static let current = "0.10.0"
    /// The client protocol (docs/protocol.md).
    public static let protocolVersion = 1
}
