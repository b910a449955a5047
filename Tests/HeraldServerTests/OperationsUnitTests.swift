import Foundation
import Herald
import HeraldWire
import Logging
import NIOCore
import Synchronization
import Testing

@testable import HeraldServer

/// The parts of metrics and logs that need no socket (the end-to-end checks are in
/// Tests/Operations/operations_test.py, against real processes).
@Suite("Operations: metrics and logs without sockets")
struct OperationsUnitTests {
    @Test func aMessageFramesAcceptedTimeIsReadFromItsHeaderOnly() {
        let room = Envelope.message(to: .room("a,\"ts\":1"), from: "u", data: try! RawJSON(validating: #"{"ts":5}"#), acceptedAt: 1_700_000_000_123)
        #expect(ServerFrame.acceptedAt(ofMessage: room.frame) == 1_700_000_000_123)
        let all = Envelope.message(to: .all, from: nil, data: try! RawJSON(validating: "1"), acceptedAt: 42)
        #expect(ServerFrame.acceptedAt(ofMessage: all.frame) == 42)
        // No ts before "data": the data's own ts is not taken for it.
        let (withoutTS, _) = ServerFrame.messageParts(scope: .user, from: nil, data: try! RawJSON(validating: #"{"a":1,"ts":9}"#))
        #expect(ServerFrame.acceptedAt(ofMessage: withoutTS) == nil)
        #expect(ServerFrame.acceptedAt(ofMessage: ByteBuffer(string: #"{"type":"message","ts":"#)) == nil)
    }

    @Test func recordedLatencyReachesThePrometheusHistogram() async throws {
        let metrics = HeraldMetrics.prometheus()
        let envelope = Envelope.message(to: .all, from: nil, data: try! RawJSON(validating: "1"), acceptedAt: 1000)
        metrics.recordPublishLatency(ofMessage: envelope.frame, now: 1003)
        metrics.recordDisconnect(code: .slowConsumer)
        metrics.recordRecovery(.historyExpired)
        var bytes: [UInt8] = []
        metrics.exposition?.emit(into: &bytes)
        let text = String(decoding: NodeMetrics.addingHelp(to: bytes), as: UTF8.self)
        #expect(text.contains(#"herald_publish_latency_seconds_bucket{le="0.005"} 1"#))
        #expect(text.contains(#"herald_publish_latency_seconds_bucket{le="0.002"} 0"#))
        #expect(text.contains(#"herald_disconnects_total{code="1013"} 1"#))
        #expect(text.contains(#"herald_recoveries_total{result="history_expired"} 1"#))
        #expect(text.contains("# HELP herald_publish_latency_seconds Seconds from a message's acceptance"))
        // Every # TYPE line of ours is preceded by its # HELP line.
        let lines = text.split(separator: "\n")
        for (index, line) in lines.enumerated() where line.hasPrefix("# TYPE herald_") {
            #expect(lines[index - 1].hasPrefix("# HELP " + line.dropFirst(7).prefix { $0 != " " } + " "), "\(line)")
        }
    }

    @Test func everyCatalogMetricIsInTheOperationsGuide() throws {
        let guide = try String(
            contentsOfFile: #filePath.replacingOccurrences(of: "Tests/HeraldServerTests/OperationsUnitTests.swift", with: "docs/operations.md"), encoding: .utf8
        )
        for metric in HeraldMetrics.catalog {
            #expect(guide.contains("`\(metric.name)"), "\(metric.name) is missing from docs/operations.md")
        }
    }

    @Test func logTimestampsAreUTCWithMilliseconds() {
        #expect(JSONLogHandler.timestamp(millisecondsSince1970: 0) == "1970-01-01T00:00:00.000Z")
        #expect(JSONLogHandler.timestamp(millisecondsSince1970: 1_796_333_256_381) == "2026-12-03T21:27:36.381Z")
        #expect(JSONLogHandler.timestamp(millisecondsSince1970: 951_782_400_007) == "2000-02-29T00:00:00.007Z")
        #expect(JSONLogHandler.timestamp(millisecondsSince1970: 4_102_444_799_999) == "2099-12-31T23:59:59.999Z")
    }

    @Test func jsonLogLinesAreOneObjectEachWithCredentialsRedacted() throws {
        let lines = LineCollector()
        var logger = Logger(label: "herald") { label in
            var handler = JSONLogHandler(label: label) { lines.append($0) }
            handler.metadata = ["node": "n1"]
            return handler
        }
        logger.logLevel = .trace
        logger.info("connection open\nsecond \"line\" \u{1}", metadata: ["user": "ada", "connection": "n1-1", "nested": ["a": ["1", "2"]]])
        logger.debug("upgrade GET /ws?token=eyJhbGciOi.eyJzdWIi.c2ln&since=1", metadata: ["header": "Bearer sekrit-key"])
        let collected = lines.all
        #expect(collected.count == 2)
        for line in collected {
            #expect(line.hasSuffix("}\n") && line.dropLast().contains("\n") == false)
        }
        let first = try #require(JSONSerialization.jsonObject(with: Data(collected[0].utf8)) as? [String: Any])
        #expect(first["message"] as? String == "connection open\nsecond \"line\" \u{1}")
        #expect(first["level"] as? String == "info" && first["node"] as? String == "n1" && first["user"] as? String == "ada")
        #expect((first["nested"] as? [String: Any])?["a"] as? [String] == ["1", "2"])
        #expect((first["time"] as? String)?.hasSuffix("Z") == true)
        let second = try #require(JSONSerialization.jsonObject(with: Data(collected[1].utf8)) as? [String: Any])
        #expect(second["message"] as? String == "upgrade GET /ws?token=[redacted]&since=1")
        #expect(second["header"] as? String == "Bearer [redacted]")
        #expect(LogRedaction.redact("Authorization: BEARER sekrit") == "Authorization: BEARER [redacted]")
        #expect(LogRedaction.redact(#"{"token":"eyJa.b.c","user":"ada"}"#) == #"{"token":"[redacted]","user":"ada"}"#)
        #expect(LogRedaction.redact("?TOKEN=abc&x=1") == "?TOKEN=[redacted]&x=1")
        #expect(LogRedaction.redact("no credentials here") == "no credentials here")
    }
}

final class LineCollector: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

@Suite("The HTTP API's contract is the one served")
struct OpenAPIDocumentTests {
    @Test func theServedDocumentIsDocsOpenAPIYAML() throws {
        let path = #filePath.replacingOccurrences(of: "Tests/HeraldServerTests/OperationsUnitTests.swift", with: "docs/openapi.yaml")
        let file = try #require(FileManager.default.contents(atPath: path))
        #expect(Array(file) == PackageResources.openapi_yaml)
        let text = String(decoding: file, as: UTF8.self)
        #expect(text.contains("version: \(HeraldVersion.current)"), "docs/openapi.yaml's info.version is Herald's version")
        // Every route the server answers is in the contract.
        for route in HTTPRoutes.table {
            let path = "/" + route.pattern.map { $0 == "*" ? "{" : String($0) }.joined(separator: "/")
            if ["/", "/ws", "/herald.js", "/herald.d.ts"].contains(path) { continue }
            let prefix = path.components(separatedBy: "{").first!
            #expect(text.contains("  " + prefix), "\(path) is in docs/openapi.yaml")
        }
    }
}
