public import NIOCore

/// Finding and following the master that Redis Sentinel watches, as Sentinel's client
/// guidelines ask: every connection asks the sentinels in turn where the master is, checks
/// with `ROLE` that the server named is a master, and is given up as soon as a sentinel
/// announces `+switch-master` for it (or a command is refused with `READONLY`), so that the
/// reconnect finds the new master.
///
/// Sentinels are asked without credentials, and their answers are input like any other: a
/// malformed or oversized address is refused and the next sentinel asked. They are trusted
/// to name the master (which is then sent the URL's credentials): run them on the private
/// network, as Redis itself.
public enum RedisSentinel {
    /// Asks the sentinels, in the order given, where `sentinel.masterName` is; the first that
    /// names it wins.
    /// - Returns: `url` pointing at the master (credentials and database kept, no Sentinel).
    /// - Throws: ``RedisError/transport(_:)`` saying what each sentinel answered, when none
    ///   named the master.
    public static func master(
        of url: RedisURL, through sentinel: RedisSentinelAddress, on group: any EventLoopGroup, connectTimeout: TimeAmount
    ) async throws(RedisError) -> RedisURL {
        var answers: [String] = []
        // From a random one on: a stale or overloaded first sentinel is not asked first by every
        // connection, every time.
        for server in sentinel.sentinels.rotatedRandomly() {
            let reply: RESPValue
            do {
                let connection = try await RedisConnection.connect(
                    to: RedisURL(host: server.host, port: server.port), on: group, connectTimeout: connectTimeout, commandTimeout: .seconds(2))
                do {
                    reply = try await connection.send(RESPCommand("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.masterName))
                } catch {
                    await connection.close()
                    throw error
                }
                await connection.close()
            } catch {
                answers.append("\(server.host):\(server.port): \(error)")
                continue
            }
            if let address = address(in: reply) { return url.server(host: address.host, port: address.port) }
            answers.append("\(server.host):\(server.port) answered \(reply.isNull ? "that it watches no master of that name" : "\(reply)")")
        }
        throw RedisError.transport(
            "no sentinel named the master \(sentinel.masterName) (\(answers.joined(separator: "; "))); check the sentinels' addresses and `sentinel monitor` name"
        )
    }

    /// `[host, port]` from `SENTINEL GET-MASTER-ADDR-BY-NAME`; `nil` for anything else.
    public static func address(in reply: RESPValue) -> RedisSentinelAddress.Server? {
        guard case .array(let parts?) = reply, parts.count == 2, let host = parts[0].string, let portText = parts[1].string,
            let port = Int(portText), (1...65535).contains(port), (1...255).contains(host.utf8.count),
            host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f })
        else { return nil }
        return RedisSentinelAddress.Server(host: host, port: port)
    }

    /// Connects to the master the sentinels name, and makes sure it is one: a sentinel that has
    /// not yet noticed a failover may name a server that is a replica now.
    static func connectToMaster(
        _ url: RedisURL,
        through sentinel: RedisSentinelAddress,
        on group: any EventLoopGroup,
        connectTimeout: TimeAmount,
        commandTimeout: TimeAmount?,
        onPush: @escaping @Sendable (RESPValue) -> Void
    ) async throws -> RedisConnection {
        let master = try await master(of: url, through: sentinel, on: group, connectTimeout: connectTimeout)
        return try await RedisConnection.connect(
            toMaster: master, on: group, connectTimeout: connectTimeout, commandTimeout: commandTimeout, onPush: onPush,
            namedBy: "Sentinel named \(master.host):\(master.port) the master \(sentinel.masterName)")
    }

    /// Returns once the sentinels say that the master moved away from where `connection` is
    /// (a `+switch-master` for it, or an answer naming another address); runs until cancelled
    /// otherwise. Keeps one subscription to one sentinel at a time, moving to the next when it
    /// is lost; each time it subscribes it also asks where the master is, so a switch announced
    /// while no sentinel was listened to is not missed.
    static func watch(_ connection: RedisConnection, through sentinel: RedisSentinelAddress, on group: any EventLoopGroup) async {
        let here = RedisSentinelAddress.Server(host: connection.url.host, port: connection.url.port)
        var backoff = Backoff(first: .milliseconds(100), cap: .seconds(2))
        var next = Int.random(in: 0..<max(1, sentinel.sentinels.count))
        while !Task.isCancelled, connection.isActive {
            let server = sentinel.sentinels[next % sentinel.sentinels.count]
            next += 1
            let (pushes, received) = AsyncStream.makeStream(of: RESPValue.self, bufferingPolicy: .bufferingNewest(16))
            var moved = false
            if let listener = try? await RedisConnection.connect(
                to: RedisURL(host: server.host, port: server.port), on: group, connectTimeout: .seconds(2), commandTimeout: .seconds(2),
                onPush: { received.yield($0) })
            {
                listener.closeFuture.whenComplete { _ in received.finish() }
                do {
                    try await listener.sendExpectingPushes(RESPCommand("SUBSCRIBE", "+switch-master"))
                    let reply = try await listener.send(RESPCommand("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.masterName))
                    if let named = address(in: reply), named != here {
                        moved = true
                    } else {
                        backoff.reset()
                        moved = await withTaskCancellationHandler {
                            await withTaskGroup(of: Bool.self) { tasks in
                                tasks.addTask {
                                    for await push in pushes where isSwitch(push, of: sentinel.masterName, awayFrom: here) { return true }
                                    return false
                                }
                                // A sentinel that went silent (no reset, no close) is noticed:
                                // every 10 s it is asked again, within the 2 s command timeout.
                                tasks.addTask {
                                    while !Task.isCancelled {
                                        try? await Task.sleep(for: .seconds(10))
                                        guard !Task.isCancelled else { return false }
                                        guard let reply = try? await listener.send(RESPCommand("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel.masterName))
                                        else { return false }
                                        if let named = address(in: reply), named != here { return true }
                                    }
                                    return false
                                }
                                let first = await tasks.next() ?? false
                                tasks.cancelAll()
                                received.finish()
                                return first
                            }
                        } onCancel: {
                            received.finish()
                        }
                    }
                } catch {}
                await listener.close()
            }
            if moved || Task.isCancelled { return }
            try? await Task.sleep(for: backoff.next())
        }
    }

    /// A `+switch-master` message: `NAME OLD-HOST OLD-PORT NEW-HOST NEW-PORT`.
    public static func isSwitch(_ push: RESPValue, of name: String, awayFrom here: RedisSentinelAddress.Server) -> Bool {
        guard case .push(let items) = push, items.count == 3, items[0].string == "message", items[1].string == "+switch-master",
            let text = items[2].string
        else { return false }
        let fields = text.split(separator: " ")
        guard fields.count == 5, fields[0] == name else { return false }
        return fields[3] != here.host || Int(fields[4]) != here.port
    }
}

extension Array {
    /// The same elements, starting from a random one (for spreading load over equal servers).
    func rotatedRandomly() -> [Element] {
        guard count > 1 else { return self }
        let start = Int.random(in: 0..<count)
        return Array(self[start...] + self[..<start])
    }
}
