import Foundation
import Herald
import HeraldRedisClient
import HeraldServer
import HeraldTestSupport
import Testing

/// `POST /api/publish` and the ingest queue's batch entries: one status per command, in order;
/// a malformed command reported and the others delivered; idempotency keys per command.
@Suite("Batch publishing", .serialized)
struct BatchPublishTests {
    @Test func aBatchAnswersEachCommandInOrderAndDeliversTheValidOnes() async throws {
        try await TestServer.with { server in
            let watcher = try await TestClient.connect(port: server.port, query: "user=watcher")
            _ = try await watcher.next(type: "welcome")
            let ada = try await TestClient.connect(port: server.port, query: "user=ada")
            _ = try await ada.next(type: "welcome")
            #expect(try await server.http("PUT", "/api/rooms/b/members/watcher").status == 200)
            let batch = """
                {"commands":[{"room":"b","data":1,"id":"k1"},{"user":"ada","data":2,"ack":true},{"all":true,"data":3},
                {"room":"b","data":"bad","ack":true},{"room":"b","user":"ada","data":0},{"room":"b\\u0000","data":0},7,
                {"room":"b","data":4}]}
                """
            let response = try await server.http("POST", "/api/publish", body: batch)
            #expect(response.status == 200)
            let results = try #require(try json(response.body)["results"] as? [[String: Any]])
            #expect(results.map { $0["status"] as? Int } == [202, 202, 202, 400, 400, 400, 400, 202])
            #expect(
                results[3]["message"] as? String == #"command 3: "ack" is for messages to a user (POST /api/users/{user}/send, or {"user":U,…} in a batch)"#)
            #expect(results[4]["message"] as? String == #"command 4: a command needs exactly one target: "room", "user" or "all":true"#)
            #expect((results[5]["message"] as? String)?.hasPrefix("command 5: field \"room\" must not contain control characters") == true)
            #expect(results[6]["error"] as? String == "bad_request")
            // In order, each once; nothing of the refused commands.
            #expect(try await watcher.nextJSON()["data"] as? Int == 1)
            #expect(try await watcher.nextJSON()["data"] as? Int == 3)
            #expect(try await watcher.nextJSON()["data"] as? Int == 4)
            let toAda = try await ada.nextJSON()
            #expect(toAda["data"] as? Int == 2 && toAda["ack"] as? Bool == true)
            #expect(try await ada.nextJSON()["data"] as? Int == 3)
            // The same idempotency key again: accepted, not delivered twice.
            let again = try await server.http("POST", "/api/publish", body: #"{"commands":[{"room":"b","data":1,"id":"k1"},{"room":"b","data":5}]}"#)
            #expect((try json(again.body)["results"] as? [[String: Any]])?.map { $0["status"] as? Int } == [202, 202])
            #expect(try await watcher.nextJSON()["data"] as? Int == 5, "the repeated key was not delivered again")
            // Not a batch at all: the request is refused whole.
            for body in [
                "[]", "{}", #"{"commands":{}}"#, #"{"commands":[]}"#, "{\"commands\":[" + Array(repeating: "1", count: 1001).joined(separator: ",") + "]}",
            ] {
                let refused = try await server.http("POST", "/api/publish", body: body)
                #expect(refused.status == 400, "\(body.prefix(40))")
                #expect(try json(refused.body)["error"] as? String == "bad_request")
            }
            #expect(try await server.http("GET", "/api/publish").status == 405)
            await watcher.close()
            await ada.close()
        }
    }

    @Test func aBatchOnRedisKeepsOrderAndOffsetsAndTheIngestQueueTakesBatches() async throws {
        let cluster = try await ClusterTests.Cluster.start(nodes: 2)
        defer { cluster.stop() }
        let alice = try await cluster.client("alice", on: 1)
        #expect(try await cluster.http(0, "PUT", "/api/rooms/R/members/alice").status == 200)
        // 300 commands to one room, published from the other node in one pipelined write.
        let commands = (1...300).map { #"{"room":"R","data":\#($0)}"# }.joined(separator: ",")
        let response = try await cluster.http(0, "POST", "/api/publish", body: #"{"commands":[\#(commands)]}"#)
        let results = try #require(try json(response.body)["results"] as? [[String: Any]])
        #expect(results.count == 300 && results.allSatisfy { $0["status"] as? Int == 202 })
        let received = try await messages(alice, count: 300)
        #expect(received.map { $0.data as? Int } == Array(1...300), "in the order of the batch")
        #expect(misplaced(received.map(\.offset), 1...300) == nil, "contiguous offsets")

        // The ingest queue: a batch entry is published whole, in order.
        let redis = try await RedisConnection.connect(to: RedisURL(port: cluster.redis.port))
        try await redis.send(
            RESPCommand("XADD", "herald:ingest", "*", "commands", #"[{"room":"R","data":"i1"},{"user":"alice","data":"i2"},{"all":true,"data":"i3"}]"#))
        #expect(try await alice.nextJSON(timeout: 10)["data"] as? String == "i1")
        #expect(try await alice.nextJSON()["data"] as? String == "i2")
        #expect(try await alice.nextJSON()["data"] as? String == "i3")
        // One malformed command: the entry is moved aside whole, nothing of it delivered.
        try await redis.send(RESPCommand("XADD", "herald:ingest", "*", "commands", #"[{"room":"R","data":"never"},{"room":"R"}]"#))
        try await eventually("the bad batch moved to the dead letters") {
            try await redis.send(RESPCommand("XLEN", "herald:ingest:dead")) == .integer(1)
        }
        try await cluster.expectNothingElse(from: 0, [alice], "after the refused batch entry")
        await redis.close()
        await alice.close()
    }
}
