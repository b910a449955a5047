import ArgumentParser
import Foundation
import HeraldBench

/// `herald bench`: a load generator for Herald and anything speaking protocol v1.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure a Herald server (or a baseline speaking protocol v1): deliveries, latency, CPU, memory.",
        discussion: """
            Scenarios (--scenario):
              rooms    N connections, one user each, over R rooms; messages
                       published round-robin to the rooms at --rate for
                       --duration seconds. Every delivery is checked: exactly
                       once, in order.
              all      N connections; a burst of --messages broadcasts.
              users    N connections as N/D users with --devices D each;
                       messages to users at --rate.
              idle     hold N connections for --duration seconds (heartbeats
                       on); with --server-pid, memory per connection.
              connect  connection storm: open N connections,
                       --connect-concurrency at a time; connections/s. With
                       --jwt-secret every connection presents a token.
              slow     rooms, but the first connection stops reading: whether
                       the server cuts it off, everyone else's latency and the
                       server's memory growth.
              storm    reconnect storm: N connections as N users, messages to
                       them at --rate for --duration; after --kill-after s the
                       server process --kill-pid is killed (SIGKILL). Its
                       clients reconnect with backoff and jitter through the
                       same port and resume from their offsets; reports how
                       long until all were back and whether any confirmed
                       message was lost.

            --server-pid PID (repeatable) reads the server's CPU seconds per
            delivery and its memory from /proc. Targets must be loopback
            (127.0.0.0/8, ::1). Every run is bounded: --duration (or
            --messages), then --drain-timeout. Connections use several source
            addresses (127.0.0.1, .2, ...) for more ephemeral ports.
            """
    )

    @Option(help: "rooms, all, users, idle, connect, slow or storm.")
    var scenario: String = "rooms"
    @Option(help: "Server host (loopback only).")
    var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: "Server port.")
    var port = 8080
    @Option(parsing: .unconditional, help: "Receiving connections.")
    var connections = 1000
    @Option(parsing: .unconditional, help: "Rooms (rooms, slow).")
    var rooms = 100
    @Option(parsing: .unconditional, help: "Connections per user (users).")
    var devices = 2
    @Option(parsing: .unconditional, help: "Messages per second offered (rooms, users, slow).")
    var rate: Double = 500
    @Option(parsing: .unconditional, help: "Seconds of publishing (rooms, users, slow) or holding (idle).")
    var duration: Double = 10
    @Option(parsing: .unconditional, help: "Messages in the burst (all).")
    var messages = 100
    @Option(name: .customLong("payload-size"), parsing: .unconditional, help: "Bytes of data per message.")
    var payloadSize = 64
    @Option(help: "Publish over http (keep-alive, pipelined) or ws.")
    var via = "http"
    @Option(name: .customLong("publish-connections"), parsing: .unconditional, help: "Connections used to publish.")
    var publishConnections = 2

    @Option(parsing: .unconditional, help: "Messages per POST /api/publish batch (http; rooms, users). 1: one request each.")
    var batch = 1
    @Option(name: .customLong("source-addresses"), parsing: .unconditional, help: "Loopback source addresses to spread connections over.")
    var sourceAddresses = 4
    @Option(name: .customLong("connect-concurrency"), parsing: .unconditional, help: "Connection attempts in flight at once.")
    var connectConcurrency = 500
    @Option(parsing: .unconditional, help: "Event-loop threads of the generator.")
    var threads = 1
    @Option(name: .customLong("server-pid"), parsing: .unconditionalSingleValue, help: "Server process to measure (repeatable).")
    var serverPID: [Int32] = []
    @Option(name: .customLong("jwt-secret"), help: "Connect with tokens signed with the server's secret.")
    var jwtSecret: String?
    @Option(
        name: .customLong("connect-timeout"), parsing: .unconditional,
        help: "Seconds every connection has to open, retries after the server's retry hints (503 Retry-After, close 1013) included.")
    var connectTimeout: Double = 300
    @Option(name: .customLong("drain-timeout"), parsing: .unconditional, help: "Seconds to wait for outstanding deliveries after publishing.")
    var drainTimeout: Double = 5
    @Option(parsing: .unconditional, help: "Generator processes; 0 uses as many as the open-file limit requires (about 19,700 connections each here).")
    var processes = 0
    @Option(
        name: .customLong("kill-pid"), parsing: .unconditional,
        help: "storm: the server process to kill with SIGKILL (one of the workers of herald serve --workers).")
    var killPID: Int32?
    @Option(name: .customLong("kill-after"), parsing: .unconditional, help: "storm: seconds into publishing when --kill-pid is killed.")
    var killAfter: Double = 5
    @Option(name: .customLong("worker-configuration"), help: .hidden)
    var workerConfiguration: String?
    @Flag(help: "Connect with TLS (wss://, https://) to a server started with --tls-cert/--tls-key; needs --tls-ca or --tls-insecure.")
    var tls = false
    @Option(name: .customLong("tls-ca"), help: "With --tls: PEM file of the CA (or self-signed certificate) to trust.")
    var tlsCA: String?
    @Flag(name: .customLong("tls-insecure"), help: "With --tls: accept any certificate, unverified.")
    var tlsInsecure = false
    @Option(help: "Write an SVG of deliveries/s and latency percentiles over the run to this file (one generator process).")
    var plot: String?
    @Option(name: .customLong("plot-title"), help: "The plot's title (default: the scenario and target).")
    var plotTitle: String?
    @Option(name: .customLong("sample-interval"), parsing: .unconditional, help: "With --plot: seconds per point (default 0.25).")
    var sampleInterval = 0.25
    @Flag(help: "Print the report as JSON (for scripts).")
    var json = false
    @Flag(name: .customLong("no-progress"), help: "No live progress line.")
    var noProgress = false
    @Flag(name: .customLong("allow-remote-target"), help: "Permit a target outside 127.0.0.0/8 and ::1.")
    var allowRemoteTarget = false

    func validate() throws {
        guard workerConfiguration == nil else { return }
        func check<T: Comparable>(_ value: T, _ option: String, _ range: ClosedRange<T>) throws {
            guard range.contains(value) else {
                throw ValidationError("--\(option) must be between \(range.lowerBound) and \(range.upperBound), not \(value)")
            }
        }
        try check(port, "port", 1...65535)
        try check(connections, "connections", 1...1_000_000)
        try check(rooms, "rooms", 1...1_000_000)
        try check(devices, "devices", 1...1000)
        try check(rate, "rate", 0.001...10_000_000)
        try check(duration, "duration", 0.001...86_400)
        try check(messages, "messages", 1...100_000_000)
        try check(payloadSize, "payload-size", 0...(16 << 20))
        try check(publishConnections, "publish-connections", 1...1000)
        try check(batch, "batch", 1...1000)
        try check(sourceAddresses, "source-addresses", 1...254)
        try check(connectConcurrency, "connect-concurrency", 1...100_000)
        try check(threads, "threads", 1...256)
        try check(drainTimeout, "drain-timeout", 0...3600)
        try check(connectTimeout, "connect-timeout", 1...3600)
        try check(killAfter, "kill-after", 0...86_400)
        try check(processes, "processes", 0...256)
        try check(sampleInterval, "sample-interval", 0.01...60)
        if plot != nil, processes > 1 {
            throw ValidationError("--plot samples one generator process: use --processes 1 (or leave it out for fewer than about 19,700 connections)")
        }
        for pid in serverPID { try check(pid, "server-pid", 1...Int32.max) }
        if tls {
            guard (tlsCA != nil) != tlsInsecure else {
                throw ValidationError("--tls needs exactly one of --tls-ca FILE (the CA to trust) or --tls-insecure (no verification)")
            }
        } else if tlsCA != nil || tlsInsecure {
            throw ValidationError("--tls-ca and --tls-insecure go with --tls")
        }
    }

    func run() async throws {
        if let workerConfiguration {
            // A generator process started by the coordinator; it speaks the worker line protocol.
            let configuration = try JSONDecoder().decode(BenchConfiguration.self, from: Data(workerConfiguration.utf8))
            _ = try await LoadGenerator(configuration: configuration).run { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            return
        }
        guard let scenario = BenchScenario(rawValue: scenario) else {
            throw ValidationError("unknown scenario \(scenario): use one of \(BenchScenario.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let transport = PublishTransport(rawValue: via) else { throw ValidationError("--via must be http or ws") }
        var configuration = BenchConfiguration()
        configuration.scenario = scenario
        configuration.host = host
        configuration.port = port
        configuration.connections = connections
        configuration.rooms = rooms
        configuration.devices = devices
        configuration.rate = rate
        configuration.duration = duration
        configuration.messages = messages
        configuration.payloadSize = payloadSize
        configuration.transport = transport
        configuration.publishConnections = publishConnections
        configuration.batch = batch
        configuration.sourceAddresses = sourceAddresses
        configuration.connectConcurrency = connectConcurrency
        configuration.threads = threads
        configuration.serverPIDs = serverPID
        configuration.jwtSecret = jwtSecret
        configuration.drainTimeout = drainTimeout
        configuration.connectTimeout = connectTimeout
        configuration.killPID = killPID
        configuration.killAfter = killAfter
        configuration.progress = !noProgress && !json
        configuration.allowRemoteTarget = allowRemoteTarget
        configuration.processes = plot == nil ? processes : 1
        if plot != nil { configuration.sampleInterval = sampleInterval }
        configuration.tls = tls
        configuration.tlsCAFile = tlsCA
        configuration.tlsInsecure = tlsInsecure
        let report: BenchReport
        do {
            report = try await LoadGenerator(configuration: configuration).run { line in
                if !json { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
        } catch let error as BenchError {
            throw ValidationError(error.description)
        }
        if let plot {
            do {
                try BenchPlot.svg(report, title: plotTitle).write(toFile: plot, atomically: true, encoding: .utf8)
            } catch {
                throw ValidationError("--plot \(plot): cannot write the SVG there: \(error.localizedDescription)")
            }
            if !json { FileHandle.standardError.write(Data("plot: \(plot) (\(report.timeline?.count ?? 0) points)\n".utf8)) }
        }
        print(json ? report.json() : report.table())
    }
}
