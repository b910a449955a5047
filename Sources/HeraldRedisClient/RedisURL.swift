/// Where a Redis server is and how to log in: `redis://[[user]:password@]host[:port][/db]`.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String?
    public var password: String?
    public var database: Int

    public init(host: String = "127.0.0.1", port: Int = 6379, user: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// `text` with the credentials of a `scheme://user:password@host` URL replaced by `***`, for
    /// messages and logs.
    public static func redacting(_ text: String) -> String {
        guard let scheme = text.firstRange(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@") else { return text }
        return String(text[..<scheme.upperBound]) + "***" + String(text[at...])
    }

    /// Parses `redis://…`. `rediss://` (TLS) is refused: this client speaks plain TCP.
    public init(parsing text: String) throws(RedisError) {
        if text.hasPrefix("rediss://") {
            throw RedisError.invalidConfiguration(
                "rediss:// (TLS) is not supported by Herald's Redis client; use redis:// on a trusted network or a TLS tunnel")
        }
        guard text.hasPrefix("redis://") else { throw RedisError.invalidConfiguration("a Redis URL starts with redis://, got \(Self.redacting(text))") }
        var rest = Substring(text.dropFirst("redis://".count))
        self.init()
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                self.user = user.isEmpty ? nil : Self.decode(user)
                self.password = Self.decode(credentials[credentials.index(after: colon)...])
            } else {
                self.password = Self.decode(credentials)
            }
        }
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !db.isEmpty {
                guard let number = Int(db), number >= 0 else { throw RedisError.invalidConfiguration("the database in a Redis URL is a number, got \(db)") }
                database = number
            }
        }
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                throw RedisError.invalidConfiguration("invalid port in Redis URL \(Self.redacting(text))")
            }
            port = number
            rest = rest[..<colon]
        }
        host = rest.isEmpty ? "127.0.0.1" : String(rest.filter { $0 != "[" && $0 != "]" })
    }

    public var description: String {
        "redis://\(password == nil ? "" : "\(user ?? ""):***@")\(host):\(port)/\(database)"
    }

    private static func decode(_ text: Substring) -> String {
        // Percent-decoding for passwords with reserved characters.
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"), let high = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), high != utf8.endIndex,
                let low = utf8.index(high, offsetBy: 1, limitedBy: utf8.endIndex), low != utf8.endIndex,
                let value = UInt8(String(decoding: [utf8[high], utf8[low]], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                index = utf8.index(after: low)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
