import Foundation
import NIOCore
import Synchronization

/// A real `redis-server` for the tests: ephemeral port, no persistence, its own temporary
/// directory; stopped (SIGKILL) by `stop()`.
public final class RedisServerProcess: @unchecked Sendable {
    public let port: Int
    public let process: Process
    public let directory: URL

    /// - Parameter port: a fixed port (to restart a server where clients expect it), or a free one.
    public init(port fixedPort: Int? = nil, arguments: [String] = []) async throws {
        guard let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: FileManager.default.isExecutableFile) else {
            throw RedisTestFailure("redis-server is not installed (scripts/test installs it: apt-get install redis-server)")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        port = try fixedPort ?? Self.freePort()
        process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory.path] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait (bounded) until it accepts connections.
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if Self.accepts(port: port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw RedisTestFailure("redis-server did not start on port \(port)")
    }

    /// The server's pid, for SIGSTOP / SIGCONT.
    public var pid: Int32 { process.processIdentifier }

    /// `redis://127.0.0.1:PORT`
    public var url: String { "redis://127.0.0.1:\(port)" }

    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            // Bounded wait for Foundation to reap it (waitUntilExit can stall in async tests).
            for _ in 0..<500 where process.isRunning { usleep(10_000) }
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// A free loopback port, never one handed out before in this test process: the tests run
    /// in parallel, and a port one test picked but has not bound yet could otherwise be picked
    /// by another (Herald binds with `SO_REUSEPORT`, so both servers would then share it).
    public static func freePort() throws -> Int {
        for _ in 0..<100 {
            let port = try unusedPort()
            if handedOut.withLock({ $0.insert(port).inserted }) { return port }
        }
        throw RedisTestFailure("no free port that was not handed out already")
    }

    private static let handedOut = Mutex<Set<Int>>([])

    private static func unusedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw RedisTestFailure("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    public static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

public struct RedisTestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
