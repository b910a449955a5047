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
        (["ws"], [.get]),
        (["api", "broadcast"], [.post]),
        (["api", "stats"], [.get]),
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

    /// The `Allow` header's value: the route's methods and `OPTIONS`.
    static func allow(_ methods: [HTTPRequest.Method]) -> String {
        (methods.map(\.rawValue) + ["OPTIONS"]).joined(separator: ", ")
    }
}

/// Which browser pages may call the API from another origin (`--allowed-origins`).
struct CORSPolicy: Sendable {
    /// Exact origins, or `*` for any.
    let origins: [String]

    /// The policy of a configuration, `nil` when it allows no other origin.
    init?(_ origins: [String]?) {
        guard let origins, !origins.isEmpty else { return nil }
        self.origins = origins
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, or `nil` when that
    /// origin is not allowed (no CORS header: the browser keeps the answer from the page).
    func allowedOrigin(_ origin: String?) -> String? {
        guard let origin else { return nil }
        if origins.contains("*") { return "*" }
        return origins.contains(origin) ? origin : nil
    }

    /// Adds the headers of an answer to a cross-origin request from an allowed origin.
    func addHeaders(to fields: inout HTTPFields, origin: String?) {
        guard let allowed = allowedOrigin(origin) else { return }
        fields[.accessControlAllowOrigin] = allowed
        // The answer depends on the request's Origin: caches must keep one per origin.
        if allowed != "*" { fields[.vary] = "Origin" }
    }

    /// The headers a preflight from an allowed origin is answered with.
    func addPreflightHeaders(to fields: inout HTTPFields, origin: String?, methods: [HTTPRequest.Method]) {
        guard allowedOrigin(origin) != nil else { return }
        addHeaders(to: &fields, origin: origin)
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
        if response.status == .notFound, let methods = HTTPRoutes.methods(for: path), !methods.contains(request.method) {
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
