import Foundation
import HeraldBench
import NIOCore
import NIOPosix
import Testing

@Suite("herald bench against a tiny in-process server")
struct LoadGeneratorTests {
    @Test func countsLossDuplicatesAndReordering() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await FaultyServer(group: group, faults: .init(drop: [3], duplicate: [5], swap: [7]))
        var configuration = BenchConfiguration()
        configuration.scenario = .rooms
        configuration.port = server.port
        configuration.connections = 4
        configuration.rooms = 1
        configuration.rate = 200
        configuration.duration = 0.5  // about 100 messages, and many chances to send them on a busy machine
        configuration.transport = .ws
        configuration.publishConnections = 1
        configuration.drainTimeout = 1
        configuration.progress = false
        let report = try await LoadGenerator(configuration: configuration).run()
        #expect(report.connectionsOK == 4)
        #expect(report.published >= 10)
        #expect(report.expectedDeliveries == report.published * 4)
        #expect(report.lost == 4)  // message 3, for each of the four connections
        #expect(report.deliveries.duplicates == 4)  // message 5 twice
        #expect(report.deliveries.reordered == 4)  // message 7 after 8
        #expect(report.deliveries.unique == report.expectedDeliveries - 4)
        #expect(!report.isClean)
        #expect(report.latency != nil)
        try await server.close()
        try await group.shutdownGracefully()
    }

    @Test func aSampledRunHasATimelineAndPlotsIt() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await FaultyServer(group: group, faults: .init(drop: [], duplicate: [], swap: []))
        var configuration = BenchConfiguration()
        configuration.scenario = .rooms
        configuration.port = server.port
        configuration.connections = 4
        configuration.rooms = 1
        configuration.rate = 200
        configuration.duration = 1
        configuration.transport = .ws
        configuration.publishConnections = 1
        configuration.drainTimeout = 1
        configuration.progress = false
        configuration.sampleInterval = 0.1
        let report = try await LoadGenerator(configuration: configuration).run()
        let timeline = try #require(report.timeline)
        // About ten points in the second; how many exactly depends on how busy the machine is.
        #expect(timeline.count >= 2, "a timeline, not one point")
        #expect(timeline.map(\.seconds) == timeline.map(\.seconds).sorted())
        #expect(timeline.contains { $0.deliveriesPerSecond > 0 && $0.p50 != nil })
        let svg = BenchPlot.svg(report, title: "rooms <test>")
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 4, "deliveries/s and three percentiles")
        #expect(svg.contains("rooms &lt;test&gt;"), "text is escaped")
        try await server.close()
        try await group.shutdownGracefully()
    }

    @Test func refusesNonLoopbackTargets() async throws {
        var configuration = BenchConfiguration()
        configuration.host = "10.1.2.3"
        await #expect(throws: BenchError.self) { try await LoadGenerator(configuration: configuration).run() }
        configuration.host = "127.0.0.1"
        configuration.connections = 1_000_000
        await #expect(throws: BenchError.self) { try await LoadGenerator(configuration: configuration).run() }
    }
}
