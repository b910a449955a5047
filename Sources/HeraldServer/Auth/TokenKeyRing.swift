import Foundation
public import JWTKit
import Logging
import Synchronization

/// A source of published public keys (a JWKS), fetched at start and again when a token names
/// a `kid` no key has (key rotation at the identity provider).
public protocol TokenKeySet: Sendable {
    /// Where the keys come from, for logs and error messages.
    var source: String { get }
    /// The current key set.
    /// - Throws: when the set cannot be read or is not a JWKS; the keys fetched before stay in use.
    func fetch() async throws -> JWKS
}

/// A JWKS file (`--jwks FILE`), read again on an unknown `kid`, so keys rotate by rewriting it.
public struct JWKSFile: TokenKeySet {
    public let path: String
    /// The largest file read: a key set is a few kilobytes.
    static let maxBytes = 1024 * 1024

    public init(path: String) { self.path = path }

    public var source: String { path }

    public func fetch() async throws -> JWKS {
        let url = URL(fileURLWithPath: path)
        let data = try Data(contentsOf: url)
        guard data.count <= Self.maxBytes else { throw ConfigurationError("\(path) is over \(Self.maxBytes) bytes: not a JWKS") }
        return try Self.decode(data)
    }

    /// A JWKS, keeping the entries jwt-kit can decode: one entry of a kind it does not know
    /// (`oct`, a future `kty`) must not hide the others.
    /// - Throws: when `data` is not a JSON object with a `keys` array.
    public static func decode(_ data: Data) throws -> JWKS {
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any], let entries = object["keys"] as? [Any] else {
            throw ConfigurationError("not a JWKS: expected a JSON object with a \"keys\" array")
        }
        let keys = entries.compactMap { entry -> JWK? in
            guard JSONSerialization.isValidJSONObject(entry), let bytes = try? JSONSerialization.data(withJSONObject: entry) else { return nil }
            return try? JSONDecoder().decode(JWK.self, from: bytes)
        }
        return JWKS(keys: keys)
    }
}

/// The keys tokens are verified with: configured keys (secrets, PEM files) and the keys of the
/// key sets, which are replaced whole on each successful fetch. A failed fetch keeps the keys
/// fetched before ("served from cache while the identity provider is down").
final class TokenKeyRing: Sendable {
    private struct State {
        /// Keys of each key set by its index, as last fetched.
        var fetched: [Int: [TokenKey]] = [:]
        var lastRefresh: ContinuousClock.Instant?
        var refreshing: Task<Void, Never>?
    }

    private let configured: [TokenKey]
    private let keySets: [any TokenKeySet]
    private let refreshInterval: Duration
    private let maxAge: Duration
    private let logger: Logger?
    private let state = Mutex(State())

    init(keys: [TokenKey], keySets: [any TokenKeySet], refreshInterval: Duration, maxAge: Duration = .seconds(600), logger: Logger? = nil) {
        self.logger = logger
        self.configured = keys
        self.keySets = keySets
        self.refreshInterval = refreshInterval
        self.maxAge = maxAge
    }

    /// Every key in use now.
    var keys: [TokenKey] {
        configured + state.withLock { state in state.fetched.keys.sorted().flatMap { state.fetched[$0]! } }
    }

    var signingKey: TokenKey? { configured.first { $0.canSign } }

    /// The first fetch. A file that cannot be read is a configuration error; an unreachable
    /// URL is not (the provider may come up later), as long as some key exists.
    func loadKeySets() async throws(ConfigurationError) {
        let problems = await refresh()
        if let problem = problems.first(where: { $0.isFatalAtStart }) { throw ConfigurationError(problem.message) }
    }

    private struct FetchProblem {
        let message: String
        let isFatalAtStart: Bool
    }

    /// Fetches every key set, replacing the keys of each one that answers.
    @discardableResult
    private func refresh() async -> [FetchProblem] {
        var problems: [FetchProblem] = []
        for (index, keySet) in keySets.enumerated() {
            do {
                let jwks = try await keySet.fetch()
                var keys: [TokenKey] = []
                for jwk in jwks.keys {
                    // One bad entry (an unsupported curve, a private key) does not disable the others.
                    if let key = try? await TokenKey.jwk(jwk, source: keySet.source) { keys.append(key) }
                }
                state.withLock { $0.fetched[index] = keys }
            } catch {
                problems.append(FetchProblem(message: "\(keySet.source): cannot load the JWKS: \(error)", isFatalAtStart: keySet is JWKSFile))
                logger?.warning(
                    "cannot load a JWKS; the keys fetched before stay in use",
                    metadata: ["source": "\(keySet.source)", "error": "\(error)"]
                )
            }
        }
        state.withLock { $0.lastRefresh = .now }
        return problems
    }

