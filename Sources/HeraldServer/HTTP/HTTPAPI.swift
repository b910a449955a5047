import Foundation
import Herald
import HeraldWire
import Hummingbird
import NIOCore

/// The backend's HTTP API (docs/protocol.md, "HTTP API"). Publishing goes through the broker
/// like everything else; membership changes go to the hub.
struct HTTPAPI {
    let node: HeraldNode

    func register(on router: Router<BasicRequestContext>) {
        router.get("/") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(string: DemoPage.html))
            )
        }
        router.get("/healthz") { _, _ in
            JSONBody.response(.ok, ["status": "ok"])
        }

        let api = router.group("api").add(middleware: APIKeyMiddleware(apiKey: node.configuration.apiKey))
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
            do {
                let added = try node.hub.join(user: user, room: room)
                return JSONBody.response(.ok, MembershipReply(room: room, user: user, member: true, changed: added))
            } catch let error as HubError {
                throw APIError(.conflict, code: .limitExceeded, message: error.description)
            }
        }
        api.delete("rooms/:room/members/:user") { _, context in
            let room = try name(context, "room")
            let user = try name(context, "user")
            let removed = node.hub.leave(user: user, room: room)
            return JSONBody.response(.ok, MembershipReply(room: room, user: user, member: false, changed: removed))
        }
        api.get("rooms/:room") { _, context in
            let room = try name(context, "room")
            let members = node.hub.members(of: room).sorted()
            let online = node.hub.onlineMembers(of: room).sorted()
            return JSONBody.response(.ok, RoomReply(room: room, members: members, online: online))
        }
        api.get("users/:user") { _, context in
            let user = try name(context, "user")
            let reply = UserReply(
                user: user,
                connections: node.hub.connectionCount(of: user),
                online: node.hub.connectionCount(of: user) > 0,
                rooms: node.hub.rooms(of: user).sorted()
            )
            return JSONBody.response(.ok, reply)
        }
        api.get("stats") { _, _ in
            let counters = node.hub.statistics.snapshot()
            let reply = StatsReply(
                node: node.nodeID,
                connections: node.hub.connectionCount,
                usersOnline: node.hub.onlineUserCount,
                rooms: node.hub.roomCount,
                messagesDelivered: counters.messagesDelivered,
                framesWritten: counters.framesWritten,
                connectionsOpened: counters.connectionsOpened,
                connectionsRefused: counters.connectionsRefused,
                slowConsumersCut: counters.slowConsumersCut
            )
            return JSONBody.response(.ok, reply)
        }
    }

    /// Reads `{"data": ANY}` and publishes it through the broker; 202 once the broker took it.
    private func publish(_ request: Request, to target: DeliveryTarget) async throws -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: node.configuration.maxBodySize)
        } catch {
            throw APIError(.contentTooLarge, code: .badRequest, message: "body larger than \(node.configuration.maxBodySize) bytes")
        }
        let object: JSONObject
        do {
            object = try JSONObject(parsing: body)
        } catch {
            throw APIError(.badRequest, code: .badRequest, message: "body must be a JSON object: \(error.message)")
        }
        guard let data = object.raw("data") else {
            throw APIError(.badRequest, code: .badRequest, message: "missing field \"data\"")
        }
        let envelope = Envelope.message(to: target, from: nil, data: data)
        do {
            try await node.broker.publish(envelope, on: node.hub.anyEventLoop)
        } catch {
            throw APIError(.serviceUnavailable, code: .unavailable, message: "message not published: \(error)")
        }
        return Response(status: .accepted, headers: [.contentType: "application/json"], body: .init(byteBuffer: Self.acceptedBody))
    }

    /// The body of every 202, built once: publishing is the API's hot call.
    private static let acceptedBody = ByteBuffer(string: #"{"accepted":true}"#)

    /// A room or user name from the path, validated like the WebSocket protocol's names.
    private func name(_ context: BasicRequestContext, _ key: String) throws -> String {
        guard let value = context.parameters.get(key) else {
            throw APIError(.badRequest, code: .badRequest, message: "missing \(key) in the path")
        }
        let decoded = value.removingPercentEncoding ?? value
        if let problem = Name.problem(decoded) {
            throw APIError(.badRequest, code: .badRequest, message: "\(key) name \(problem)")
        }
        return decoded
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

struct StatsReply: Encodable {
    var node: String
    var connections: Int
    var usersOnline: Int
    var rooms: Int
    var messagesDelivered: Int
    var framesWritten: Int
    var connectionsOpened: Int
    var connectionsRefused: Int
    var slowConsumersCut: Int
}
