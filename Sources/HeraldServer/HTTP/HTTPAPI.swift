import Foundation
import Herald
import HeraldWire
import Hummingbird
import NIOCore
import Synchronization

/// The backend's HTTP API (docs/protocol.md, "HTTP API"). Publishing goes through the broker
/// like everything else; membership changes go to the hub.
struct HTTPAPI {
    let node: HeraldNode
    /// Serves `/metrics` here (behind the API key) when set.
    var metrics: NodeMetrics?
    /// Answers `/api/status` (and posts this node's figures first, so they are fresh).
    var status: StatusReporter?

    func register(on router: Router<BasicRequestContext>) {
        router.getAndHead("/") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(string: DemoPage.html))
            )
        }
        // The page holds no figures: it asks /api/status with the key the user types in.
        router.getAndHead("/status") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.status_html))
            )
        }
        router.getAndHead("/herald.js") { request, _ in
            ClientScript.javaScript.response(to: request)
        }
        router.getAndHead("/herald.d.ts") { request, _ in
            ClientScript.typeScriptDeclarations.response(to: request)
        }
        ProbeRoutes(node: node).register(on: router)
        if let metrics {
            router.group("metrics").add(middleware: APIKeyMiddleware(apiKey: node.configuration.apiKey)).getAndHead("") { _, _ in
                try await metrics.response()
            }
        }
        // An upgrade request is taken over before the router; what gets here is plain HTTP, or
        // an upgrade the WebSocket handshake refused (wrong version, no key).
        router.getAndHead("/ws") { _, _ in
            Response(
                status: .upgradeRequired,
                headers: [.upgrade: "websocket", .connection: "Upgrade", .secWebSocketVersion: "13", .contentType: "application/json"],
                body: .init(
                    byteBuffer: JSONBody.errorBody(
                        code: "upgrade_required",
                        message: "/ws is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket, Sec-WebSocket-Version: 13)"
                    )
                )
            )
        }

        // The contract is public: it holds no secret, and a client generator needs no key.
        router.getAndHead("/api/openapi.yaml") { request, _ in
            ClientScript.openAPI.response(to: request)
        }
        let api = router.group("api").add(middleware: APIKeyMiddleware(apiKey: node.configuration.apiKey))
        RevocationAPI(node: node).register(on: api)
        if let status {
            api.getAndHead("status") { _, _ in
                // The board's, with this node's own fresh (also while Redis cannot be read:
                // then this node's reason is what the page needs to show).
                var snapshots = await node.statusBoard.snapshots()
                if let own = await status.current() { snapshots[node.nodeID] = own }
                var body = ByteBuffer()
                body.writeStaticString(#"{"node":"#)
                body.writeJSONString(node.nodeID)
                body.writeString(#","interval":\#(StatusReporter.interval.components.seconds),"nodes":["#)
                for (index, entry) in snapshots.sorted(by: { $0.key < $1.key }).enumerated() {
                    if index > 0 { body.writeStaticString(",") }
                    var snapshot = entry.value
                    body.writeBuffer(&snapshot)
                }
                body.writeStaticString("]}")
                return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"], body: .init(byteBuffer: body))
            }
        }
        api.post("publish") { request, _ in
            try await publishBatch(request)
        }
        api.post("broadcast") { request, _ in
            try await publish(request, to: .all)
        }
        api.post("rooms/:room/publish") { request, context in
            try await publish(request, to: .room(try name(context, "room")))
        }
        api.post("users/:user/send") { request, context in
            try await publish(request, to: .user(try name(context, "user")))
        }
        api.put("rooms/:room/members/:user") { _, context in
            let room = try name(context, "room")
            let user = try name(context, "user")
            let added = try await roster { () async throws(HubError) in try await node.roster.join(user: user, room: room) }
            return JSONBody.response(.ok, MembershipReply(room: room, user: user, member: true, changed: added))
        }
        api.delete("rooms/:room/members/:user") { _, context in
            let room = try name(context, "room")
            let user = try name(context, "user")
            let removed = try await roster { () async throws(HubError) in try await node.roster.leave(user: user, room: room) }
            return JSONBody.response(.ok, MembershipReply(room: room, user: user, member: false, changed: removed))
        }
        api.getAndHead("rooms/:room") { _, context in
            let room = try name(context, "room")
            let presence = try await roster { () async throws(HubError) in try await node.roster.presence(of: room) }
            return JSONBody.response(.ok, RoomReply(room: room, members: presence.members, online: presence.online))
        }
        api.getAndHead("users/:user") { _, context in
            let user = try name(context, "user")
            let (connections, rooms) = try await roster { () async throws(HubError) in
                let connections = try await node.roster.connectionCounts(of: [user])[user] ?? 0
                return (connections, try await node.roster.rooms(of: user))
            }
            let reply = UserReply(user: user, connections: connections, online: connections > 0, rooms: rooms.sorted())
            return JSONBody.response(.ok, reply)
        }
        api.getAndHead("rooms/:room/history") { request, context in
            try await history(of: .room(try name(context, "room")), request)
        }
        api.getAndHead("users/:user/history") { request, context in
            try await history(of: .user(try name(context, "user")), request)
        }
        api.getAndHead("stats") { _, _ in
            let counters = node.hub.statistics.snapshot()
            let broker = node.broker.statistics
            // Stats must answer while Redis is down (that is when they are read): rooms is then left out.
            // Both asked at once: with Redis slow to answer, stats wait one timeout, not two.
            async let roomCount = try? await node.roster.roomCount()
            async let totals = try? await node.roster.clusterTotals()
            let rooms = await roomCount
            let cluster = await totals.flatMap { $0 }
            let reply = StatsReply(
                node: node.nodeID,
                scope: "node",
                cluster: cluster.map {
                    ClusterStatsReply(nodes: $0.nodes, connections: $0.presence.connections, usersOnline: $0.presence.users)
                },
                connections: node.hub.connectionCount,
                usersOnline: node.hub.onlineUserCount,
                rooms: rooms,
                localRooms: node.hub.localRoomCount,
                messagesDelivered: counters.messagesDelivered,
                framesWritten: counters.framesWritten,
                connectionsOpened: counters.connectionsOpened,
                connectionsRefused: counters.connectionsRefused,
                connectionsSettingUp: node.connecting.load(ordering: .relaxed),
                overloadRefusals: node.overloadRefusals.load(ordering: .relaxed),
                slowConsumersCut: counters.slowConsumersCut,
                brokerPublishFailures: broker.publishFailures,
                brokerReconnects: broker.reconnects,
                brokerHealingLosses: broker.healingLosses
            )
            return JSONBody.response(.ok, reply)
        }
    }

    /// `?since=OFFSET&limit=N`: the channel's position and its messages after `since`, as delivered.
    private func history(of target: DeliveryTarget, _ request: Request) async throws -> Response {
        let since = try integer(request, "since") ?? 0
        let limit = min(try integer(request, "limit") ?? 100, 10_000)
        let page: HistoryPage
        do {
            page = try await node.broker.history(of: target, since: since, limit: Int(limit))
        } catch {
            throw APIError(.serviceUnavailable, code: .unavailable, message: error.description)
        }
        var body = ByteBuffer()
        body.writeString(#"{"offset":\#(page.latest.offset),"epoch":"#)
        body.writeJSONString(page.latest.epoch)
        body.writeString(#","oldest":\#(page.oldest),"messages":["#)
        for (index, entry) in page.entries.enumerated() {
            if index > 0 { body.writeStaticString(",") }
            var frame = entry.frame
            body.writeBuffer(&frame)
        }
        body.writeStaticString("]}")
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
    }

    private func integer(_ request: Request, _ key: String) throws -> Int64? {
        guard let text = request.uri.queryParameters.get(key) else { return nil }
        guard let value = Int64(text), value >= 0 else {
            throw APIError(.badRequest, code: .badRequest, message: "\(key) must be a non-negative integer, not \(text)")
        }
        return value
    }

    /// Runs a roster call: a limit answers 409 `limit_exceeded`, an outage 503 `unavailable`.
    private func roster<T>(_ body: () async throws(HubError) -> T) async throws -> T {
        do {
            return try await body()
        } catch  where error.isMembershipLimit {
            throw APIError(.conflict, code: .limitExceeded, message: error.description)
        } catch {
            throw APIError(.serviceUnavailable, code: .unavailable, message: error.description)
        }
    }

    /// Reads `{"data": ANY}` and publishes it through the broker; 202 once the broker took it.
    /// (Usually answered before it gets here, by ``PublishRequestHandler``.)
    private func publish(_ request: Request, to target: DeliveryTarget) async throws -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: node.configuration.maxBodySize)
        } catch {
            throw PublishRequest.tooLarge(node.configuration.maxBodySize)
        }
        let envelope = try PublishRequest.envelope(body: body, to: target)
        do {
            try await node.broker.publish(envelope, on: node.hub.anyEventLoop)
        } catch {
            throw PublishRequest.notPublished(error)
        }
        node.hub.metrics.recordPublish(from: .http)
        return Response(status: .accepted, headers: [.contentType: "application/json"], body: .init(byteBuffer: PublishRequest.acceptedBody))
    }

    /// `POST /api/publish` (``PublishBatch``): the valid commands go to the broker in one call
    /// (with Redis: one pipelined write), each answered in its slot.
    private func publishBatch(_ request: Request) async throws -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: node.configuration.maxBodySize)
        } catch {
            throw PublishRequest.tooLarge(node.configuration.maxBodySize)
        }
        let commands = try PublishBatch.commands(body: body)
        var outcomes: [Result<Void, APIError>] = commands.map { $0.map { _ in () } }
        var envelopes: [Envelope] = []
        var slots: [Int] = []
        envelopes.reserveCapacity(commands.count)
        for (slot, command) in commands.enumerated() {
            guard case .success(let envelope) = command else { continue }
            envelopes.append(envelope)
            slots.append(slot)
        }
        if !envelopes.isEmpty {
            let results = try await node.broker.publish(batch: envelopes, on: node.hub.anyEventLoop).get()
            var published = 0
            for (slot, result) in zip(slots, results) {
                switch result {
                case .success: published += 1
                case .failure(let error): outcomes[slot] = .failure(PublishRequest.notPublished(error))
                }
            }
            node.hub.metrics.recordPublish(from: .http, count: published)
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: PublishBatch.resultsBody(outcomes)))
    }

    /// A room or user name from the path, validated like the WebSocket protocol's names.
    private func name(_ context: BasicRequestContext, _ key: String) throws -> String {
        guard let value = context.parameters.get(key) else {
            throw APIError(.badRequest, code: .badRequest, message: "missing \(key) in the path")
        }
        return try PublishRequest.name(Substring(value), key).get()
    }
}

