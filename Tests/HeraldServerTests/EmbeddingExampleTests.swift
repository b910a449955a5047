import Foundation
import HeraldTestSupport
import Testing

/// docs/embedding.md's example is real: the page shows exactly `Examples/Embedding/main.swift`,
/// which the package builds, and the built program serves clients and pushes into a room.
@Suite struct EmbeddingExampleTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theDocumentShowsTheExampleThatIsBuilt() throws {
        let document = try String(contentsOf: Self.repository.appendingPathComponent("docs/embedding.md"), encoding: .utf8)
        let example = try String(contentsOf: Self.repository.appendingPathComponent("Examples/Embedding/main.swift"), encoding: .utf8)
        let start = try #require(document.range(of: "```swift\n"))
        let end = try #require(document.range(of: "```", range: start.upperBound..<document.endIndex))
        #expect(String(document[start.upperBound..<end.lowerBound]) == example, "docs/embedding.md's first code block must be Examples/Embedding/main.swift")
        #expect(example.split(separator: "\n").count <= 30, "the example is meant to be read at a glance")
    }

    @Test(.timeLimit(.minutes(1))) func theExampleServesAClientAndPushesIntoARoom() async throws {
        let example = try await HeraldNodeProcess(arguments: [], product: "HeraldEmbeddingExample")
        defer { example.stop(signal: SIGTERM) }
        let client = try await TestClient.connect(port: example.port, query: "user=ada")
        defer { Task { await client.close() } }
        _ = try await client.next(type: "welcome")
        try await client.send(#"{"type":"join","room":"clock","id":1}"#)
        let tick = try await client.next(type: "message", timeout: 10)
        #expect(tick["room"] as? String == "clock")
        #expect((tick["data"] as? [String: Any])?["now"] is Double)
        #expect(example.stop(signal: SIGTERM) == 0, "the example stops cleanly on SIGTERM")
    }
}
