import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `herald serve --workers N`: N copies of this executable, each a full Herald node on the same
/// port (`SO_REUSEPORT`: the kernel spreads new connections over them), sharing Redis.
///
/// The supervisor forwards SIGTERM and SIGINT to every worker and exits once all have exited. A
/// worker that dies is started again after a second; one that dies five times within a minute
/// stops the whole group (something is wrong that restarting will not fix). With TLS it also
/// forwards SIGHUP (each worker reloads its certificate).
struct WorkerSupervisor {
    let count: Int
    /// The supervisor's own arguments; the workers get them without `--workers`.
    let arguments: [String]
    let baseNodeID: String?
    /// Forward SIGHUP to the workers (they serve TLS and reload their certificate on it).
    var forwardsHangup = false
    let logger: Logger

    func run() async throws {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let workerArguments = Self.removingWorkersOption(arguments) + ["--reuse-port"]
        var environment = ProcessInfo.processInfo.environment
        environment["HERALD_WORKERS"] = nil

        let state = SupervisorState()
        let signals = [SIGTERM, SIGINT].map { number -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                logger.notice("stopping \(count) workers")
                state.stop(signal: number)
            }
            source.resume()
            return source
        }
        var hangup: (any DispatchSourceSignal)?
        if forwardsHangup {
            signal(SIGHUP, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
            source.setEventHandler {
                logger.info("SIGHUP: forwarding to \(count) workers (TLS certificate reload)")
                state.forward(signal: SIGHUP)
            }
            source.resume()
            hangup = source
        }
        defer {
            signals.forEach { $0.cancel() }
            hangup?.cancel()
        }

        logger.info("starting \(count) workers", metadata: ["executable": "\(executable.path)"])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 1...count {
                var workerEnvironment = environment
                // Each worker is its own node in the cluster, with its own id.
                workerEnvironment["HERALD_NODE_ID"] = baseNodeID.map { "\($0)-w\(index)" }
                group.addTask {
                    try await supervise(index: index, executable: executable, arguments: workerArguments, environment: workerEnvironment, state: state)
                }
            }
            do {
                try await group.waitForAll()
            } catch {
                state.stop(signal: SIGTERM)
                try? await group.waitForAll()
                throw error
            }
        }
    }

    private func supervise(index: Int, executable: URL, arguments: [String], environment: [String: String], state: SupervisorState) async throws {
        var recentDeaths: [ContinuousClock.Instant] = []
        while !state.isStopping {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            process.environment = environment
            let (exits, exited) = AsyncStream<Int32>.makeStream()
            process.terminationHandler = {
                exited.yield($0.terminationStatus)
                exited.finish()
            }
            try process.run()
            state.add(process)
            var iterator = exits.makeAsyncIterator()
            let status = await iterator.next() ?? -1
            state.remove(process)
            if state.isStopping { return }
            if status == Serve.usageExitCode {
                // A usage error: every restart would fail the same way.
                throw WorkerFailure("worker \(index) refused its options (status 64); stopping all workers", status: status)
            }
            let now = ContinuousClock.now
            recentDeaths = recentDeaths.filter { now - $0 < .seconds(60) } + [now]
            logger.error("worker \(index) exited with status \(status); restarting it in 1 s")
            if recentDeaths.count >= 5 {
                throw WorkerFailure("worker \(index) died 5 times within a minute (last status \(status)); stopping all workers", status: status)
            }
            try await Task.sleep(for: .seconds(1))
        }
    }

    /// The arguments without `--workers N` / `--workers=N`, and without `--node-id` (each worker gets its own).
    static func removingWorkersOption(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var skipNext = false
        for argument in arguments {
            if skipNext {
                skipNext = false
                continue
            }
            if argument == "--workers" || argument == "--node-id" {
                skipNext = true
                continue
            }
            if argument.hasPrefix("--workers=") || argument.hasPrefix("--node-id=") { continue }
            result.append(argument)
        }
        return result
    }
}

/// The running workers, and whether the group is stopping.
final class SupervisorState: @unchecked Sendable {
    private let lock = NSLock()
    private var processes: [ObjectIdentifier: Process] = [:]
    private var stopping = false
    private var stopSignal: Int32 = SIGTERM

    var isStopping: Bool { lock.withLock { stopping } }

    func add(_ process: Process) {
        let stopNow = lock.withLock {
            processes[ObjectIdentifier(process)] = process
            return stopping
        }
        if stopNow { kill(process.processIdentifier, stopSignal) }
    }

    func remove(_ process: Process) {
        _ = lock.withLock { processes.removeValue(forKey: ObjectIdentifier(process)) }
    }

    /// Sends `signal` to every running worker, without stopping the group.
    func forward(signal: Int32) {
        let running = lock.withLock { Array(processes.values) }
        for process in running { kill(process.processIdentifier, signal) }
    }

    func stop(signal: Int32) {
        let running = lock.withLock {
            stopping = true
            stopSignal = signal
            return Array(processes.values)
        }
        for process in running { kill(process.processIdentifier, signal) }
    }
}

/// The worker group gave up; `status` is the last worker's exit status.
struct WorkerFailure: Error, CustomStringConvertible {
    let description: String
    let status: Int32
    init(_ description: String, status: Int32) {
        self.description = description
        self.status = status
    }
}