    /// Fetches the key sets again unless that was done less than `interval` ago (the refresh
    /// interval by default); a fetch under way is joined, not repeated.
    private func refreshIfDue(olderThan interval: Duration? = nil) async {
        guard !keySets.isEmpty else { return }
        let interval = interval ?? refreshInterval
        let task = state.withLock { (current) -> Task<Void, Never>? in
            if let refreshing = current.refreshing { return refreshing }
            if let last = current.lastRefresh, ContinuousClock.now - last < interval { return nil }
            let task = Task { [self] in
                await refresh()
                state.withLock { $0.refreshing = nil }
            }
            current.refreshing = task
            return task
        }
        await task?.value
    }

    /// The keys that may verify a token with `header`, in the order to try them: the one its
    /// `kid` names, or without `kid` every key for its `alg` (two secrets during a rotation).
    func keys(for header: TokenHeader) async -> Result<[TokenKey], AuthenticationFailure> {
        refreshInBackgroundIfStale()
        if let found = select(header) { return found }
        // An unknown kid may be a key the provider rotated in since the last fetch.
        if header.kid != nil {
            await refreshIfDue()
            if let found = select(header) { return found }
        }
        if let kid = header.kid { return .failure(.init("token kid \(TokenHeader.quoted(kid)) is unknown")) }
        return .failure(.init("token alg \(header.algorithm.rawValue) is not accepted by any key of this server"))
    }

    /// Key sets older than the maximum age are fetched again without making a token wait.
    private func refreshInBackgroundIfStale() {
        guard !keySets.isEmpty else { return }
        let maxAge = self.maxAge
        let stale = state.withLock { current in
            current.refreshing == nil && current.lastRefresh.map { ContinuousClock.now - $0 >= maxAge } == true
        }
        guard stale else { return }
        Task { await self.refreshIfDue(olderThan: maxAge) }
    }

    /// Keys tried for a token without `kid` (two secrets during a rotation, a few public keys).
    static let maxKeysWithoutKid = 4

    /// `nil` when no key has the token's `kid` (or, without `kid`, its `alg`).
    private func select(_ header: TokenHeader) -> Result<[TokenKey], AuthenticationFailure>? {
        let keys = self.keys
        if let kid = header.kid {
            let named = keys.filter { $0.kid == kid }
            guard !named.isEmpty else { return nil }
            if let key = named.first(where: { $0.algorithms.contains(header.algorithm) }) { return .success([key]) }
            let accepted = Set(named.flatMap(\.algorithms)).sorted().map(\.rawValue).joined(separator: ", ")
            return .failure(.init("token alg \(header.algorithm.rawValue) does not match key \(TokenHeader.quoted(kid)) (\(accepted))"))
        }
        // Without a kid: the keys for the header's algorithm, those without a kid first, at most
        // `maxKeysWithoutKid` of them, so a token without kid cannot cost a signature check per
        // key of a large key set.
        let fitting = keys.filter { $0.algorithms.contains(header.algorithm) }
        if !fitting.isEmpty {
            return .success(Array((fitting.filter { $0.kid == nil } + fitting.filter { $0.kid != nil }).prefix(Self.maxKeysWithoutKid)))
        }
        return .failure(.init("token alg \(header.algorithm.rawValue) is not accepted by any key of this server"))
    }
}

/// The fields of a token's JOSE header Herald acts on, parsed before any key is touched.
struct TokenHeader: Equatable {
    var algorithm: TokenAlgorithm
    var kid: String?

    static func parse(_ token: String) -> Result<TokenHeader, AuthenticationFailure> {
        let parts = token.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .failure(.init("token malformed: a JWT has three parts separated by dots")) }
        guard let bytes = base64URLDecode(Substring(parts[0])),
            let object = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any]
        else {
            return .failure(.init("token malformed: the header is not base64url JSON"))
        }
        guard let alg = object["alg"] as? String else { return .failure(.init("token malformed: the header has no alg")) }
        guard let algorithm = TokenAlgorithm(rawValue: alg) else {
            return .failure(.init("token alg \(quoted(alg)) is not accepted (\(TokenAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")))"))
        }
        // RFC 7515 4.1.11: extensions the verifier does not understand must be refused.
        if object["crit"] != nil { return .failure(.init("token header has crit extensions this server does not understand")) }
        let kid: String?
        switch object["kid"] {
        case nil: kid = nil
        case let value as String: kid = value
        default: return .failure(.init("token malformed: the header's kid is not a string"))
        }
        return .success(TokenHeader(algorithm: algorithm, kid: kid))
    }

    /// A header value in a close reason: quoted, printable ASCII (no quote or backslash), at most 24 characters.
    static func quoted(_ value: String) -> String {
        let printable = value.unicodeScalars.prefix(24).map { $0.value >= 0x20 && $0.value < 0x7F && $0 != "\"" && $0 != "\\" ? Character($0) : "?" }
        return "\"\(String(printable))\(value.unicodeScalars.count > 24 ? "…" : "")\""
    }

    static func base64URLDecode(_ text: Substring) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard !base64.contains("=") else { return nil }
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }
}
