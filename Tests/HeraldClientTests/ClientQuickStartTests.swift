import Foundation
import HeraldTestSupport
import Testing

/// docs/clients.md's Swift quick start is real: the page shows exactly
/// `Examples/ClientQuickStart/main.swift`, which the package builds, and the built program talks
/// to a real `herald serve`.
@Suite struct ClientQuickStartTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theDocumentShowsTheExampleThatIsBuilt() throws {
        let document = try String(contentsOf: Self.repository.appendingPathComponent("docs/clients.md"), encoding: .utf8)
        let example = try String(contentsOf: Self.repository.appendingPathComponent("Examples/ClientQuickStart/main.swift"), encoding: .utf8)
        let start = try #require(document.range(of: "```swift\n"))
        let end = try #require(document.range(of: "```", range: start.upperBound..<document.endIndex))
        #expect(
            String(document[start.upperBound..<end.lowerBound]) == example, "docs/clients.md's first Swift block must be Examples/ClientQuickStart/main.swift")
    }

    @Test(.timeLimit(.minutes(1))) func theExampleJoinsPublishesHearsItselfAndStops() async throws {
        let server = try await HeraldNodeProcess(arguments: [])
        defer { server.stop() }
        let example = Process()
        example.executableURL = HeraldNodeProcess.product("HeraldClientExample")
        example.environment = ProcessInfo.processInfo.environment.merging(["HERALD_URL": "ws://127.0.0.1:\(server.port)/ws"]) { $1 }
        let output = Pipe()
        example.standardOutput = output
        try example.run()
        let finished = Task.detached { () -> (Int32, String) in
            let data = output.fileHandleForReading.readDataToEndOfFile()
            example.waitUntilExit()
            return (example.terminationStatus, String(decoding: data, as: UTF8.self))
        }
        let (status, text) = try await withThrowingTaskGroup(of: (Int32, String)?.self) { group in
            group.addTask { await finished.value }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                return nil
            }
            defer { group.cancelAll() }
            guard let result = try await group.next() ?? nil else {
                example.terminate()
                throw RedisTestFailure("the quick start did not finish within 30 s")
            }
            return result
        }
        #expect(status == 0, "\(text)")
        #expect(text.contains("alice: hello"), "\(text)")
        #expect(text.contains("online in lobby: [\"alice\"]"), "\(text)")
    }
}
