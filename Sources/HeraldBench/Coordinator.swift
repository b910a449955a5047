import Foundation
import Histogram
import NIOCore
import NIOPosix
import Synchronization

/// Runs a scenario over several generator processes when one process may not open enough
/// sockets (RLIMIT_NOFILE, 20,000 here): each worker holds every K-th connection, the
/// coordinator publishes, and the workers' counts and latency histograms are merged.
///
/// Workers are this executable again (`herald bench --worker-configuration JSON`) and speak
/// a line protocol on stdin/stdout: they print `READY receivers failures seconds`, then
/// `COUNT n` every 200 ms after `GO`, and `RESULT base64-json` after `STOP`.
struct Coordinator: Sendable {
    let configuration: BenchConfiguration
    let processes: Int
    let log: @Sendable (String) -> Void

    func run() async throws -> BenchReport {
        let executable = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        var workers: [WorkerProcess] = []
        defer { for worker in workers where worker.process.isRunning { worker.process.terminate() } }
        let probe = ProcessProbe(pids: configuration.serverPIDs)
        let baseline = probe.sample()
        log("starting \(processes) generator processes (\(LoadGenerator.connectionsPerProcess) connections each at most)")
        let connectStart = ContinuousClock.now
        for index in 0..<processes {
            var slice = configuration
            slice.worker = WorkerSlice(index: index, count: processes)
            slice.progress = false
            workers.append(try WorkerProcess(index: index, executable: executable, configuration: slice))
        }
        var connected = 0
        var failures = 0
        var retries = 0
        var reasons: [String: Int] = [:]
        // Minting tokens and connecting are bounded by the connect timeout; a worker that says
        // nothing past it has stalled.
        let readyTimeout = configuration.connectTimeout + 120
        for worker in workers {
            let ready = try await worker.expect("READY", timeout: readyTimeout)
            let fields = ready.split(separator: " ").map(String.init)
            connected += Int(fields.first ?? "") ?? 0
            failures += fields.count > 1 ? Int(fields[1]) ?? 0 : 0
            retries += fields.count > 3 ? Int(fields[3]) ?? 0 : 0
            if fields.count > 4, let data = Data(base64Encoded: fields[4]), let part = try? JSONDecoder().decode([String: Int].self, from: data) {
                reasons.merge(part, uniquingKeysWith: +)
            }
        }
        let connectSeconds = (ContinuousClock.now - connectStart).seconds
        let connectedSample = probe.sample()
        log("\(processes) processes connected \(connected) of \(configuration.connections) in \(String(format: "%.2f", connectSeconds)) s")

        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        let publisher = Run(configuration: configuration, group: group, tls: try LoadGenerator.makeTLSContext(configuration), log: log)
        for worker in workers { worker.send("GO") }
        let before = probe.sample()
        let publishStart = ContinuousClock.now
        let stalledIndex = configuration.scenario == .slow ? 0 : nil
        let running = workers
        let expected: Int
        var sent = 0
        var storm: StormSummary?
        if configuration.scenario == .storm {
            let watcher = Task { [configuration, log] in
                await Run.killAndWatch(
                    configuration: configuration,
                    counts: {
                        running.reduce((0, 0, 0)) { sum, worker in
                            let storm = worker.stormCounts
                            return (sum.0 + storm.dropped, sum.1 + storm.reconnected, sum.2 + storm.abandoned)
                        }
                    }, log: log)
            }
            sent = try await publisher.publishThroughStorm(counters: publisher.stormCounters)
            storm = await watcher.value
            expected = publisher.publishStatistics.accepted.load(ordering: .relaxed)
            try await publisher.drain(until: expected) { running.reduce(0) { $0 + $1.lastCount } }
        } else {
            expected = try await publisher.publish(recipients: connected, stalledIndex: stalledIndex) {
                running.reduce(0) { $0 + $1.lastCount }
            }
        }
        try await group.shutdownGracefully()
        let elapsed = (ContinuousClock.now - publishStart).seconds
        let after = probe.sample()

        var merged = Run.Collected(histogram: LoopHistogram.make())
        for worker in workers {
            worker.send("STOP \(sent)")
            let line = try await worker.expect("RESULT", timeout: 120)
            guard let data = Data(base64Encoded: line) else { throw BenchError("a worker sent an unreadable result") }
            let part = try JSONDecoder().decode(Run.Collected.self, from: data)
            merged.totals.add(part.totals)
            merged.histogram.add(part.histogram)
            merged.stalledClosedByServer = merged.stalledClosedByServer ?? part.stalledClosedByServer
            merged.closeCodes.merge(part.closeCodes, uniquingKeysWith: +)
            merged.missing += part.missing
        }
        var report = BenchReport(configuration: configuration)
        report.processes = processes
        report.connectionsOK = connected
        report.connectionsFailed = failures
        report.connectSeconds = connectSeconds
        report.fillConnectCost(from: baseline, to: connectedSample)
        report.connectFailures = reasons
        report.connectRetries = retries
        report.fill(collected: merged, publishStatistics: publisher.publishStatistics, expected: expected, elapsed: elapsed, probes: (baseline, before, after))
        if var storm {
            let unconfirmed = publisher.stormCounters.unconfirmed.withLock { $0 }
            storm.publishesUnconfirmed = unconfirmed.count
            storm.lost = Run.lost(merged.missing, unconfirmed: unconfirmed)
            report.lost = storm.lost
            report.storm = storm
        }
        return report
    }
}

