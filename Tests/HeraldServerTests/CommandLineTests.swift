import Foundation
import HeraldRedisClient
import HeraldServer
import HeraldTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `herald` executable as a user meets it: range-checked options with errors that name
/// the option and point at the right help, exit codes, `--version`, and logs that never carry
/// a secret.
@Suite("Command line: options, exit codes and logs", .serialized)
struct CommandLineTests {
    @Test func numericOptionsAreRangeCheckedAndNamed() async throws {
        for (arguments, expected) in [
            (["serve", "--port", "70000"], "--port must be between 0 and 65535, not 70000"),
            (["serve", "--port", "65537"], "--port must be between 0 and 65535, not 65537"),
            (["serve", "--port", "-1"], "--port must be between 0 and 65535, not -1"),
            (["serve", "--port=-1"], "--port must be between 0 and 65535, not -1"),
            (["serve", "--max-connections", "-5"], "--max-connections must be between 1 and"),
            (["serve", "--heartbeat", "0"], "--heartbeat must be between 1 and 3600"),
            (["serve", "--history-size", "-1"], "--history-size must be between 0 and"),
            (["serve", "--rate-limit", "-2"], "--rate-limit -2: --rate-limit must be between"),
            (["serve", "--workers", "0"], "--workers must be between 1 and 256"),
            (["--port", "70000"], "--port must be between 0 and 65535"),  // serve is the default subcommand
            (["serve", "--log-level", "verbose"], "--log-level must be one of trace, debug, info, notice, warning, error, critical"),
            (["bench", "--connections", "-3"], "--connections must be between 1 and"),
            (["bench", "--server-pid", "-5"], "--server-pid must be between 1 and"),
            (["serve", "--jwt-secret", String(repeating: "s", count: 32)], "token keys are set but no API key"),
            (["serve", "--allowed-origins", "app.example.com"], "--allowed-origins: app.example.com must start with http:// or https://"),
            (["serve", "--allowed-origins", "https://a.com:99999"], "has a port that is not 1 to 65535"),
            (["serve", "--presence-window", "10"], "--presence-window must be between 50 and 60000"),
            (["serve", "--presence-events", "chat,a*b"], "--presence-events: a*b is not a room name or prefix* pattern"),
            (["serve", "--metrics", "9090"], "--metrics must be api, off or HOST:PORT (e.g. 127.0.0.1:9090), not 9090"),
            (["serve", "--metrics", ":9090"], "--metrics :9090: the host is missing"),
            (["serve", "--metrics", "127.0.0.1:70000"], "--metrics must be api, off or HOST:PORT"),
            (["serve", "--drain-delay", "301"], "--drain-delay 301: --drain-delay must be between 0.0 and 300.0"),
            (["serve", "--log-format", "xml"], "--log-format must be text or json, not xml"),
        ] {
            let run = try await runHerald(arguments)
            #expect(run.status == 64, "\(arguments): a usage error")
            #expect(run.output.contains(expected), "\(arguments): \(run.output)")
            let help = arguments.first == "bench" ? "herald bench --help" : "herald serve --help"
            #expect(run.output.contains(help), "\(arguments) points at \(help): \(run.output)")
        }
        let fromEnvironment = try await runHerald(["serve"], environment: ["HERALD_PORT": "70000"])
        #expect(fromEnvironment.status == 64)
        #expect(fromEnvironment.output.contains("HERALD_PORT=70000: --port must be an integer between 0 and 65535"))
    }

    @Test func aRedisPasswordIsNeverPrinted() async throws {
        for url in [
            "redis://:hunter2-secret@127.0.0.1:99999", "redis://app:hunter2-secret@127.0.0.1:\(try RedisServerProcess.freePort())",
            "http://app:hunter2-secret@x",
        ] {
            let run = try await runHerald(["serve", "--port", "0", "--redis", url])
            #expect(run.status != 0, "\(url)")
            #expect(!run.output.contains("hunter2-secret"), "\(run.output)")
        }
    }

    @Test func versionIsPrinted() async throws {
        let run = try await runHerald(["--version"])
        #expect(run.status == 0)
        #expect(run.output.contains("herald \(HeraldVersion.current)"))
    }

    @Test func anUnreachableRedisIsNotAUsageError() async throws {
        let port = try RedisServerProcess.freePort()  // nothing listens there
        let run = try await runHerald(["serve", "--port", "0", "--redis", "redis://127.0.0.1:\(port)"])
        #expect(run.status == 69, "EX_UNAVAILABLE: \(run.output)")
        #expect(run.output.contains("cannot use Redis at 127.0.0.1:\(port)"))
        #expect(!run.output.contains("Usage:"), "no usage for a command that was right")
        #expect(run.output.split(separator: "\n").count == 1, "one line: \(run.output)")

        // With workers, the group gives up after its restarts and exits with the workers' reason.
        let workers = try await runHerald([
            "serve", "--workers", "2", "--port", String(try RedisServerProcess.freePort()), "--redis", "redis://127.0.0.1:\(port)",
        ])
        #expect(workers.status == 69, "\(workers.output)")
        #expect(workers.output.contains("stopping all workers"))
    }

