import HTTPTypes
import HeraldWire
import Hummingbird
import NIOCore

/// The routes Herald answers over plain HTTP and the methods of each, for the answers a client
/// expects from any HTTP server: `405 Method Not Allowed` with `Allow` for a known route and
/// another method, `OPTIONS` (and CORS preflights), `426 Upgrade Required` on `/ws`.
enum HTTPRoutes {
    /// Path patterns (`*` is one segment) and their methods.
    static let table: [(pattern: [Substring], methods: [HTTPRequest.Method])] = [
        ([""], [.get]),
        (["healthz"], [.get]),
        (["readyz"], [.get]),
        (["status"], [.get]),
        (["metrics"], [.get]),
        (["herald.js"], [.get]),
        (["herald.d.ts"], [.get]),
        (["ws"], [.get]),
        (["api", "openapi.yaml"], [.get]),
        (["api", "broadcast"], [.post]),
        (["api", "publish"], [.post]),
        (["api", "stats"], [.get]),
        (["api", "status"], [.get]),
        (["api", "tokens", "*", "revoke"], [.post]),
        (["api", "users", "*", "connections"], [.delete]),
        (["api", "rooms", "*"], [.get]),
        (["api", "rooms", "*", "publish"], [.post]),
        (["api", "rooms", "*", "history"], [.get]),
        (["api", "rooms", "*", "members", "*"], [.put, .delete]),
        (["api", "users", "*"], [.get]),
        (["api", "users", "*", "send"], [.post]),
        (["api", "users", "*", "history"], [.get]),
    ]

    /// The methods `path` answers, or `nil` for a path Herald does not serve.
    static func methods(for path: String) -> [HTTPRequest.Method]? {
        var segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if segments.count > 1, segments.last == "" { segments = segments.dropLast() }
        for route in table where route.pattern.count == segments.count {
            let matches = zip(route.pattern, segments).allSatisfy { pattern, segment in
                pattern == "*" ? !segment.isEmpty : pattern == segment
            }
            if matches { return route.methods }
        }
        return nil
    }

    /// The `Allow` header's value: the route's methods, `HEAD` with `GET`, and `OPTIONS`.
    static func allow(_ methods: [HTTPRequest.Method]) -> String {
        var names = methods.map(\.rawValue)
        if methods.contains(.get) { names.append("HEAD") }
        return (names + ["OPTIONS"]).joined(separator: ", ")
    }
}

/// Which browser pages may talk to this server (`--allowed-origins`): open WebSockets, and call
/// the API from another origin (CORS). Entries are exact origins (`https://app.example.com`),
/// subdomain patterns (`https://*.example.com`: every subdomain, at any depth, not the domain
/// itself) or `*`.
public struct CORSPolicy: Sendable {
    /// Normalized exact origins (``normalize(_:)``).
    let origins: Set<String>
    /// Subdomain patterns as (`scheme://`, `.domain[:port]`).
    private let subdomains: [(prefix: String, suffix: String)]
    private let anyOrigin: Bool

    /// The policy of a configuration, `nil` when it allows no other origin. Origins that are
    /// not valid are left out (the executable refuses them with a reason before this).
    public init?(_ origins: [String]?) {
        guard let origins, !origins.isEmpty else { return nil }
        self.anyOrigin = origins.contains("*")
        var exact: Set<String> = []
        var subdomains: [(String, String)] = []
        for origin in origins {
            guard case .success(let normalized) = Self.normalize(origin, allowingSubdomainPattern: true) else { continue }
            if let star = normalized.firstRange(of: "://*.") {
                subdomains.append((String(normalized[..<star.lowerBound]) + "://", "." + normalized[star.upperBound...]))
            } else {
                exact.insert(normalized)
            }
        }
        self.origins = exact
        self.subdomains = subdomains
    }

    /// Whether a page of `origin` (as the browser sent it) is allowed.
    public func allows(_ origin: String) -> Bool {
        if anyOrigin { return true }
        guard case .success(let normalized) = Self.normalize(origin) else { return false }
        if origins.contains(normalized) { return true }
        return subdomains.contains { pattern in
            normalized.hasPrefix(pattern.prefix) && normalized.hasSuffix(pattern.suffix)
                && normalized.utf8.count > pattern.prefix.utf8.count + pattern.suffix.utf8.count
        }
    }

    /// Whether a WebSocket upgrade with these `Origin` and `Host` headers may proceed: no
    /// `Origin` (not a browser) always may; a browser's only from an allowed origin, or, when
    /// `policy` is `nil`, from the server's own origin (same host and port as `Host`) unless
    /// `allowsAnyOriginWithoutList` (development mode). Tokens, not cookies, authenticate a
    /// WebSocket, so a hostile page cannot borrow a user's session; the check keeps other
    /// sites from even opening connections with tokens they got some other way.
    public static func admitsUpgrade(origin: String?, host: String?, policy: CORSPolicy?, allowsAnyOriginWithoutList: Bool) -> Bool {
        guard let origin else { return true }
        // Browsers send http(s) origins (or "null"); WebSocket libraries outside browsers
        // often send their ws(s):// URL, which no page can make a browser send.
        let lowered = origin.lowercased()
        if lowered.hasPrefix("ws://") || lowered.hasPrefix("wss://") { return true }
        if let policy { return policy.allows(origin) }
        if allowsAnyOriginWithoutList { return true }
        guard case .success(let normalized) = normalize(origin), let host, let authority = normalized.firstRange(of: "://") else { return false }
        var serverHost = host.lowercased()
        for defaultPort in [":80", ":443"] where serverHost.hasSuffix(defaultPort) { serverHost.removeLast(defaultPort.count) }
        return normalized[authority.upperBound...] == serverHost
    }