/// Lines read from a file handle on a thread of their own (reads block), for polling.
final class LineBuffer: Sendable {
    private let state = Mutex<(pending: [String], closed: Bool)>(([], false))
    /// Lines starting with `COUNT ` only update these, so a long run does not pile them up:
    /// deliveries, then (`storm`) clients dropped, back, given up.
    private let count = Atomic<Int>(0)
    private let dropped = Atomic<Int>(0)
    private let reconnected = Atomic<Int>(0)
    private let abandoned = Atomic<Int>(0)

    init(reading handle: FileHandle) {
        Thread.detachNewThread { [self] in
            var buffer = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...newline)
                    if line.hasPrefix("COUNT ") {
                        let fields = line.dropFirst(6).split(separator: " ").map { Int($0) ?? 0 }
                        count.store(fields.first ?? 0, ordering: .relaxed)
                        if fields.count == 4 {
                            dropped.store(fields[1], ordering: .relaxed)
                            reconnected.store(fields[2], ordering: .relaxed)
                            abandoned.store(fields[3], ordering: .relaxed)
                        }
                    } else {
                        state.withLock { $0.pending.append(line) }
                    }
                }
            }
            state.withLock { $0.closed = true }
        }
    }

    var lastCount: Int { count.load(ordering: .relaxed) }
    var stormCounts: (dropped: Int, reconnected: Int, abandoned: Int) {
        (dropped.load(ordering: .relaxed), reconnected.load(ordering: .relaxed), abandoned.load(ordering: .relaxed))
    }

    /// Waits for the next line starting with `keyword`; returns the rest of it, or `nil` at end of input.
    func expect(_ keyword: String, timeout seconds: Double) async throws -> String? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let (line, closed): (String?, Bool) = state.withLock { state in
                if let index = state.pending.firstIndex(where: { $0.hasPrefix(keyword) }) {
                    return (state.pending.remove(at: index), state.closed)
                }
                return (nil, state.closed)
            }
            if let line { return String(line.dropFirst(keyword.count)).trimmingCharacters(in: .whitespaces) }
            if closed { return nil }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BenchError("no \(keyword) line within \(Int(seconds)) s")
    }
}

/// One worker process and the lines it prints.
final class WorkerProcess: Sendable {
    let index: Int
    let process: Process
    private let input: FileHandle
    private let output: LineBuffer

    init(index: Int, executable: URL, configuration: BenchConfiguration) throws {
        self.index = index
        let process = Process()
        process.executableURL = executable
        let json = try JSONEncoder().encode(configuration)
        process.arguments = ["bench", "--worker-configuration", String(decoding: json, as: UTF8.self)]
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = FileHandle.standardError
        try process.run()
        self.process = process
        self.input = stdin.fileHandleForWriting
        self.output = LineBuffer(reading: stdout.fileHandleForReading)
    }

    /// The worker's latest delivery count.
    var lastCount: Int { output.lastCount }
    /// `storm`: the worker's clients dropped, back and given up, as last reported.
    var stormCounts: (dropped: Int, reconnected: Int, abandoned: Int) { output.stormCounts }

    func send(_ line: String) {
        try? input.write(contentsOf: Data((line + "\n").utf8))
    }

    /// Waits for the next line starting with `keyword`; returns the rest of it.
    func expect(_ keyword: String, timeout seconds: Double) async throws -> String {
        let name = "generator process \(index) (pid \(process.processIdentifier))"
        let line: String?
        do {
            line = try await output.expect(keyword, timeout: seconds)
        } catch {
            throw BenchError("\(name) stalled: no \(keyword) within \(Int(seconds)) s; the run is stopped")
        }
        guard let line else {
            // Its output closed: it exited (or closed stdout); give the exit status a moment.
            for _ in 0..<50 where process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
            let status =
                process.isRunning
                ? "closed its output" : "exited with status \(process.terminationStatus) (\(process.terminationReason == .uncaughtSignal ? "signal" : "exit"))"
            throw BenchError("\(name) \(status) before sending \(keyword); its stderr above says why")
        }
        return line
    }
}

extension Run {
    /// The worker side of ``Coordinator``: report ready, stream counts, hand over the results.
    func serveCoordinator(_ prepared: PreparedReceivers, worker: WorkerSlice) async throws {
        let commands = LineBuffer(reading: FileHandle.standardInput)
        let reasons = (try? JSONEncoder().encode(prepared.failureReasons))?.base64EncodedString() ?? ""
        Self.emit("READY \(prepared.receivers.count) \(prepared.failures) \(prepared.connectSeconds) \(prepared.retries) \(reasons)")
        guard try await commands.expect("GO", timeout: 3600) != nil else { return }
        let statistics = self.statistics
        let storm = stormCounters
        let reporter = Task {
            while !Task.isCancelled {
                Self.emit(
                    "COUNT \(statistics.deliveries.load(ordering: .relaxed)) \(storm.dropped.load(ordering: .relaxed)) "
                        + "\(storm.reconnected.load(ordering: .relaxed)) \(storm.abandoned.load(ordering: .relaxed))"
                )
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        // `STOP SENT` (or the coordinator went away: nil); SENT is the messages published.
        let stop = try await commands.expect("STOP", timeout: 3600)
        reporter.cancel()
        for (cause, count) in stormCounters.failures.withLock({ $0 }).sorted(by: { $0.value > $1.value }) {
            log("\(count) reconnect attempts failed: \(cause)")
        }
        var collected = try await collect(prepared)
        if configuration.scenario == .storm, let sent = stop.flatMap({ Int($0) }) {
            collected.missing = try await missingMessages(sent: sent)
        }
        Self.emit("RESULT " + (try JSONEncoder().encode(collected)).base64EncodedString())
        for receiver in configuration.scenario == .storm ? stormRegistry.all : prepared.receivers {
            receiver.channelLoop.execute { receiver.close() }
        }
    }

    static func emit(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
