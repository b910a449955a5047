import Foundation
import HeraldServer
import Testing

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What any HTTP client expects of a server: 426 on the WebSocket endpoint without an upgrade,
/// 405 with `Allow` for a known route and another method, `OPTIONS`, and CORS for the pages
/// of the allowed origins.
@Suite("HTTP conventions: 426, 405, OPTIONS and CORS")
struct HTTPConventionsTests {
    @Test func aPlainGetOnTheWebSocketEndpointIsUpgradeRequired() async throws {
        try await TestServer.with { server in
            let response = try await exchange(server.port, "GET", "/ws?user=alice")
            #expect(response.status == 426)
            #expect(response.header("Upgrade") == "websocket")
            #expect(response.header("Sec-WebSocket-Version") == "13")
            #expect(try json(response.body)["error"] as? String == "upgrade_required")
        }
    }

    /// An `Upgrade` header no upgrader takes is answered at once, as plain HTTP: NIO's upgrade
    /// handler would otherwise drop the request and leave the client waiting.
    @Test func refusedUpgradesAreAnsweredNotLeftHanging() async throws {
        try await TestServer.with { server in
            let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            func request(_ line: String, _ headers: String) -> String {
                "\(line)\r\nHost: 127.0.0.1\r\n\(headers)Content-Length: 0\r\n\r\n"
            }
            let cases: [(String, String, Int)] = [
                ("GET /healthz HTTP/1.1", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n", 200),
                ("GET /ws HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\n\(key)Sec-WebSocket-Version: 8\r\n", 426),
                ("GET /ws HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 426),
                ("POST /ws HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\n\(key)Sec-WebSocket-Version: 13\r\n", 405),
                ("GET /ws HTTP/1.0", "Upgrade: websocket\r\nConnection: Upgrade\r\n\(key)Sec-WebSocket-Version: 13\r\n", 426),
                ("GET /api/nothing HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\n\(key)Sec-WebSocket-Version: 13\r\n", 404),
            ]
            for (line, headers, status) in cases {
                let started = ContinuousClock.now
                #expect(try await pipelined(port: server.port, [request(line, headers)]) == [status], "\(line) \(headers)")
                #expect(ContinuousClock.now - started < .seconds(5), "answered at once: \(line)")
                // NIO's decoder parses nothing after an upgrade request: the connection closes
                // after the answer, so a client's next request goes on a new one, never waits.
                let (statuses, closed) = try await afterAnswer(port: server.port, request(line, headers) + request("GET /healthz HTTP/1.1", ""))
                #expect(statuses.first == status && closed, "\(line): \(statuses), closed \(closed)")
            }
            // HTTP/1.0 without keep-alive closes after the answer, on the publishing fast path too.
            for line in ["POST /api/broadcast HTTP/1.0", "GET /healthz HTTP/1.0"] {
                let body = line.hasPrefix("POST") ? #"{"data":1}"# : ""
                let raw = "\(line)\r\nHost: 127.0.0.1\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                let (statuses, closed) = try await afterAnswer(port: server.port, raw)
                #expect(statuses.count == 1 && closed, "\(line): \(statuses), closed \(closed)")
            }
            let (statuses, closed) = try await afterAnswer(
                port: server.port,
                "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\n{\"data\":1}"
            )
            #expect(statuses == [202] && closed, "Connection: close on the fast path: \(statuses), closed \(closed)")
            // A valid upgrade still upgrades.
            let client = try await TestClient.connect(port: server.port, query: "user=alice")
            _ = try await client.next(type: "welcome")
            await client.close()
        }
    }

    @Test func aKnownRouteWithAnotherMethodIsNotAllowed() async throws {
        try await TestServer.with { server in
            for (method, path, allow) in [
                ("GET", "/api/broadcast", "POST, OPTIONS"),
                ("DELETE", "/api/stats", "GET, HEAD, OPTIONS"),
                ("POST", "/healthz", "GET, HEAD, OPTIONS"),
                ("GET", "/api/rooms/lobby/members/alice", "PUT, DELETE, OPTIONS"),
                ("PUT", "/api/users/alice/send", "POST, OPTIONS"),
            ] {
                let response = try await exchange(server.port, method, path, body: method == "GET" || method == "DELETE" ? nil : "{}")
                #expect(response.status == 405, "\(method) \(path)")
                #expect(response.header("Allow") == allow, "\(method) \(path)")
                #expect(try json(response.body)["error"] as? String == "method_not_allowed")
            }
            // HEAD is GET without the body, wherever GET is served.
            let head = try await exchange(server.port, "HEAD", "/healthz")
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
            #expect(try await exchange(server.port, "HEAD", "/api/broadcast").status == 405)
            // An unknown route stays a 404.
            #expect(try await exchange(server.port, "GET", "/api/nothing").status == 404)
            #expect(try await exchange(server.port, "OPTIONS", "/api/nothing").status == 404)
        }
    }

    @Test func optionsWithoutAllowedOriginsAnswersAllowButNoCORS() async throws {
        try await TestServer.with { server in
            let response = try await exchange(
                server.port, "OPTIONS", "/api/broadcast",
                headers: ["Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"]
            )
            #expect(response.status == 204)
            #expect(response.header("Allow") == "POST, OPTIONS")
            #expect(response.header("Access-Control-Allow-Origin") == nil)
            let publish = try await exchange(server.port, "POST", "/api/broadcast", body: #"{"data":1}"#, headers: ["Origin": "https://app.example.com"])
            #expect(publish.status == 202)
            #expect(publish.header("Access-Control-Allow-Origin") == nil)
        }
    }

    @Test func allowedOriginsGetPreflightsAndCORSHeaders() async throws {
        try await TestServer.with({
            $0.allowedOrigins = ["https://app.example.com"]
            $0.apiKey = "k3y"
        }) { server in
            let allowed = ["Origin": "https://app.example.com"]
            // The preflight needs no API key (browsers never send credentials with it).
            let preflight = try await exchange(
                server.port, "OPTIONS", "/api/rooms/lobby/members/alice",
                headers: allowed.merging(["Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"]) { $1 }
            )
            #expect(preflight.status == 204)
            #expect(preflight.header("Access-Control-Allow-Origin") == "https://app.example.com")
            #expect(preflight.header("Access-Control-Allow-Methods") == "PUT, DELETE")
            #expect(preflight.header("Access-Control-Allow-Headers")?.contains("Authorization") == true)
            #expect(preflight.header("Vary") == "Origin")
            #expect(preflight.header("Access-Control-Max-Age") != nil)

            let other = try await exchange(
                server.port, "OPTIONS", "/api/broadcast",
                headers: ["Origin": "https://evil.example", "Access-Control-Request-Method": "POST"]
            )
            #expect(other.status == 204)
            #expect(other.header("Access-Control-Allow-Origin") == nil)

            // Answered on the event loop (publish), by the router (stats), and refused (401).
            let publish = try await exchange(server.port, "POST", "/api/rooms/lobby/publish", body: #"{"data":1}"#, headers: allowed, apiKey: "k3y")
            #expect(publish.status == 202)
            #expect(publish.header("Access-Control-Allow-Origin") == "https://app.example.com")
            let stats = try await exchange(server.port, "GET", "/api/stats", headers: allowed, apiKey: "k3y")
            #expect(stats.status == 200)
            #expect(stats.header("Access-Control-Allow-Origin") == "https://app.example.com")
            let refused = try await exchange(server.port, "GET", "/api/stats", headers: allowed)
            #expect(refused.status == 401)
            #expect(refused.header("Access-Control-Allow-Origin") == "https://app.example.com")
            let evil = try await exchange(server.port, "GET", "/api/stats", headers: ["Origin": "https://evil.example"], apiKey: "k3y")
            #expect(evil.status == 200)
            #expect(evil.header("Access-Control-Allow-Origin") == nil)
            // Every answer varies by Origin, refused ones too: a cache must not hand the answer
            // kept for one origin to another.
            #expect(evil.header("Vary") == "Origin")
            let evilPublish = try await exchange(
                server.port, "POST", "/api/broadcast", body: #"{"data":1}"#, headers: ["Origin": "https://evil.example"], apiKey: "k3y")
            #expect(evilPublish.header("Access-Control-Allow-Origin") == nil)
            #expect(evilPublish.header("Vary") == "Origin")
        }
    }

    @Test func originsAreComparedAsBrowsersSendThem() throws {
        #expect(try CORSPolicy.normalize("https://App.Example.com:443").get() == "https://app.example.com")
        #expect(try CORSPolicy.normalize("http://localhost:80").get() == "http://localhost")
        #expect(try CORSPolicy.normalize("http://localhost:3000").get() == "http://localhost:3000")
        #expect(try CORSPolicy.normalize("http://[::1]:8080").get() == "http://[::1]:8080")
        for bad in [
            "example.com", "https://a.com/", "https://a b.com", "https://a.com:99999", "https://a.com/path", "https://user@a.com", "ftp://a.com", "https://",
        ] {
            #expect(throws: CORSPolicy.OriginProblem.self, "\(bad)") { try CORSPolicy.normalize(bad).get() }
        }
        let policy = CORSPolicy(["https://app.example.com"])
        #expect(policy?.allowedOrigin("https://APP.example.com:443") == "https://APP.example.com:443")
        #expect(policy?.allowedOrigin("https://app.example.com.evil.example") == nil)
        #expect(policy?.allowedOrigin("http://app.example.com") == nil)
    }

    @Test func aWildcardAllowsEveryOrigin() async throws {
        try await TestServer.with({ $0.allowedOrigins = ["*"] }) { server in
            let publish = try await exchange(server.port, "POST", "/api/broadcast", body: #"{"data":1}"#, headers: ["Origin": "https://any.example"])
            #expect(publish.header("Access-Control-Allow-Origin") == "*")
            #expect(publish.header("Vary") == nil)
        }
    }
}

struct HTTPExchange {
    var status: Int
    var headers: [String: String]
    var body: String

    func header(_ name: String) -> String? {
        headers.first { $0.key.lowercased() == name.lowercased() }?.value
    }
}

/// One HTTP request with headers; the answer's status, headers and body.
func exchange(
    _ port: Int,
    _ method: String,
    _ path: String,
    body: String? = nil,
    headers: [String: String] = [:],
    apiKey: String? = nil
) async throws -> HTTPExchange {
    var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
    request.httpMethod = method
    request.timeoutInterval = 10
    if let body { request.httpBody = Data(body.utf8) }
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    if let apiKey { request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization") }
    let (data, response) = try await URLSession.shared.data(for: request)
    let http = try #require(response as? HTTPURLResponse)
    var fields: [String: String] = [:]
    for (name, value) in http.allHeaderFields {
        if let name = name as? String, let value = value as? String { fields[name] = value }
    }
    return HTTPExchange(status: http.statusCode, headers: fields, body: String(decoding: data, as: UTF8.self))
}

/// Sends `raw` on a new connection and reads until the server closes it (bounded: 5 s): the
/// statuses of the answers it got, and whether the server closed the connection.
func afterAnswer(port: Int, _ raw: String) async throws -> (statuses: [Int], closed: Bool) {
    try await RawWebSocket.run {
        let fd = try connectLoopback(port: port)
        defer { close(fd) }
        let bytes = Array(raw.utf8)
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var closed = false
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 {
                closed = true
                break
            }
            if count < 0 { break }  // timed out: still open
            received += chunk[..<count]
        }
        let text = String(decoding: received, as: UTF8.self)
        let statuses = text.components(separatedBy: "HTTP/1.").dropFirst().compactMap { Int($0.dropFirst(2).prefix(3)) }
        return (statuses, closed)
    }
}
