/// What `herald bench` measures; `herald bench --help` describes each scenario.
public enum BenchScenario: String, CaseIterable, Sendable, Codable {
    /// Fan-out to rooms: N connections spread over R rooms, messages published round-robin to the rooms at a rate.
    case rooms
    /// Broadcast to everyone: a burst of messages published back to back to every connection.
    case all
    /// To-user: N connections as N/D users with D devices each, messages to users at a rate.
    case users
    /// Hold N connections (server heartbeats on) and report the server's memory per connection.
    case idle
    /// Connection storm: open N connections as fast as the server accepts them.
    case connect
    /// `rooms`, with one connection that stops reading: its fate, everyone else's latency, the server's memory.
    case slow
    /// Reconnect storm: N users, messages to them at a rate; one server process is killed
    /// (SIGKILL) and its clients reconnect with backoff and jitter, resuming from their offsets.
    case storm
}

/// How publishes reach the server.
public enum PublishTransport: String, CaseIterable, Sendable, Codable {
    /// `POST /api/...` on keep-alive HTTP/1.1 connections (pipelined).
    case http
    /// `publish` / `send` frames from a dedicated WebSocket connection.
    case ws
}

/// One bench run. Every run is bounded: by `duration` (or `messages`), then `drainTimeout`.
public struct BenchConfiguration: Sendable, Codable {
    public var scenario: BenchScenario = .rooms
    public var host = "127.0.0.1"
    public var port = 8080
    /// Receiving connections.
    public var connections = 1000
    /// Rooms (`rooms`, `slow`).
    public var rooms = 100
    /// Connections per user (`users`).
    public var devices = 2
    /// Messages per second offered (`rooms`, `users`, `slow`).
    public var rate: Double = 500
    /// Publishing window in seconds (rate scenarios), or how long `idle` holds its connections.
    public var duration: Double = 10
    /// Messages in the `all` burst.
    public var messages = 100
    /// Size of each message's `data` in bytes.
    public var payloadSize = 64
    public var transport: PublishTransport = .http
    /// Keep-alive HTTP connections used to publish.
    public var publishConnections = 2
    /// Messages per `POST /api/publish` (HTTP only); 1 publishes each with its own request.
    public var batch = 1
    /// Sample deliveries/s and latency percentiles every this many seconds (`--plot`); 0: not at all.
    public var sampleInterval = 0.0
    /// Loopback source addresses to spread connections over (127.0.0.1, 127.0.0.2, …).
    public var sourceAddresses = 4
    /// Connection attempts in flight at once.
    public var connectConcurrency = 500
    /// Event-loop threads of the generator.
    public var threads = 1
    /// Server processes whose CPU and memory are read from /proc.
    public var serverPIDs: [Int32] = []
    /// When set, each user connects with a JWT signed with this secret (the server's).
    public var jwtSecret: String?
    /// Seconds every connection has to open (retries after a server's retry hint included).
    public var connectTimeout: Double = 300
    /// How long to wait after the last publish for outstanding deliveries.
    public var drainTimeout: Double = 5
    /// Print a progress line every second (to stderr).
    public var progress = true
    /// Permit a target outside 127.0.0.0/8 and ::1.
    public var allowRemoteTarget = false
    /// Generator processes holding the connections; 0 picks as many as the open-file limit needs.
    public var processes = 0
    /// Connect with TLS (`wss://`, `https://`), to a server started with `--tls-cert`/`--tls-key`.
    public var tls = false
    /// With ``tls``: the PEM file of the CA (or self-signed certificate) to trust.
    public var tlsCAFile: String?
    /// With ``tls`` and no ``tlsCAFile``: accept any certificate (no verification at all).
    public var tlsInsecure = false
    /// `storm`: the server process to kill with SIGKILL, and when (seconds into publishing).
    public var killPID: Int32?
    public var killAfter: Double = 5
    /// Set in a worker process: which share of the connections it holds.
    public var worker: WorkerSlice?

    public init() {}

    /// Receivers of one message on one stream, given the plan.
    var receiversPerStream: Int {
        switch scenario {
        case .rooms, .slow: connections / max(rooms, 1)
        case .all: connections
        case .users: devices
        case .storm: 1
        case .idle, .connect: 0
        }
    }
}

/// A worker process's share of the connections: indices `index`, `index + count`, `index + 2·count`, …
public struct WorkerSlice: Sendable, Codable, Equatable {
    public var index: Int
    public var count: Int

    public init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    public func holds(_ connection: Int) -> Bool { connection % count == index }
}

/// A configuration the bench refuses to run, with what to change.
public struct BenchError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
