import Foundation
import Histogram
import JWTKit
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

/// `herald bench`: opens the connections of a scenario, publishes, checks every delivery and
/// measures latency and (given server pids) the server's CPU per delivery and memory.
public struct LoadGenerator: Sendable {
    public let configuration: BenchConfiguration

    public init(configuration: BenchConfiguration) {
        self.configuration = configuration
    }

    /// Runs the scenario once. `log` receives progress lines.
    public func run(log: @escaping @Sendable (String) -> Void = { _ in }) async throws -> BenchReport {
        let configuration = self.configuration
        try Self.validate(configuration)
        let processes = Self.processCount(for: configuration)
        if configuration.worker == nil, processes > 1 {
            return try await Coordinator(configuration: configuration, processes: processes, log: log).run()
        }
        let tls = try Self.makeTLSContext(configuration)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        do {
            let report = try await Run(configuration: configuration, group: group, tls: tls, log: log).execute()
            try await group.shutdownGracefully()
            return report
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    static func validate(_ configuration: BenchConfiguration) throws {
        guard configuration.connections >= 1 else { throw BenchError("--connections must be at least 1") }
        if !configuration.allowRemoteTarget, !Self.isLoopback(configuration.host) {
            throw BenchError(
                "refusing to load \(configuration.host): herald bench only targets 127.0.0.0/8 or ::1 unless --allow-remote-target is given"
            )
        }
        if [.rooms, .slow].contains(configuration.scenario), configuration.connections % configuration.rooms != 0 {
            throw BenchError("--connections (\(configuration.connections)) must be a multiple of --rooms (\(configuration.rooms))")
        }
        if configuration.scenario == .storm {
            guard let pid = configuration.killPID, pid > 0 else {
                throw BenchError("--scenario storm needs --kill-pid PID: the server process (one of the --workers) to kill with SIGKILL")
            }
            // A client resumes from the last message it got: one that got none has no position,
            // and messages published while it was away are not "missed" (docs/protocol.md).
            guard configuration.killAfter * configuration.rate >= Double(configuration.connections) else {
                throw BenchError(
                    """
                    --kill-after \(configuration.killAfter) s at --rate \(configuration.rate) publishes \(Int(configuration.killAfter * configuration.rate)) messages \
                    before the kill: every one of the \(configuration.connections) users needs one first (a position to resume from); \
                    kill after at least \(Int((Double(configuration.connections) / configuration.rate).rounded(.up))) s or raise --rate
                    """
                )
            }
            guard configuration.killAfter < configuration.duration else {
                throw BenchError("--kill-after (\(configuration.killAfter) s) must come before the end of --duration (\(configuration.duration) s)")
            }
        }
        if configuration.scenario == .users, configuration.connections % configuration.devices != 0 {
            throw BenchError("--connections must be a multiple of --devices")
        }
        let processes = processCount(for: configuration)
        if configuration.processes > 0, processes > configuration.processes {
            throw BenchError(
                """
                \(configuration.connections) connections need \(processes) processes at \(connectionsPerProcess) each \
                (open-file limit \(openFileLimit), RLIMIT_NOFILE); --processes \(configuration.processes) is too few
                """
            )
        }
        if processes > 64 {
            throw BenchError("\(configuration.connections) connections would need \(processes) generator processes; at most 64")
        }
    }

    /// The client TLS context of `--tls`, made once and shared by every connection; `nil` without TLS.
    static func makeTLSContext(_ configuration: BenchConfiguration) throws -> NIOSSLContext? {
        guard configuration.tls else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let file = configuration.tlsCAFile {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(file))
            } catch {
                throw BenchError("--tls-ca \(file): cannot load it as PEM certificates (\(error))")
            }
        } else if configuration.tlsInsecure {
            tls.certificateVerification = .none
        } else {
            throw BenchError("--tls needs --tls-ca FILE (the CA to trust) or --tls-insecure (no verification)")
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw BenchError("cannot set up TLS: \(error)")
        }
    }

