import HTTPTypes
import HeraldWire
import Hummingbird
import NIOCore

/// An HTTP API failure, answered as `{"error":CODE,"message":TEXT}` with its status.
struct APIError: Error, HTTPResponseError {
    let status: HTTPResponse.Status
    let code: ErrorCode
    let message: String

    init(_ status: HTTPResponse.Status, code: ErrorCode, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// `{"error":CODE,"message":TEXT}`
    var body: ByteBuffer { JSONBody.errorBody(code: code.rawValue, message: message) }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
    }
}

/// Turns every other error (unknown route, wrong method, Hummingbird's own) into the same JSON shape.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let error as any HTTPResponseError {
            let code: String
            switch error.status {
            case .notFound: code = "not_found"
            case .unauthorized: code = "unauthorized"
            case .methodNotAllowed: code = "method_not_allowed"
            case .contentTooLarge: code = "bad_request"
            default: code = error.status.code < 500 ? "bad_request" : "internal_error"
            }
            let message = error.status == .notFound ? "no such route: \(request.method) \(request.uri.path)" : error.status.reasonPhrase
            return Response(
                status: error.status,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: JSONBody.errorBody(code: code, message: message))
            )
        }
    }
}

/// Requires `Authorization: Bearer KEY` on every API call when an API key is configured.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let apiKey: String?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let apiKey, !APIKey.matches(authorization: request.headers[.authorization], apiKey: apiKey) else {
            return try await next(request, context)
        }
        throw APIError(.unauthorized, code: ErrorCode(rawValue: "unauthorized"), message: "missing or wrong API key: send Authorization: Bearer <api key>")
    }
}

enum APIKey {
    /// Whether an `Authorization` header value is `Bearer KEY` with `apiKey`.
    static func matches(authorization: String?, apiKey: String) -> Bool {
        guard let authorization, authorization.lowercased().hasPrefix("bearer ") else { return false }
        return constantTimeEqual(Array(authorization.dropFirst("bearer ".count).utf8), Array(apiKey.utf8))
    }

    /// Compares without an early exit, so response time does not reveal how much of the key matched.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
