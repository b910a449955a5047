import Foundation
import HeraldTestSupport
import Synchronization
import Testing

@testable import HeraldClient

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

let secret = "0123456789abcdef0123456789abcdef0123456789abcdef"
let apiKey = "test-api-key"

/// `herald serve` on 127.0.0.1 (a free port unless given).
func startHerald(_ arguments: [String] = [], port: Int? = nil) async throws -> HeraldNodeProcess {
    try await HeraldNodeProcess(port: port, arguments: arguments)
}

func wsURL(_ node: HeraldNodeProcess) -> URL { URL(string: "ws://127.0.0.1:\(node.port)/ws")! }

/// Mints a token with `herald token`.
func mintToken(_ user: String, rooms: String = "", ttl: Int = 3600, jti: String? = nil, info: [String: String] = [:]) throws -> String {
    let process = Process()
    process.executableURL = HeraldNodeProcess.executable
    var arguments = ["token", user, "--jwt-secret", secret, "--ttl", String(ttl)]
    if !rooms.isEmpty { arguments += ["--rooms", rooms] }
    if let jti { arguments += ["--jti", jti] }
    for (key, value) in info.sorted(by: { $0.key < $1.key }) { arguments += ["--info", "\(key)=\(value)"] }
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw RedisTestFailure("herald token failed") }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// One call to a node's HTTP API; returns the status and the body.
@discardableResult
func api(_ node: HeraldNodeProcess, _ method: String, _ path: String, _ body: String? = nil, key: String? = nil) async throws -> (status: Int, body: String) {
    var request = URLRequest(url: URL(string: "http://127.0.0.1:\(node.port)\(path)")!)
    request.httpMethod = method
    request.timeoutInterval = 10
    if let body { request.httpBody = Data(body.utf8) }
    if let key { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
    let (data, response) = try await URLSession.shared.data(for: request)
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// Records a client's events and messages for the test to inspect and wait on.
final class Recorder: Sendable {
    private let recorded = Mutex<(events: [HeraldEvent], messages: [HeraldMessage])>(([], []))

    var events: [HeraldEvent] { recorded.withLock { $0.events } }

    func append(_ event: HeraldEvent) { recorded.withLock { $0.events.append(event) } }
    var messages: [HeraldMessage] { recorded.withLock { $0.messages } }

    /// Reads `client`'s streams until they finish (the client stopped) or the group is cancelled.
    func record(_ client: HeraldClient, in group: inout ThrowingTaskGroup<Void, any Error>) {
        let events = client.events
        let messages = client.messages
        group.addTask { for await event in events { self.recorded.withLock { $0.events.append(event) } } }
        group.addTask { for await message in messages { self.recorded.withLock { $0.messages.append(message) } } }
    }

    /// Waits (bounded) until `condition` holds for what was recorded.
    func wait(_ what: String, within seconds: Double = 10, _ condition: @escaping @Sendable (Recorder) -> Bool) async throws {
        try await waitUntil(what, within: seconds) { condition(self) }
    }

    var errors: [HeraldClientError] { events.compactMap { if case .error(let e) = $0 { e } else { nil } } }
    var recoveries: [RecoveryFailure] { events.compactMap { if case .recoveryFailed(let r) = $0 { r } else { nil } } }
    var refreshes: Int { events.filter { if case .tokenRefreshed = $0 { true } else { false } }.count }
    var retryDelays: [Duration] { events.compactMap { if case .disconnected(_, _, let delay) = $0 { delay } else { nil } } }
    var disconnects: Int { retryDelays.count }
    var welcomes: [Welcome] { events.compactMap { if case .connected(let w) = $0 { w } else { nil } } }
}

/// Runs `client` while `body` runs (both cancelled at the end), recording its streams.
func withRunningClient<T: Sendable>(
    _ client: HeraldClient, _ body: @escaping @Sendable (Recorder) async throws -> T
) async throws -> T {
    let recorder = Recorder()
    return try await withThrowingTaskGroup(of: Void.self) { group in
        recorder.record(client, in: &group)
        group.addTask { try await client.run() }
        defer { group.cancelAll() }
        return try await body(recorder)
    }
}

/// A simulated network outage for a client: while `offline`, connections go to a closed port.
final class Gate: Sendable {
    private let down = Mutex(false)
    var offline: Bool {
        get { down.withLock { $0 } }
        set { down.withLock { $0 = newValue } }
    }

    func hook(_ configuration: inout HeraldClient.Configuration) {
        configuration.connectURLHook = { url in self.offline ? "ws://127.0.0.1:9/ws" : url }
    }
}

struct Numbered: Codable, Sendable { let n: Int }

/// A value shared with escaping closures (a `Mutex` cannot be captured by one).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// The code of the ``HeraldClientError`` `body` throws; `"ok"` when it does not throw.
func errorCode(_ body: () async throws -> Void) async -> String {
    do {
        try await body()
        return "ok"
    } catch let error as HeraldClientError {
        return error.code
    } catch {
        return "\(error)"
    }
}
