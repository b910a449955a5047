import Foundation

/// A real Sentinel deployment for the tests: a master, one replica and three sentinels
/// (quorum 2), all `redis-server` processes on ephemeral loopback ports, without persistence.
/// A killed master is replaced by its replica within about 2–3 s (`down-after-milliseconds`
/// 1000). Stopped (SIGKILL, directories removed) by ``stop()``.
public final class RedisSentinelSetup: @unchecked Sendable {
    public static let masterName = "herald-master"
    public let master: RedisServerProcess
    public let replica: RedisServerProcess
    public let sentinels: [SentinelProcess]

    /// - Parameter readyForFailover: wait until the replica is in sync and the sentinels know
    ///   each other (a few seconds), as a failover needs; without, only until every process
    ///   accepts connections (the sentinels name the master from the start).
    public init(readyForFailover: Bool = true) async throws {
        master = try await RedisServerProcess()
        do {
            replica = try await RedisServerProcess(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        } catch {
            master.stop()
            throw error
        }
        var started: [SentinelProcess] = []
        do {
            for _ in 0..<3 { started.append(try await SentinelProcess(watching: master.port, name: Self.masterName)) }
        } catch {
            for sentinel in started { sentinel.stop() }
            replica.stop()
            master.stop()
            throw error
        }
        sentinels = started
        guard readyForFailover else { return }
        do {
            try await waitUntilSettled(master: master.port, replica: replica.port)
        } catch {
            stop()
            throw error
        }
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/herald-master`
    public var url: String {
        "redis+sentinel://" + sentinels.map { "127.0.0.1:\($0.port)" }.joined(separator: ",") + "/" + Self.masterName
    }

    /// The port of the server the sentinels name master now.
    public func masterPort() -> Int? {
        for sentinel in sentinels {
            let lines = redisCLI(port: sentinel.port, ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self.masterName]).split(separator: "\n")
            if lines.count == 2, let port = Int(lines[1]) { return port }
        }
        return nil
    }

    /// Waits (bounded) until the replica is in sync, and every sentinel knows the replica and the
    /// two other sentinels: before that, a killed master would not be failed over.
    public func waitUntilSettled(master: Int, replica: Int, within seconds: Double = 20) async throws {
        try await waitUntil("the replica on \(replica) is in sync with the master on \(master)", within: seconds) {
            redisCLI(port: replica, ["INFO", "replication"]).contains("master_link_status:up")
        }
        for sentinel in sentinels {
            try await waitUntil("sentinel \(sentinel.port) knows the replica and 2 other sentinels", within: seconds) {
                let fields = redisCLI(port: sentinel.port, ["SENTINEL", "MASTER", Self.masterName]).split(separator: "\n").map(String.init)
                func value(_ name: String) -> String? { fields.firstIndex(of: name).flatMap { $0 + 1 < fields.count ? fields[$0 + 1] : nil } }
                return value("port") == String(master) && value("num-slaves") == "1" && value("num-other-sentinels") == "2"
                    && value("flags") == "master"
            }
        }
    }

    /// Kills the master (SIGKILL) and waits until the sentinels name the replica instead.
    /// - Returns: how long the failover took, as seen by the test.
    @discardableResult
    public func killMasterAndAwaitFailover(within seconds: Double = 30) async throws -> Duration {
        let started = ContinuousClock.now
        master.stop()
        try await waitUntil("the sentinels promote the replica on \(replica.port)", within: seconds) { masterPort() == replica.port }
        try await waitUntil("the replica on \(replica.port) answers ROLE master", within: seconds) {
            redisCLI(port: replica.port, ["ROLE"]).hasPrefix("master")
        }
        return ContinuousClock.now - started
    }

    public func stop() {
        for sentinel in sentinels { sentinel.stop() }
        replica.stop()
        master.stop()
    }
}

/// One `redis-server --sentinel` with its own configuration file (Sentinel rewrites it).
public final class SentinelProcess: @unchecked Sendable {
    public let port: Int
    public let process: Process
    public let directory: URL

    public init(watching masterPort: Int, name: String) async throws {
        guard let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: FileManager.default.isExecutableFile) else {
            throw RedisTestFailure("redis-server is not installed (scripts/test installs it: apt-get install redis-server)")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-sentinel-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        port = try RedisServerProcess.freePort()
        let configuration = directory.appendingPathComponent("sentinel.conf")
        try """
        port \(port)
        bind 127.0.0.1
        dir \(directory.path)
        sentinel monitor \(name) 127.0.0.1 \(masterPort) 2
        sentinel down-after-milliseconds \(name) 1000
        sentinel failover-timeout \(name) 5000
        sentinel parallel-syncs \(name) 1

        """.write(to: configuration, atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [configuration.path, "--sentinel"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let port = self.port
        do {
            try await waitUntil("sentinel on \(port) accepts connections") { RedisServerProcess.accepts(port: port) }
        } catch {
            stop()
            throw error
        }
    }

    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            for _ in 0..<500 where process.isRunning { usleep(10_000) }
        }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// `redis-cli -p PORT ARGS…`'s output (empty when it cannot run), for checking state in tests.
public func redisCLI(port: Int, _ arguments: [String]) -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
    process.arguments = ["-h", "127.0.0.1", "-p", String(port)] + arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return "" }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}
