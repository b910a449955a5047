import Foundation
import Herald
import HeraldServer
import Logging
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A Herald server started in-process on an ephemeral port, stopped by graceful shutdown.
struct TestServer: Sendable {
    let port: Int
    let node: HeraldNode
    let group: ServiceGroup
    let task: Task<Void, any Error>

    static let logger: Logger = {
        var logger = Logger(label: "herald.test")
        logger.logLevel = ProcessInfo.processInfo.environment["HERALD_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error
        return logger
    }()

    /// Starts a server, runs `body`, then shuts the server down (also when `body` throws).
    static func with(
        _ configure: (inout HeraldConfiguration) -> Void = { _ in },
        _ body: (TestServer) async throws -> Void
    ) async throws {
        let server = try await start(configure)
        do {
            try await body(server)
        } catch {
            try? await server.shutdown()
            throw error
        }
        try await server.shutdown()
    }

    static func start(_ configure: (inout HeraldConfiguration) -> Void = { _ in }) async throws -> TestServer {
        var configuration = HeraldConfiguration()
        configuration.port = 0
        configure(&configuration)
        let herald = try await HeraldServer(configuration: configuration, logger: logger)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let app = herald.makeService { port in
            continuation.yield(port)
            continuation.finish()
        }
        let group = ServiceGroup(services: [app], gracefulShutdownSignals: [], logger: logger)
        let task = Task { try await group.run() }
        let port = try await withTimeout(10, "server start") {
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw TestFailure("server did not start") }
            return port
        }
        return TestServer(port: port, node: herald.node, group: group, task: task)
    }

    func shutdown() async throws {
        await group.triggerGracefulShutdown()
        try await withTimeout(15, "server shutdown") { try await task.value }
    }

    var hub: Hub { node.hub }

    /// One HTTP request to the server's API; returns the status and the body text.
    func http(_ method: String, _ path: String, body: String? = nil, apiKey: String? = nil) async throws -> (status: Int, body: String) {
        try await httpRequest(port: port, method, path, body: body, apiKey: apiKey)
    }
}

/// One HTTP request to a Herald node on 127.0.0.1:`port`; returns the status and the body text.
func httpRequest(port: Int, _ method: String, _ path: String, body: String? = nil, apiKey: String? = nil, timeout: Double = 10) async throws -> (
    status: Int, body: String
) {
    var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
    request.httpMethod = method
    request.timeoutInterval = timeout
    if let body {
        request.httpBody = Data(body.utf8)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    }
    if let apiKey { request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization") }
    let (data, response) = try await URLSession.shared.data(for: request)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs `operation`, failing with a clear error after `seconds`. Every wait in these tests is
/// bounded. The deadline holds even when the operation ignores cancellation (a socket connect
/// does): the operation is cancelled and left behind instead of awaited.
func withTimeout<T: Sendable>(_ seconds: Double, _ what: String, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let race = TimeoutRace<T>()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        race.start(seconds: seconds, what: what, operation: operation, continuation: continuation)
    }
}

/// The operation and the timer of ``withTimeout(_:_:_:)``: whichever ends first resumes.
private final class TimeoutRace<T: Sendable>: Sendable {
    private let settled = Atomic<Bool>(false)
    private let work = Mutex<Task<Void, Never>?>(nil)

    func start(seconds: Double, what: String, operation: @escaping @Sendable () async throws -> T, continuation: CheckedContinuation<T, any Error>) {
        let timer = Task {
            try? await Task.sleep(for: .seconds(seconds))
            guard !Task.isCancelled, !self.settled.exchange(true, ordering: .relaxed) else { return }
            self.work.withLock { $0?.cancel() }
            continuation.resume(throwing: TestFailure("timed out after \(seconds) s waiting for \(what)"))
        }
        let task = Task {
            let result: Result<T, any Error>
            do { result = .success(try await operation()) } catch { result = .failure(error) }
            guard !self.settled.exchange(true, ordering: .relaxed) else { return }
            timer.cancel()
            continuation.resume(with: result)
        }
        work.withLock { $0 = task }
    }
}

/// Polls a condition that has no event to await (server-side state), bounded by `seconds`.
func eventually(_ what: String, within seconds: Double = 10, _ condition: @escaping @Sendable () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw TestFailure("condition never held within \(seconds) s: \(what)")
}

/// Parses a JSON object frame.
func json(_ text: String) throws -> [String: Any] {
    guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        throw TestFailure("not a JSON object: \(text)")
    }
    return object
}