    /// An origin as browsers send it: `scheme://host[:port]`, lowercase, without the scheme's
    /// default port, nothing after the host and port. An origin written another way would
    /// never match a browser's. With `allowingSubdomainPattern`, the host may start with `*.`.
    public static func normalize(_ text: String, allowingSubdomainPattern: Bool = false) -> Result<String, OriginProblem> {
        let lowered = text.lowercased()
        let scheme: String
        if lowered.hasPrefix("https://") {
            scheme = "https"
        } else if lowered.hasPrefix("http://") {
            scheme = "http"
        } else {
            return .failure(OriginProblem("must start with http:// or https://"))
        }
        var rest = lowered.dropFirst(scheme.count + 3)
        var pattern = ""
        if allowingSubdomainPattern, rest.hasPrefix("*.") {
            pattern = "*."
            rest = rest.dropFirst(2)
        }
        guard !rest.isEmpty, !rest.contains(where: { "/?#@ \\*".contains($0) }) else {
            return .failure(OriginProblem("must be scheme://host[:port] (or scheme://*.domain), with no path, query or user"))
        }
        var host = Substring(rest)
        var port: Int?
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let number = Int(rest[rest.index(after: colon)...]), (1...65535).contains(number) else {
                return .failure(OriginProblem("has a port that is not 1 to 65535"))
            }
            port = number
            host = rest[..<colon]
        }
        let isIPv6 = host.hasPrefix("[") && host.hasSuffix("]")
        let allowed = isIPv6 ? "0123456789abcdef:.[]" : "abcdefghijklmnopqrstuvwxyz0123456789.-"
        guard !host.isEmpty, host.allSatisfy({ allowed.contains($0) }), !(isIPv6 && !pattern.isEmpty) else {
            return .failure(OriginProblem("has a host that is not a name or an address"))
        }
        if port == (scheme == "https" ? 443 : 80) { port = nil }
        return .success(scheme + "://" + pattern + host + (port.map { ":\($0)" } ?? ""))
    }

    /// Why a text is not an origin.
    public struct OriginProblem: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, or `nil` when that
    /// origin is not allowed (no CORS header: the browser keeps the answer from the page).
    public func allowedOrigin(_ origin: String?) -> String? {
        guard let origin else { return nil }
        if anyOrigin { return "*" }
        return allows(origin) ? origin : nil
    }

    /// Adds the headers of an answer to a request that may come from another origin.
    func addHeaders(to fields: inout HTTPFields, origin: String?) {
        // The answer depends on the request's Origin whenever origins are listed: caches must
        // keep one per origin, or one kept for a refused origin would be served to an allowed one.
        if !anyOrigin { fields[.vary] = "Origin" }
        guard let allowed = allowedOrigin(origin) else { return }
        fields[.accessControlAllowOrigin] = allowed
    }

    /// The headers a preflight is answered with (the CORS ones only for an allowed origin).
    func addPreflightHeaders(to fields: inout HTTPFields, origin: String?, methods: [HTTPRequest.Method]) {
        addHeaders(to: &fields, origin: origin)
        guard allowedOrigin(origin) != nil else { return }
        fields[.accessControlAllowMethods] = methods.map(\.rawValue).joined(separator: ", ")
        fields[.accessControlAllowHeaders] = "Authorization, Content-Type"
        fields[.accessControlMaxAge] = "600"
    }
}

/// In front of every route (and of ``JSONErrorMiddleware``): answers `OPTIONS` (with CORS
/// preflight headers for an allowed origin on `/api`), turns a 404 for a known route into
/// `405` with `Allow`, and adds CORS headers to `/api` answers for allowed origins, errors
/// included (or the page could not read why it failed).
struct HTTPConventionsMiddleware<Context: RequestContext>: RouterMiddleware {
    let cors: CORSPolicy?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        let origin = request.headers[.origin]
        let isAPI = path.hasPrefix("/api/")
        if request.method == .options {
            guard let methods = HTTPRoutes.methods(for: path) else {
                throw APIError(.notFound, code: .init(rawValue: "not_found"), message: "no such route: OPTIONS \(path)")
            }
            var fields: HTTPFields = [.allow: HTTPRoutes.allow(methods)]
            if isAPI { cors?.addPreflightHeaders(to: &fields, origin: origin, methods: methods) }
            return Response(status: .noContent, headers: fields)
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as APIError {
            response = try error.response(from: request, context: context)
        }
        // HEAD is GET without the body (RFC 9110); its routes are registered with GET's.
        if request.method == .head { response.body = .init() }
        if response.status == .notFound, let methods = HTTPRoutes.methods(for: path), !methods.contains(request.method),
            !(request.method == .head && methods.contains(.get))
        {
            let allowed = methods.map(\.rawValue).joined(separator: " or ")
            response = Response(
                status: .methodNotAllowed,
                headers: [.allow: HTTPRoutes.allow(methods), .contentType: "application/json"],
                body: .init(byteBuffer: JSONBody.errorBody(code: "method_not_allowed", message: "\(path) answers \(allowed), not \(request.method)"))
            )
        }
        if isAPI { cors?.addHeaders(to: &response.headers, origin: origin) }
        return response
    }
}