    @Test func tokensAreRefusedForBadInputAndExpireInWholeSeconds() async throws {
        let secret = String(repeating: "s", count: 32)
        let empty = try await runHerald(["token", "", "--jwt-secret", secret])
        #expect(empty.status == 64)
        #expect(empty.output.contains("must not be empty"))
        for ttl in ["--ttl=-5", "--ttl=0"] {
            let refused = try await runHerald(["token", "alice", ttl, "--jwt-secret", secret])
            #expect(refused.status == 64, "\(ttl)")
            #expect(refused.output.contains("--ttl must be between 1 and"), "\(ttl): \(refused.output)")
        }
        let badInfo = try await runHerald(["token", "alice", "--jwt-secret", secret, "--info", "name"])
        #expect(badInfo.status == 64 && badInfo.output.contains("--info name: expected KEY=VALUE"), "\(badInfo.output)")
        let minted = try await runHerald(["token", "alice", "--ttl", "60", "--jwt-secret", secret, "--info", "name=Ada = A."])
        #expect(minted.status == 0)
        let parts = minted.output.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".")
        #expect(parts.count == 3)
        var payload = String(parts[1]).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while payload.count % 4 != 0 { payload += "=" }
        let decoded = try #require(Data(base64Encoded: payload))
        let claims = try #require(try JSONSerialization.jsonObject(with: decoded) as? [String: Any])
        let exp = try #require(claims["exp"] as? NSNumber)
        #expect(exp.doubleValue == exp.doubleValue.rounded(), "exp is a NumericDate in whole seconds: \(exp)")
        #expect(abs(exp.doubleValue - Date().timeIntervalSince1970 - 60) < 5)
        #expect(claims["info"] as? [String: String] == ["name": "Ada = A."], "the first = splits KEY=VALUE")
    }

    @Test func benchHelpFitsEightyColumns() async throws {
        let run = try await runHerald(["bench", "--help"], environment: ["COLUMNS": "80"])
        #expect(run.status == 0)
        let long = run.output.split(separator: "\n").filter { $0.count > 80 }
        #expect(long.isEmpty, "lines over 80 columns: \(long)")
        // The scenario table keeps its shape: each continuation line is indented under its text.
        #expect(run.output.contains("\n           published round-robin"))
    }

    @Test func logsNameTheRemoteAddressAndNeverASecret() async throws {
        let secret = "jwt-secret-" + String(repeating: "x", count: 32)
        let apiKey = "api-key-never-logged-0123456789"
        let node = try await HeraldNodeProcess(arguments: ["--jwt-secret", secret, "--api-key", apiKey, "--log-level", "trace"])
        defer { node.stop() }
        let token = try await Authenticator.jwt(secret: secret).mint(HeraldClaims(sub: "alice", exp: Date().addingTimeInterval(60), rooms: ["lobby"]))
        let alice = try await TestClient.connect(port: node.port, query: "token=\(token)")
        _ = try await alice.next(type: "welcome")
        await alice.close()
        let forged = try await TestClient.connect(port: node.port, query: "token=\(token)tampered")
        #expect(try await forged.closed().code == 4001)
        _ = try await exchange(node.port, "GET", "/api/stats?token=\(token)", apiKey: apiKey)
        _ = try await exchange(node.port, "GET", "/api/stats", apiKey: apiKey + "-wrong")
        _ = try await exchange(node.port, "POST", "/api/broadcast", body: #"{"data":1}"#, apiKey: apiKey)
        #expect(node.stop(signal: SIGTERM) != nil, "stops on SIGTERM")
        let log = node.output
        #expect(log.contains("connection open"))
        #expect(log.contains("remote=127.0.0.1:"), "open and close lines name the peer: \(log)")
        for (name, value) in [("token", token), ("token signature", String(token.split(separator: ".")[2])), ("JWT secret", secret), ("API key", apiKey)] {
            #expect(!log.contains(value), "the \(name) appears in the log")
        }
    }

    @Test func aHealthyRedisBackedStartLogsNoIngestWarning() async throws {
        let redis = try await RedisServerProcess()
        defer { redis.stop() }
        let node = try await HeraldNodeProcess(arguments: ["--redis", redis.url, "--log-level", "info"])
        defer { node.stop() }
        // Once an event went through the ingest queue, its consumer is certainly up.
        let connection = try await RedisConnection.connect(to: RedisURL(port: redis.port))
        try await connection.send(RESPCommand("XADD", "herald:ingest", "*", "target", "room:lobby", "data", #""hello""#))
        try await eventually("the ingest queue delivered the event") {
            try await httpRequest(port: node.port, "GET", "/api/rooms/lobby/history").body.contains(#""hello""#)
        }
        await connection.close()
        #expect(!node.output.contains("ingest queue"), "no ingest warning on a healthy start: \(node.output)")
        #expect(!node.output.contains("not connected"), "\(node.output)")
    }
}

/// Runs the `herald` executable to completion (bounded: 20 s); its exit status and what it
/// printed on standard output and error.
func runHerald(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = HeraldNodeProcess.executable
    process.arguments = arguments
    var variables = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HERALD_") }
    variables.merge(environment) { $1 }
    process.environment = variables
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("herald-cli-\(UUID().uuidString).log")
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: output) }
    let handle = try FileHandle(forWritingTo: output)
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    let deadline = ContinuousClock.now + .seconds(20)
    while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        throw TestFailure("herald \(arguments) did not exit within 20 s")
    }
    try handle.close()
    return (process.terminationStatus, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
}
