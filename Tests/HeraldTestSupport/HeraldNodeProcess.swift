import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A `herald serve` process (the executable built next to the test bundle) on a free port,
/// killed by `stop()`. Its output goes to a log file the failure message points at.
public final class HeraldNodeProcess: @unchecked Sendable {
    public let port: Int
    public let process: Process
    public let log: URL

    /// The `herald` executable built by `swift build --build-tests`, next to the test bundle.
    public static var executable: URL { product("herald") }

    /// An executable product of the package, built by `swift build --build-tests` next to the test bundle.
    public static func product(_ name: String) -> URL {
        var directory = Bundle.main.bundleURL
        while directory.pathComponents.count > 1 {
            let candidate = directory.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            directory.deleteLastPathComponent()
        }
        return URL(fileURLWithPath: ".build/debug/\(name)")
    }

    /// Starts `herald serve --port P ARGUMENTS` and waits (bounded) until it accepts connections
    /// (or, with `waitForPort: false`, returns at once: for a process expected to fail).
    /// `product` runs another executable of the package instead, with `arguments` as they are
    /// and `environment` added to the test's (its port in `PORT`).
    public init(port fixedPort: Int? = nil, arguments: [String], waitForPort: Bool = true, product: String? = nil) async throws {
        port = try fixedPort ?? RedisServerProcess.freePort()
        log = FileManager.default.temporaryDirectory.appendingPathComponent("herald-node-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process = Process()
        if let product {
            process.executableURL = Self.product(product)
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(["PORT": String(port)]) { $1 }
        } else {
            process.executableURL = Self.executable
            process.arguments = ["serve", "--host", "127.0.0.1", "--port", String(port)] + arguments
        }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        guard waitForPort else { return }
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if RedisServerProcess.accepts(port: port) { return }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        stop()
        throw RedisTestFailure("\(product ?? "herald serve") did not start on port \(port): \(output)")
    }

    public var pid: Int32 { process.processIdentifier }

    /// What the process printed so far.
    public var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// Sends `signal` and waits (bounded) for the process to exit; returns its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGKILL, within seconds: Double = 10) -> Int32? {
        reportIfItDied()
        if process.isRunning {
            reported = true
            kill(process.processIdentifier, signal)
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning, Date() < deadline { usleep(10_000) }
        }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// Waits (bounded) for the process to exit by itself; returns its status, `nil` if it did not.
    public func waitForExit(within seconds: Double) async throws -> Int32? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// A node that exited by itself before the test stopped it (a crash) prints its last words:
    /// the test that sees its connections refused then says why.
    private func reportIfItDied() {
        guard !process.isRunning, !reported else { return }
        reported = true
        let all = output.split(separator: "\n", omittingEmptySubsequences: false)
        // A crash's first lines say why; its backtrace then runs long.
        let start = all.firstIndex { $0.contains("Fatal error") || $0.contains("Crash") } ?? max(0, all.count - 40)
        let lines = all[start...].prefix(60).joined(separator: "\n")
        print("herald node on port \(port) exited by itself (status \(process.terminationStatus)); its last output:\n\(lines)")
    }
    private var reported = false

    deinit {
        reportIfItDied()
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: log)
    }
}