    /// The TLS client handler for one connection to `host`: SNI and host name checked when
    /// `host` is a name; for an IP address only the chain is verified (SNI cannot carry one).
    static func tlsHandler(_ context: NIOSSLContext, host: String) throws -> NIOSSLClientHandler {
        let isAddress = host.contains(":") || host.split(separator: ".").allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
        return try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : host)
    }

    /// This process's open-file limit (RLIMIT_NOFILE, soft), which bounds its connections.
    static var openFileLimit: Int {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return limit.rlim_cur > UInt64(Int.max) ? Int.max : Int(limit.rlim_cur)
    }

    /// Connections one generator process may hold, leaving room for its other files.
    static var connectionsPerProcess: Int { max(1, openFileLimit - 256) }

    /// Generator processes the run needs: `--processes`, or enough for the open-file limit.
    static func processCount(for configuration: BenchConfiguration) -> Int {
        if configuration.worker != nil { return 1 }
        let needed = (configuration.connections + connectionsPerProcess - 1) / connectionsPerProcess
        return max(configuration.processes, needed)
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let parts = host.split(separator: ".")
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// One execution of a scenario.
struct Run: Sendable {
    let configuration: BenchConfiguration
    let group: MultiThreadedEventLoopGroup
    let log: @Sendable (String) -> Void
    let statistics: ReceiverStatistics
    let publishStatistics = PublishStatistics()
    let probe: ProcessProbe
    /// `storm`: the receivers by index (reconnects replace them), and what the storm counted.
    let stormRegistry = ReceiverRegistry()
    let stormCounters = StormCounters()
    /// The server's address, resolved once: connecting by host name resolves it (getaddrinfo
    /// and Happy Eyeballs) on every connection, a quarter of the generator's CPU in a storm.
    let serverAddress: SocketAddress?
    /// With `--tls`: every connection starts with a TLS handler from this context.
    let tls: NIOSSLContext?

    init(configuration: BenchConfiguration, group: MultiThreadedEventLoopGroup, tls: NIOSSLContext?, log: @escaping @Sendable (String) -> Void) {
        self.configuration = configuration
        self.tls = tls
        self.group = group
        self.log = log
        self.serverAddress = try? SocketAddress.makeAddressResolvingHost(configuration.host, port: configuration.port)
        self.statistics = ReceiverStatistics(group: group)
        self.probe = ProcessProbe(pids: configuration.serverPIDs)
    }

    // MARK: - The plan

    /// The user of receiving connection `index`.
    func user(of index: Int) -> String {
        configuration.scenario == .users ? "u\(index / configuration.devices)" : "u\(index)"
    }

    /// The stream (room, user, or 0 for broadcasts) connection `index` receives.
    func stream(of index: Int) -> Int {
        switch configuration.scenario {
        case .rooms, .slow: index % configuration.rooms
        case .users: index / configuration.devices
        case .storm: index
        default: 0
        }
    }

    var streamCount: Int {
        switch configuration.scenario {
        case .rooms, .slow: configuration.rooms
        case .users: configuration.connections / configuration.devices
        case .storm: configuration.connections
        default: 1
        }
    }

    // MARK: - Execution

    func execute() async throws -> BenchReport {
        let baseline = probe.sample()
        let progress = startProgress()
        defer { progress.cancel() }

        let prepared = try await prepareReceivers()
        let connected = probe.sample()
        if let worker = configuration.worker {
            try await serveCoordinator(prepared, worker: worker)
            return BenchReport(configuration: configuration)
        }

        if configuration.scenario == .storm {
            return try await executeStorm(prepared, probes: (baseline, connected))
        }

        // Publish (or hold), measuring the server's CPU over this phase only.
        let before = probe.sample()
        let publishStart = ContinuousClock.now
        let sampler = await startSampler(from: publishStart)
        let expected = try await publish(recipients: prepared.receivers.count, stalledIndex: prepared.stalled?.index) {
            self.statistics.deliveries.load(ordering: .relaxed)
        }
        let elapsed = (ContinuousClock.now - publishStart).seconds
        let after = probe.sample()
        sampler?.cancel()
        let timeline = await sampler?.value

        let collected = try await collect(prepared)
        var report = BenchReport(configuration: configuration)
        report.connectionsOK = prepared.receivers.count
        report.connectionsFailed = prepared.failures
        report.connectSeconds = prepared.connectSeconds
        report.fillConnectCost(from: baseline, to: connected)
        report.connectFailures = prepared.failureReasons
        report.connectRetries = prepared.retries
        report.fill(
            collected: collected,
            publishStatistics: publishStatistics,
            expected: expected,
            elapsed: elapsed,
            probes: (baseline, before, after)
        )
        report.timeline = timeline
        for receiver in prepared.receivers {
            receiver.channelLoop.execute { receiver.close() }
        }
        return report
    }

    /// `--plot`: every ``BenchConfiguration/sampleInterval`` seconds, the deliveries/s and the
    /// latency percentiles of what arrived in the interval, until cancelled.
    private func startSampler(from start: ContinuousClock.Instant) async -> Task<[TimelinePoint], Never>? {
        let interval = configuration.sampleInterval
        guard interval > 0 else { return nil }
        let statistics = self.statistics
        let group = self.group
        await statistics.startIntervals(group: group)
        return Task {
            var points: [TimelinePoint] = []
            var lastCount = statistics.deliveries.load(ordering: .relaxed)
            var lastTime = ContinuousClock.now
            func sample() async {
                let histogram = await statistics.takeInterval(group: group)
                let now = ContinuousClock.now
                let count = statistics.deliveries.load(ordering: .relaxed)
                let seconds = (now - lastTime).seconds
                var point = TimelinePoint(seconds: (now - start).seconds, deliveriesPerSecond: seconds > 0 ? Double(count - lastCount) / seconds : 0)
                if histogram.totalCount > 0 {
                    point.p50 = Double(histogram.valueAtPercentile(50)) / 1000
                    point.p99 = Double(histogram.valueAtPercentile(99)) / 1000
                    point.p999 = Double(histogram.valueAtPercentile(99.9)) / 1000
                    point.max = Double(histogram.max) / 1000
                }
                points.append(point)
                lastCount = count
                lastTime = now
            }
            while !Task.isCancelled, points.count < 100_000 {
                try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                await sample()
            }
            return points
        }
    }

    /// This process's connections, joined and ready to receive.
    struct PreparedReceivers: Sendable {
        var receivers: [ReceiverConnection]
        var failures: Int
        var failureReasons: [String: Int] = [:]
        var retries = 0
        var connectSeconds: Double
        var stalled: ReceiverConnection?
    }

    /// Connects this process's share of the connections, joins their rooms, stalls the `slow` one.
    func prepareReceivers() async throws -> PreparedReceivers {
        let tokens = try await mintTokens()
        let connectStart = ContinuousClock.now
        let (receivers, failures, reasons, retries) = await connectAll(tokens: tokens)
        let connectSeconds = (ContinuousClock.now - connectStart).seconds
        log("connected \(receivers.count) of \(myIndices.count) in \(String(format: "%.2f", connectSeconds)) s (\(failures) failed)")
        if [.rooms, .slow].contains(configuration.scenario) {
            try await joinRooms(receivers)
        }
        var stalled: ReceiverConnection?
        if configuration.scenario == .slow, let first = receivers.first(where: { $0.index == 0 }) {
            stalled = first
            try await first.channelLoop.submit { first.stopReading() }.get()
        }
        return PreparedReceivers(
            receivers: receivers, failures: failures, failureReasons: reasons, retries: retries, connectSeconds: connectSeconds, stalled: stalled
        )
    }

    /// Publishes the scenario's messages (or holds, for `idle`), then waits until `delivered()`
    /// reaches the expected count or the drain timeout passes. Returns the expected deliveries.
    func publish(recipients: Int, stalledIndex: Int?, delivered: @escaping @Sendable () -> Int) async throws -> Int {
        var expected = 0
        switch configuration.scenario {
        case .rooms, .slow, .users:
            expected = try await publishAtRate(stalledIndex: stalledIndex)
        case .all:
            expected = try await publishBurst(recipients: recipients)
        case .idle:
            try await Task.sleep(for: .seconds(configuration.duration))
        case .connect, .storm:
            break
        }
        if expected > 0 {
            let deadline = ContinuousClock.now + .seconds(configuration.drainTimeout)
            while ContinuousClock.now < deadline, delivered() < expected {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        return expected
    }

    /// What this process's connections received.
    struct Collected: Sendable, Codable {
        var totals = DeliveryTotals()
        var histogram: Histogram<UInt64>
        var stalledClosedByServer: Bool?
        var closeCodes: [UInt16: Int] = [:]
        /// `storm`: messages published that no receiver of this process got.
        var missing: [MessageID] = []
    }

    func collect(_ prepared: PreparedReceivers) async throws -> Collected {
        var collected = Collected(histogram: statistics.mergedHistogram())
        // A storm's reconnects replaced some receivers: the registry holds the current ones.
        let receivers = configuration.scenario == .storm ? stormRegistry.all : prepared.receivers
        for receiver in receivers where receiver !== prepared.stalled {
            let ledger = try await receiver.channelLoop.submit { receiver.ledger.totals }.get()
            collected.totals.add(ledger)
        }
        if let stalled = prepared.stalled {
            collected.stalledClosedByServer = try await stalled.channelLoop.submit { stalled.closeCode != nil || !stalled.isActive }.get()
        }
        collected.closeCodes = statistics.closeCodes.withLock { $0 }
        return collected
    }

    /// The connection indices this process holds.
    var myIndices: [Int] {
        let all = 0..<configuration.connections
        guard let worker = configuration.worker else { return Array(all) }
        return all.filter(worker.holds)
    }

    private func mintTokens() async throws -> [String]? {
        guard let secret = configuration.jwtSecret else { return nil }
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        var tokens: [String] = []
        tokens.reserveCapacity(configuration.connections)
        var byUser: [String: String] = [:]
        for index in 0..<configuration.connections {
            let user = user(of: index)
            if let token = byUser[user] {
                tokens.append(token)
                continue
            }
            let claims = BenchClaims(sub: SubjectClaim(value: user), exp: ExpirationClaim(value: Date().addingTimeInterval(3600)), rooms: ["*"])
            let token = try await keys.sign(claims)
            byUser[user] = token
            tokens.append(token)
        }
        return tokens
    }

    // MARK: - Connecting

    /// One connection's outcome: the connection, or why its last attempt failed; and how many
    /// times the server asked it to come back later.
    private struct ConnectOutcome: Sendable {
        var index: Int
        var receiver: ReceiverConnection?
        var failure: String?
        var retries = 0
    }

    private func connectAll(tokens: [String]?) async -> ([ReceiverConnection], Int, [String: Int], Int) {
        let indices = myIndices
        let concurrency = max(1, configuration.connectConcurrency)
        var receivers: [Int: ReceiverConnection] = [:]
        var failures = 0
        var retries = 0
        var reasons: [String: Int] = [:]
        func record(_ outcome: ConnectOutcome) {
            retries += outcome.retries
            if let receiver = outcome.receiver { receivers[outcome.index] = receiver }
            if let failure = outcome.failure {
                failures += 1
                // Bounded: at most a few dozen distinct reasons are kept.
                if reasons[failure] != nil || reasons.count < 32 { reasons[failure, default: 0] += 1 }
            }
        }
        // Every connection has until this deadline, retries included: the phase cannot hang.
        let deadline = ContinuousClock.now + .seconds(configuration.connectTimeout)
        // The child result is a struct: with a tuple (or `Result<_, any Error>`) the release
        // build (Swift 6.3) handed back garbage for most children of the group.
        await withTaskGroup(of: ConnectOutcome.self) { group in
            for (position, index) in indices.enumerated() {
                if position >= concurrency, let outcome = await group.next() { record(outcome) }
                // Both: Herald uses the token when it checks JWTs, the baselines read ?user=.
                let query = "user=\(user(of: index))" + (tokens.map { "&token=\($0[index])" } ?? "")
                group.addTask { await connectRetrying(index: index, query: query, until: deadline) }
            }
            while let outcome = await group.next() { record(outcome) }
        }
        for (reason, count) in reasons.sorted(by: { $0.value > $1.value }) {
            log("\(count) connection attempts failed: \(reason)")
        }
        return (receivers.keys.sorted().compactMap { receivers[$0] }, failures, reasons, retries)
    }

    /// Connects, and when the server answers with a retry hint (503 + Retry-After, close 1013
    /// or 4029 before the welcome) tries again after the hinted delay with jitter (a refused
    /// crowd must not come back all at once), until `deadline`. Other failures are final.
    private func connectRetrying(index: Int, query: String, until deadline: ContinuousClock.Instant) async -> ConnectOutcome {
        var retries = 0
        var backoff = 0.25
        while true {
            do {
                let onLost: (@Sendable (ReceiverConnection) -> Void)? =
                    configuration.scenario == .storm
                    ? { @Sendable [stormCounters, stormRegistry] lost in self.reconnect(lost, counters: stormCounters, registry: stormRegistry) } : nil
                let receiver = try await connect(index: index, query: query, onLost: onLost)
                if configuration.scenario == .storm { stormRegistry.set(receiver) }
                return ConnectOutcome(index: index, receiver: receiver, retries: retries)
            } catch let failure as ConnectFailure {
                guard let hinted = failure.retryAfter else { return ConnectOutcome(index: index, failure: failure.cause, retries: retries) }
                // Full jitter over the hint (or our own backoff when it is shorter).
                let delay = Double.random(in: 0.5...1.5) * max(hinted, backoff)
                backoff = min(backoff * 2, 8)
                guard ContinuousClock.now + .seconds(delay) < deadline else {
                    return ConnectOutcome(index: index, failure: failure.cause + ", still refused at the connect deadline", retries: retries)
                }
                retries += 1
                try? await Task.sleep(for: .seconds(delay))
            } catch let error as ChannelError where error == .connectTimeout(.seconds(10)) {
                return ConnectOutcome(index: index, failure: "TCP connect timeout (10 s): the listen backlog is full", retries: retries)
            } catch {
                return ConnectOutcome(index: index, failure: String(String(describing: error).prefix(160)), retries: retries)
            }
        }
    }

    /// Opens one receiving connection and waits for its welcome. With `onLost` (`storm`), a
    /// loss of the welcomed connection calls it, on the connection's loop.
    func connect(
        index: Int,
        query: String,
        ledger: DeliveryLedger = DeliveryLedger(),
        position: ChannelPosition? = nil,
        onLost: (@Sendable (ReceiverConnection) -> Void)? = nil
    ) async throws -> ReceiverConnection {
        let sourceOffset = abs(index) % max(1, configuration.sourceAddresses)
        var bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        if Self.isIPv4Loopback(configuration.host) {
            bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: "127.0.0.\(1 + sourceOffset)", port: 0))
            #if os(Linux)
            // IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, per destination, where the
            // kernel may reuse a port in TIME_WAIT (loopback). Without it bind() reserves a port
            // outright, and a run started within a minute of a 95,000-connection one found most
            // ports of its source addresses still in TIME_WAIT: connects failed or crawled.
            bootstrap = bootstrap.channelOption(ChannelOptions.Types.SocketOption(level: .ip, name: .init(rawValue: 24)), value: 1)
            #endif
        }
        let statistics = self.statistics
        let host = configuration.host
        guard let address = serverAddress else { throw BenchError("cannot resolve \(host):\(configuration.port)") }
        let tls = self.tls
        // From the TCP connect to the welcome: a server that accepted the socket but never
        // answers (its descriptors exhausted, the request stuck in its backlog) fails the
        // attempt instead of holding it forever.
        let deadline = AttemptDeadline(seconds: Self.welcomeDeadline)
        let upgraded: EventLoopFuture<ReceiverConnection> = try await bootstrap.connect(to: address) { channel in
            deadline.arm(channel)
            return channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(try LoadGenerator.tlsHandler(tls, host: host)) }
                try channel.pipeline.syncOperations.addHandler(UpgradeResponsePeek())
                let upgrader = NIOTypedWebSocketClientUpgrader<ReceiverConnection>(
                    maxFrameSize: 1 << 24,
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            let welcomed = channel.eventLoop.makePromise(of: Void.self)
                            let receiver = ReceiverConnection(index: index, statistics: statistics, welcomed: welcomed, ledger: ledger, position: position)
                            receiver.onLost = onLost
                            try channel.pipeline.syncOperations.addHandler(receiver)
                            return receiver
                        }
                    }
                )
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: "\(host):\(configuration.port)")
                let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/ws?\(query)", headers: headers)
                let upgradeConfiguration = NIOTypedHTTPClientUpgradeConfiguration<ReceiverConnection>(
                    upgradeRequestHead: head,
                    upgraders: [upgrader],
                    notUpgradingCompletionHandler: { channel in
                        channel.eventLoop.makeCompletedFuture {
                            throw try channel.pipeline.syncOperations.handler(type: UpgradeResponsePeek.self).refusal
                        }
                    }
                )
                var pipelineConfiguration = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: upgradeConfiguration)
                // The server's first frame often arrives in the same read as its 101 response.
                pipelineConfiguration.leftOverBytesStrategy = .forwardBytes
                let result = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipelineConfiguration)
                return result
            }
        }
        do {
            let receiver = try await upgraded.get()
            try await receiver.welcome.get()
            deadline.disarm()
            return receiver
        } catch {
            deadline.disarm()
            if deadline.expired {
                throw ConnectFailure(cause: "no welcome within \(Self.welcomeDeadline) s of connecting (the server took the connection but did not answer)")
            }
            throw error
        }
    }

    /// Seconds from the TCP connect to the welcome before an attempt counts as failed.
    static let welcomeDeadline = 30

    static func isIPv4Loopback(_ host: String) -> Bool {
        host.hasPrefix("127.") && host.split(separator: ".").count == 4
    }

    private func joinRooms(_ receivers: [ReceiverConnection]) async throws {
        var replies: [EventLoopFuture<Void>] = []
        replies.reserveCapacity(receivers.count)
        for receiver in receivers {
            let room = "r\(stream(of: receiver.index))"
            let promise = receiver.channelLoop.makePromise(of: Void.self)
            receiver.channelLoop.execute { receiver.send(#"{"type":"join","room":"\#(room)"}"#, reply: promise) }
            replies.append(promise.futureResult)
        }
        for reply in replies { try await reply.get() }
        log("joined \(receivers.count) connections to \(configuration.rooms) rooms")
    }

    // MARK: - Publishing

    /// A publish target for stream `stream`: the HTTP path, and the WebSocket frame prefix.
    private func target(of stream: Int) -> (path: String, frameField: String) {
        switch configuration.scenario {
        case .users, .storm: ("/api/users/u\(stream)/send", #""type":"send","user":"u\#(stream)""#)
        case .all: ("/api/broadcast", #""type":"broadcast""#)
        default: ("/api/rooms/r\(stream)/publish", #""type":"publish","room":"r\#(stream)""#)
        }
    }

    private func receivers(ofStream stream: Int, stalledIndex: Int?) -> Int {
        let base = configuration.receiversPerStream
        if let stalledIndex, self.stream(of: stalledIndex) == stream { return base - 1 }
        return base
    }

    private func publishAtRate(stalledIndex: Int?) async throws -> Int {
        let publishers = try await makePublishers()
        let start = ContinuousClock.now
        var sequences = Array(repeating: 0, count: streamCount)
        var sent = 0
        var expected = 0
        // --batch N: each publisher's commands wait until N are due, then go in one POST /api/publish.
        var pending: [[String]] = Array(repeating: [], count: publishers.count)
        let batchSize = configuration.transport == .http ? configuration.batch : 1
        func sendBatches(_ final: Bool) {
            for (index, publisher) in publishers.enumerated() where !pending[index].isEmpty {
                while pending[index].count >= batchSize || (final && !pending[index].isEmpty) {
                    let chunk = Array(pending[index].prefix(batchSize))
                    pending[index].removeFirst(chunk.count)
                    publisher.send([("/api/publish", #"{"commands":["# + chunk.joined(separator: ",") + "]}")], messages: chunk.count)
                }
            }
        }
        defer { if batchSize > 1 { sendBatches(true) } }
        while true {
            let elapsed = (ContinuousClock.now - start).seconds
            if elapsed >= configuration.duration { break }
            let due = Int(elapsed * configuration.rate)
            if due > sent {
                var batches: [[(String, String)]] = Array(repeating: [], count: publishers.count)
                for number in sent..<due {
                    let stream = number % streamCount
                    let sequence = sequences[stream]
                    sequences[stream] += 1
                    let payload = BenchPayload(stream: stream, sequence: sequence, sentAt: NIODeadline.now().uptimeNanoseconds)
                    // One publisher per stream: order is defined only within one publishing connection.
                    if batchSize > 1 {
                        pending[stream % publishers.count].append(batchCommand(stream: stream, payload: payload))
                    } else {
                        batches[stream % publishers.count].append(request(stream: stream, payload: payload))
                    }
                    expected += self.receivers(ofStream: stream, stalledIndex: stalledIndex)
                }
                for (publisher, batch) in zip(publishers, batches) where !batch.isEmpty { publisher.send(batch) }
                if batchSize > 1 { sendBatches(false) }
                sent = due
            }
            try await Task.sleep(for: .milliseconds(1))
        }
        return expected
    }

    private func publishBurst(recipients: Int) async throws -> Int {
        let publishers = try await makePublishers()
        var batches: [[(String, String)]] = Array(repeating: [], count: publishers.count)
        // Each publisher's broadcasts are a stream of their own (receivers check order per
        // stream): no server orders what two connections publish at the same time.
        for number in 0..<configuration.messages {
            let publisher = number % publishers.count
            let payload = BenchPayload(stream: publisher, sequence: number / publishers.count, sentAt: NIODeadline.now().uptimeNanoseconds)
            batches[publisher].append(request(stream: 0, payload: payload))
        }
        for (publisher, batch) in zip(publishers, batches) where !batch.isEmpty { publisher.send(batch) }
        return configuration.messages * recipients
    }

    func request(stream: Int, payload: BenchPayload) -> (String, String) {
        let data = payload.json(size: configuration.payloadSize)
        let target = target(of: stream)
        switch configuration.transport {
        case .http: return (target.path, #"{"data":"# + data + "}")
        case .ws: return (target.path, "{" + target.frameField + #","data":"# + data + "}")
        }
    }

    /// A command of a `POST /api/publish` batch for stream `stream`.
    func batchCommand(stream: Int, payload: BenchPayload) -> String {
        let data = payload.json(size: configuration.payloadSize)
        switch configuration.scenario {
        case .users, .storm: return #"{"user":"u\#(stream)","data":"# + data + "}"
        case .all: return #"{"all":true,"data":"# + data + "}"
        default: return #"{"room":"r\#(stream)","data":"# + data + "}"
        }
    }

    // MARK: - Publishers

    private func makePublishers() async throws -> [Publisher] {
        var publishers: [Publisher] = []
        for index in 0..<max(1, configuration.publishConnections) {
            switch configuration.transport {
            case .http:
                let statistics = publishStatistics
                let host = configuration.host
                let tls = self.tls
                let publisher = try await ClientBootstrap(group: group)
                    .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                    .connect(host: host, port: configuration.port) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            let publisher = HTTPPublisher(host: host, statistics: statistics)
                            if let tls { try channel.pipeline.syncOperations.addHandler(try LoadGenerator.tlsHandler(tls, host: host)) }
                            try channel.pipeline.syncOperations.addHTTPClientHandlers()
                            try channel.pipeline.syncOperations.addHandler(publisher)
                            return Publisher.http(publisher, channel.eventLoop)
                        }
                    }
                publishers.append(publisher)
            case .ws:
                let receiver = try await connect(index: -1 - index, query: "user=bench-publisher-\(index)")
                publishers.append(.ws(receiver, publishStatistics))
            }
        }
        return publishers
    }
}

/// Where publishes go out: an HTTP keep-alive connection or a WebSocket.
private enum Publisher: Sendable {
    case http(HTTPPublisher, any EventLoop)
    case ws(ReceiverConnection, PublishStatistics)

    /// Sends (path, body) pairs; for WebSocket the body is the whole client frame. Over HTTP
    /// each request carries `messages` messages (a `POST /api/publish` batch when more than 1).
    func send(_ batch: [(String, String)], messages: Int = 1) {
        switch self {
        case .http(let publisher, let loop):
            loop.execute {
                for (path, body) in batch { publisher.post(path: path, body: body, messages: messages) }
            }
        case .ws(let receiver, let statistics):
            receiver.channelLoop.execute {
                for (_, frame) in batch {
                    let reply = receiver.channelLoop.makePromise(of: Void.self)
                    reply.futureResult.whenComplete { result in
                        switch result {
                        case .success: statistics.accepted.add(1, ordering: .relaxed)
                        case .failure: statistics.failed.add(1, ordering: .relaxed)
                        }
                    }
                    statistics.sent.add(1, ordering: .relaxed)
                    receiver.send(frame, reply: reply)
                }
            }
        }
    }
}

extension Run {
    fileprivate func startProgress() -> Task<Void, Never> {
        guard configuration.progress else { return Task {} }
        let statistics = self.statistics
        let publishStatistics = self.publishStatistics
        let scenario = configuration.scenario
        let start = ContinuousClock.now
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let line = String(
                    format: "[%@] %5.1fs  connected %d  published %d  delivered %d  errors %d  closed %d",
                    scenario.rawValue,
                    (ContinuousClock.now - start).seconds,
                    statistics.welcomes.load(ordering: .relaxed),
                    publishStatistics.sent.load(ordering: .relaxed),
                    statistics.deliveries.load(ordering: .relaxed),
                    statistics.errors.load(ordering: .relaxed) + publishStatistics.failed.load(ordering: .relaxed),
                    statistics.closedByServer.load(ordering: .relaxed)
                )
                FileHandle.standardError.write(Data(("\r" + line).utf8))
            }
            FileHandle.standardError.write(Data("\n".utf8))
        }
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Closes a connection attempt's channel when its deadline passes before ``disarm()``.
final class AttemptDeadline: Sendable {
    private let seconds: Int
    private let timer = Mutex<Scheduled<Void>?>(nil)
    private let fired = Atomic<Bool>(false)

    init(seconds: Int) { self.seconds = seconds }

    var expired: Bool { fired.load(ordering: .relaxed) }

    func arm(_ channel: any Channel) {
        let task = channel.eventLoop.scheduleTask(in: .seconds(Int64(seconds))) { [self] in
            fired.store(true, ordering: .relaxed)
            channel.close(promise: nil)
        }
        timer.withLock { $0 = task }
    }

    func disarm() { timer.withLock { $0?.cancel() } }
}

/// The claims of the tokens the generator mints: a user allowed in every room, for an hour.
struct BenchClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    var rooms: [String]

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
    }
}
