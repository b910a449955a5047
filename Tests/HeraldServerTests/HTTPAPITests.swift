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
