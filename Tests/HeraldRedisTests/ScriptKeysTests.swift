import HeraldRedisClient
import Testing

@testable import HeraldRedis

/// Every key a script touches is one it was passed in KEYS: Redis Cluster routes a script by
/// its declared keys, and a key a script builds itself (a prefix and a name from ARGV, or a
/// suffix on a declared key) is one the cluster never checked. Read from the scripts' Lua,
/// without Redis; the conformance suites run them on a real cluster, where keys of two slots
/// are refused.
@Suite("Redis scripts: every key declared")
struct ScriptKeysTests {
    static let scripts: [(name: String, script: RedisScript)] = [
        ("publish", RedisBroker.publishScript), ("sharded publish", RedisBroker.shardedPublishScript),
        ("broadcast once", RedisBroker.broadcastOnceScript), ("position", RedisBroker.positionScript),
        ("history", RedisBroker.historyScript), ("claim server", RedisBroker.claimServerScript),
        ("join", RedisRoster.joinScript), ("leave", RedisRoster.leaveScript), ("presence", RedisRoster.presenceScript),
        ("presence changes", RedisRoster.presenceChangesScript), ("goodbye", RedisRoster.goodbyeScript),
        ("rooms of", RedisRoster.roomsOfScript), ("heartbeat", RedisRoster.heartbeatScript), ("totals", RedisRoster.totalsScript),
        ("restore", RedisRoster.restoreScript), ("rewrite", RedisRoster.rewriteScript), ("info", RedisRoster.infoScript),
        ("count", RedisRoster.countScript), ("unacknowledged", RedisAcknowledgementStore.unacknowledgedOfUsersScript),
        ("acknowledge", RedisAcknowledgementStore.acknowledgeScript), ("ingest trim", IngestConsumer.trimScript),
        ("revoke", RedisTokenDenylist.revokeScript),
    ]

    /// Commands with no key. `PUBLISH` channels are not keys either: Redis Cluster sends them to
    /// every node, whatever their slot (sharded channels, `SPUBLISH`, are, and are checked).
    static let keyless: Set<String> = ["TIME", "PUBLISH"]

    /// (command, the text of its first argument) for each `redis.call` and `pcall(redis.call, …)`
    /// in `source`; for `XINFO`, whose first argument is a subcommand, the second.
    static func calls(in source: String) throws -> [(command: String, key: String)] {
        let direct = try Regex(#"redis\.call\('([A-Z]+)'(?:,\s*([^,)]+))?"#)
        let protected = try Regex(#"pcall\(redis\.call,\s*'([A-Z]+)'((?:,\s*[^,)]+)*)\)"#)
        var found: [(String, String)] = []
        for match in source.matches(of: direct) {
            let command = match.output[1].substring.map(String.init) ?? ""
            let key = match.output[2].substring.map(String.init) ?? ""
            found.append((command, key.trimmingPrefixSpaces()))
        }
        for match in source.matches(of: protected) {
            let command = match.output[1].substring.map(String.init) ?? ""
            let arguments = (match.output[2].substring.map(String.init) ?? "").split(separator: ",").map { String($0).trimmingPrefixSpaces() }
            let key = command == "XINFO" ? (arguments.count > 1 ? arguments[1] : "") : (arguments.first ?? "")
            found.append((command, key))
        }
        return found
    }

    @Test(arguments: scripts.map(\.name))
    func everyKeyTheScriptTouchesWasPassedInKEYS(_ name: String) throws {
        let script = try #require(Self.scripts.first { $0.name == name }?.script)
        let calls = try Self.calls(in: script.source)
        #expect(!calls.isEmpty, "no Redis call found in the \(name) script: the check read nothing")
        for call in calls where !Self.keyless.contains(call.command) {
            // KEYS[n] whole: not KEYS[n] .. 'suffix', nor a prefix from ARGV with a name.
            let declared = call.key.hasPrefix("KEYS[") && call.key.hasSuffix("]") && !call.key.contains("..")
            #expect(declared, "the \(name) script calls \(call.command) on \(call.key), not a key it was passed")
        }
    }

    /// The check finds what it must refuse, so that a pass means something.
    @Test func aKeyBuiltInsideAScriptIsFound() throws {
        let built = try Self.calls(in: "redis.call('SMEMBERS', ARGV[2] .. user) redis.call('SET', KEYS[2] .. ':all', 1)")
        #expect(built.map(\.key) == ["ARGV[2] .. user", "KEYS[2] .. ':all'"])
        let protected = try Self.calls(in: "local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])")
        #expect(protected.map(\.command) == ["XINFO"] && protected.map(\.key) == ["KEYS[1]"])
    }
}

extension String {
    fileprivate func trimmingPrefixSpaces() -> String {
        String(drop { $0 == " " || $0 == "\n" })
    }
}
