import Foundation
import Herald
import HeraldServer
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("HTTP API")
struct HTTPAPITests {
    @Test func malformedBodiesAndUnknownRoutes() async throws {
        try await TestServer.with { server in
            for body in ["xx", "{}", "[1]", #"{"data":01}"#, #"{"data":"\u12"}"#, ""] {
                let response = try await server.http("POST", "/api/broadcast", body: body)
                #expect(response.status == 400, "body \(body)")
                #expect(try json(response.body)["error"] as? String == "bad_request")
            }
            let missing = try await server.http("POST", "/api/rooms/r/publish", body: "{}")
            #expect(try json(missing.body)["message"] as? String == "missing field \"data\"")
            let unknown = try await server.http("GET", "/api/nothing")
            #expect(unknown.status == 404)
            #expect(try json(unknown.body)["error"] as? String == "not_found")
            #expect(try await server.http("GET", "/healthz").status == 200)
            #expect(try await server.http("GET", "/").body.contains("<html"))
        }
    }

    /// Publishing calls are answered on the event loop, the others by the router: pipelined on
    /// one keep-alive connection, every request is answered once, in request order, and the
    /// messages arrive in the order they were published.
    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await TestServer.with({ $0.maxBodySize = 256 }) { server in
            let watcher = try await TestClient.connect(port: server.port, query: "user=watcher")
            _ = try await watcher.next(type: "welcome")
            _ = try await server.http("PUT", "/api/rooms/pipe/members/watcher")
            var requests: [String] = []
            var expected: [Int] = []
            for n in 0..<30 {
                switch n % 5 {
                case 0:
                    requests.append(rawRequest("GET", "/api/stats"))
                    expected.append(200)
                case 1:
                    requests.append(rawRequest("POST", "/api/broadcast", body: #"{"data":"x"#))
                    expected.append(400)
                case 2:
                    requests.append(rawRequest("PUT", "/api/rooms/other/members/u\(n)"))
                    expected.append(200)
                default:
                    requests.append(rawRequest("POST", "/api/rooms/pipe/publish", body: #"{"data":\#(n)}"#))
                    expected.append(202)
                }
            }
            // Over the body limit: refused without reading the body, and the connection closed
            // after the answer (a refused body is not drained); the requests before it are answered.
            let data = String(repeating: "x", count: 1_000)
            requests.append(rawRequest("POST", "/api/broadcast", body: #"{"data":"\#(data)"}"#))
            expected.append(413)
            let statuses = try await pipelined(port: server.port, requests)
            #expect(statuses == expected)
            var received: [Int] = []
            for _ in 0..<expected.filter({ $0 == 202 }).count {
                if let n = try await watcher.nextJSON()["data"] as? Int { received.append(n) }
            }
            #expect(received == (0..<30).filter { $0 % 5 >= 3 })
            await watcher.close()
        }
    }

    @Test func responsesCarryDateAndServerHeaders() async throws {
        try await TestServer.with { server in
            let (_, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(server.port)/healthz")!)
            let headers = try #require(response as? HTTPURLResponse)
            #expect(headers.value(forHTTPHeaderField: "Server") == "herald")
            let date = try #require(headers.value(forHTTPHeaderField: "Date"))
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
            let parsed = try #require(formatter.date(from: date), "not an IMF-fixdate: \(date)")
            #expect(abs(parsed.timeIntervalSinceNow) < 120)
        }
    }

    @Test func apiKeyIsRequiredWhenConfigured() async throws {
        try await TestServer.with({ $0.apiKey = "k3y" }) { server in
            let without = try await server.http("POST", "/api/broadcast", body: #"{"data":1}"#)
            #expect(without.status == 401)
            #expect(try json(without.body)["error"] as? String == "unauthorized")
            #expect(try await server.http("POST", "/api/broadcast", body: #"{"data":1}"#, apiKey: "wrong").status == 401)
            #expect(try await server.http("POST", "/api/broadcast", body: #"{"data":1}"#, apiKey: "k3y").status == 202)
            #expect(try await server.http("GET", "/api/stats", apiKey: "k3y").status == 200)
            #expect(try await server.http("GET", "/healthz").status == 200)  // health checks need no key
        }
    }

    @Test func namesInPathsArePercentDecodedAndValidated() async throws {
        try await TestServer.with { server in
            #expect(try await server.http("PUT", "/api/rooms/caf%C3%A9%20bar/members/al%2Fice").status == 200)
            let room = try json(try await server.http("GET", "/api/rooms/caf%C3%A9%20bar").body)
            #expect(room["room"] as? String == "café bar")
            #expect(room["members"] as? [String] == ["al/ice"])
            #expect(try await server.http("PUT", "/api/rooms/a%0Ab/members/x").status == 400)
            // Not valid percent-encoded UTF-8, a look-alike, another normal form, an invisible character.
            for path in [
                "/api/rooms/a%FFb/members/x", "/api/rooms/lobby/members/%E2%84%AAate", "/api/rooms/Cafe%CC%81/members/x", "/api/users/al%E2%80%8Bice/send",
            ] {
                let refused = try await server.http(path.hasSuffix("/send") ? "POST" : "PUT", path, body: path.hasSuffix("/send") ? #"{"data":1}"# : nil)
                #expect(refused.status == 400, "\(path)")
                #expect(try json(refused.body)["error"] as? String == "bad_request", "\(path)")
            }
        }
    }

    @Test func roomLimitIsAConflict() async throws {
        try await TestServer.with({ $0.hub.maxRoomsPerUser = 1 }) { server in
            #expect(try await server.http("PUT", "/api/rooms/r1/members/u").status == 200)
            let refused = try await server.http("PUT", "/api/rooms/r2/members/u")
            #expect(refused.status == 409)
            #expect(try json(refused.body)["error"] as? String == "limit_exceeded")
        }
    }
}

private func rawRequest(_ method: String, _ path: String, body: String? = nil) -> String {
    var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if let body {
        request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    } else {
        request += "Content-Length: 0\r\n\r\n"
    }
    return request
}

/// Sends `requests` back to back on one connection, then reads their responses; returns their
/// statuses. Blocking socket calls, on a thread of their own (not the tests' shared pool,
/// which the in-process server's router needs too), each bounded by a 10 s receive timeout.
func pipelined(port: Int, _ requests: [String]) async throws -> [Int] {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(with: Result { try pipelinedBlocking(port: port, requests) })
        }.start()
    }
}

private func pipelinedBlocking(port: Int, _ requests: [String]) throws -> [Int] {
    do {
        let fd = try connectLoopback(port: port, receiveTimeout: 10)
        defer { close(fd) }
        let bytes = Array(requests.joined().utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == bytes.count else { throw TestFailure("send failed") }
        var received: [UInt8] = []
        var statuses: [Int] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while statuses.count < requests.count {
            // Parse every complete response buffered so far (status line, headers, Content-Length body).
            while let headEnd = received.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: received[..<headEnd.lowerBound], as: UTF8.self)
                let length =
                    head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                guard received.count >= headEnd.upperBound + length else { break }
                statuses.append(Int(head.split(separator: " ")[1]) ?? 0)
                received.removeFirst(headEnd.upperBound + length)
            }
            if statuses.count == requests.count { break }
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { throw TestFailure("connection ended after \(statuses.count) responses") }
            received += chunk[..<count]
        }
        return statuses
    }
}