/// `/healthz` (liveness: the process answers) and `/readyz` (this node can serve new
/// connections), public so that probes need no key; they reveal no more than that.
struct ProbeRoutes {
    let node: HeraldNode

    func register(on router: Router<BasicRequestContext>) {
        router.getAndHead("/healthz") { _, _ in
            JSONBody.response(.ok, ["status": "ok"])
        }
        router.getAndHead("/readyz") { _, _ in
            let readiness = node.readiness()
            return JSONBody.response(readiness.isReady ? .ok : .serviceUnavailable, readiness)
        }
    }
}

extension NodeMetrics {
    /// `/metrics` in the Prometheus text format (version 0.0.4).
    func response() async throws -> Response {
        guard let text = await exposition() else {
            throw APIError(.notFound, code: ErrorCode(rawValue: "not_found"), message: "this node keeps its metrics elsewhere (no Prometheus registry)")
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(bytes: text))
        )
    }
}

struct MembershipReply: Encodable {
    var room: String
    var user: String
    var member: Bool
    /// Whether the call changed anything (false when the user already was / was not a member).
    var changed: Bool
}

struct RoomReply: Encodable {
    var room: String
    var members: [String]
    var online: [String]
}

struct UserReply: Encodable {
    var user: String
    var connections: Int
    var online: Bool
    var rooms: [String]
}

