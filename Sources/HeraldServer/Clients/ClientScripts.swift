import Crypto
import HTTPTypes
import Hummingbird
import NIOCore

/// The official JavaScript client, served as static files: `GET /herald.js` (an ES module) and
/// `GET /herald.d.ts` (its TypeScript declarations). Both live in this folder, embedded in the
/// binary at build time, so the server always hands out the client of its own version;
/// `clients/js/` holds symbolic links to them (SwiftPM notices changes only of files inside the
/// target; edit through the links with tools that follow them: `sed -i` replaces a link with a
/// copy, which `ClientSupportTests` then reports as a difference).
///
/// Module scripts are fetched in CORS mode, so the files carry `Access-Control-Allow-Origin: *`
/// (they are public and need no credentials) for pages served from another origin. A strong
/// `ETag` (a digest of the content) with a short `max-age` lets browsers revalidate cheaply
/// after an upgrade rather than run an old client against a new server for long.
struct ClientScript: Sendable {
    let body: ByteBuffer
    let contentType: String
    let entityTag: String

    init(bytes: [UInt8], contentType: String) {
        self.body = ByteBuffer(bytes: bytes)
        self.contentType = contentType
        let hex = Array("0123456789abcdef".utf8)
        var tag: [UInt8] = [UInt8(ascii: "\"")]
        for byte in SHA256.hash(data: bytes).prefix(12) {
            tag.append(hex[Int(byte >> 4)])
            tag.append(hex[Int(byte & 0x0f)])
        }
        tag.append(UInt8(ascii: "\""))
        self.entityTag = String(decoding: tag, as: UTF8.self)
    }

    static let javaScript = ClientScript(bytes: PackageResources.herald_js, contentType: "text/javascript; charset=utf-8")
    static let typeScriptDeclarations = ClientScript(bytes: PackageResources.herald_d_ts, contentType: "application/typescript; charset=utf-8")
    /// The HTTP API's contract (`GET /api/openapi.yaml`; docs/openapi.yaml links to the file).
    static let openAPI = ClientScript(bytes: PackageResources.openapi_yaml, contentType: "application/yaml; charset=utf-8")

    /// `200` with the file, or `304` when the request's `If-None-Match` names the current tag.
    func response(to request: Request) -> Response {
        var headers: HTTPFields = [
            .contentType: contentType,
            .cacheControl: "public, max-age=300",
            .eTag: entityTag,
            .accessControlAllowOrigin: "*",
            .init("X-Content-Type-Options")!: "nosniff",
        ]
        if let tags = request.headers[.ifNoneMatch], Self.matches(tags, entityTag) {
            headers[.contentType] = nil
            return Response(status: .notModified, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: body))
    }

    /// `If-None-Match: "a", W/"b"` or `*` (RFC 9110, 13.1.2: weak comparison).
    static func matches(_ header: String, _ tag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            var candidate = candidate.trimmingWhitespace()
            if candidate == "*" { return true }
            if candidate.hasPrefix("W/") { candidate = candidate.dropFirst(2) }
            return candidate == tag[...]
        }
    }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result = result.dropFirst() }
        while let last = result.last, last == " " || last == "\t" { result = result.dropLast() }
        return result
    }
}
