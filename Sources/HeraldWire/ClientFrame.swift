public import NIOCore

/// A frame a client sends over the WebSocket (protocol v1, docs/protocol.md).
public struct ClientFrame: Sendable, Equatable {
    public enum Command: Sendable, Equatable {
        /// Make the connection's user (all of its connections) a member of a room; with
        /// `since`, first replay to this connection every message of the room after that position.
        case join(room: String, since: StreamPosition? = nil)
        /// End the user's membership of a room.
        case leave(room: String)
        /// Deliver `data` to every connection of every member of `room`.
        case publish(room: String, data: RawJSON)
        /// Deliver `data` to every connection of `user`.
        case send(user: String, data: RawJSON)
        /// Deliver `data` to every connection (only when the server allows client broadcasts).
        case broadcast(data: RawJSON)
        /// Ask who is in a room and who of them is online.
        case presence(room: String)
        /// Confirms a message sent with `"ack":true` to the user (by its offset in the user's channel).
        case ack(offset: Int64, epoch: String?)
        /// Replaces the connection's token with a fresh one for the same user (before the old
        /// one expires); its claims apply at once.
        case refresh(token: String)
        /// Asks for a `pong`: browsers cannot see WebSocket pings, so a client proves the
        /// connection alive with a frame it can see the answer to.
        case ping
    }

    public var command: Command
    /// The client's correlation id, echoed in the reply exactly as sent (any JSON value).
    public var id: RawJSON?

    public init(command: Command, id: RawJSON? = nil) {
        self.command = command
        self.id = id
    }

    /// Parses and validates one text frame.
    ///
    /// - Throws: ``ClientFrameError`` naming the problem; it carries the frame's `id` whenever
    ///   the frame was a JSON object with one, so the error reply can echo it.
    public static func decode(_ buffer: ByteBuffer) throws(ClientFrameError) -> ClientFrame {
        let object: JSONObject
        do {
            object = try JSONObject(parsing: buffer)
        } catch {
            throw ClientFrameError(id: nil, message: "malformed JSON: \(error.message)")
        }
        let id = object.raw("id")
        do throws(ClientFrameError) {
            guard let type = try object.string("type").get() else {
                throw ClientFrameError(id: id, message: "missing field \"type\"")
            }
            let command: Command
            switch type {
            case "join": command = .join(room: try object.name("room").get(), since: try Self.position(object).get())
            case "leave": command = .leave(room: try object.name("room").get())
            case "publish": command = .publish(room: try object.name("room").get(), data: try object.required("data").get())
            case "send": command = .send(user: try object.name("user").get(), data: try object.required("data").get())
            case "broadcast": command = .broadcast(data: try object.required("data").get())
            case "presence": command = .presence(room: try object.name("room").get())
            case "ack":
                guard let offset = try object.integer("offset").get() else { throw ClientFrameError(id: id, message: "missing field \"offset\"") }
                command = .ack(offset: offset, epoch: try object.string("epoch").get())
            case "ping": command = .ping
            case "refresh":
                guard let token = try object.string("token").get(), !token.isEmpty else { throw ClientFrameError(id: id, message: "missing field \"token\"") }
                command = .refresh(token: token)
            default:
                throw ClientFrameError(id: id, message: "unknown frame type \"\(type.prefix(64))\"")
            }
            return ClientFrame(command: command, id: id)
        } catch {
            throw ClientFrameError(id: id, message: error.message)
        }
    }
}

extension ClientFrame {
    /// `"since":{"offset":O,"epoch":E}`, or `"since":"latest"` (``StreamPosition/latest``), when present.
    static func position(_ object: JSONObject) -> Result<StreamPosition?, ClientFrameError> {
        if case .success("latest"?) = object.string("since") { return .success(.latest) }
        let since: JSONObject
        switch object.object("since") {
        case .failure(let error): return .failure(error)
        case .success(nil): return .success(nil)
        case .success(let value?): since = value
        }
        switch (since.integer("offset"), since.string("epoch")) {
        case (.success(let offset?), .success(let epoch?)):
            return .success(StreamPosition(offset: offset, epoch: epoch))
        case (.failure(let error), _), (_, .failure(let error)):
            return .failure(ClientFrameError(id: nil, message: "in \"since\": \(error.message)"))
        default:
            return .failure(ClientFrameError(id: nil, message: "\"since\" needs \"offset\" (an integer) and \"epoch\" (a string)"))
        }
    }
}

/// A client frame Herald cannot act on; answered with an `error` frame of code `bad_request`.
public struct ClientFrameError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The frame's `id`, when it had one, so the error reply can echo it.
    public let id: RawJSON?
    public let message: String
    public var description: String { message }

    public init(id: RawJSON?, message: String) {
        self.id = id
        self.message = message
    }
}