/// `GET /api/stats`: the figures of the node that answered (with `--workers`, whichever worker
/// took the request: `node` says which), and with Redis the cluster's totals.
struct StatsReply: Encodable {
    var node: String
    /// Always `node`: every figure but `rooms` and `cluster` is this node's own.
    var scope: String
    /// With Redis: summed over the live nodes' last heartbeats (at most a third of the presence
    /// TTL old); absent for a node on its own, or while Redis cannot be read.
    var cluster: ClusterStatsReply?
    var connections: Int
    var usersOnline: Int
    /// Rooms in the cluster; absent when the roster cannot be read.
    var rooms: Int?
    /// Rooms with a member connected to this node.
    var localRooms: Int
    var messagesDelivered: Int
    var framesWritten: Int
    var connectionsOpened: Int
    var connectionsRefused: Int
    /// WebSocket connections admitted whose welcome is not sent yet (channels being set up).
    var connectionsSettingUp: Int
    /// WebSocket requests answered 503 + Retry-After because too many were being set up.
    var overloadRefusals: Int
    var slowConsumersCut: Int
    var brokerPublishFailures: Int
    var brokerReconnects: Int
    var brokerHealingLosses: Int
}

struct ClusterStatsReply: Encodable {
    /// Nodes (workers) that heartbeated within the presence TTL.
    var nodes: Int
    var connections: Int
    /// Users with a connection, counted once per node they are connected to.
    var usersOnline: Int
}

extension RouterMethods {
    /// Registers `handler` for GET and for HEAD (RFC 9110: HEAD wherever GET is served; the body
    /// is dropped by ``HTTPConventionsMiddleware``).
    @discardableResult
    func getAndHead(_ path: RouterPath, use handler: @Sendable @escaping (Request, Context) async throws -> some ResponseGenerator) -> Self {
        on(path, method: .get, use: handler)
        return on(path, method: .head, use: handler)
    }
}
