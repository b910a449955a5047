import HeraldWire
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A frame from the server: a validated JSON object with a string `type`, its fields read on demand.
struct InboundFrame: Sendable {
    let type: String
    let object: JSONObject

    /// Parses one text frame; a frame the client cannot use is an ``HeraldClientError/unexpectedFrame(_:)``.
    init(text: String) throws(HeraldClientError) {
        let object: JSONObject
        do {
            object = try JSONObject(parsing: ByteBuffer(string: text))
        } catch {
            throw .unexpectedFrame("a frame that is not a JSON object was ignored (\(error.message)): \(Self.excerpt(text))")
        }
        guard case .success(let type?) = object.string("type") else {
            throw .unexpectedFrame("a frame without a string \"type\" was ignored: \(Self.excerpt(text))")
        }
        self.type = type
        self.object = object
    }

    static func parse(_ text: String) -> Result<InboundFrame, HeraldClientError> {
        do {
            return .success(try InboundFrame(text: text))
        } catch {
            return .failure(error)
        }
    }

    func string(_ key: String) -> String? {
        if case .success(let value?) = object.string(key) { value } else { nil }
    }

    /// A non-negative integer field (offsets, ids, times).
    func integer(_ key: String) -> Int64? {
        if case .success(let value?) = object.integer(key) { value } else { nil }
    }

    func bool(_ key: String) -> Bool? {
        guard object.kind(key) == .bool, let raw = object.raw(key) else { return nil }
        return raw.text == "true"
    }

    func raw(_ key: String) -> RawJSON? { object.raw(key) }

    /// An array of strings (presence lists); `nil` when absent or of another shape.
    func strings(_ key: String) -> [String]? {
        guard object.kind(key) == .array, let raw = object.raw(key) else { return nil }
        return try? JSONDecoder().decode([String].self, from: Data(raw.bytes.readableBytesView))
    }

    /// The `id` of a reply, when it is one this client could have sent (a positive integer).
    var requestID: Int? {
        guard object.kind("id") == .number, let raw = object.raw("id") else { return nil }
        return Int(raw.text)
    }

    var hasID: Bool { object.raw("id") != nil }

    /// A latest position (`offset` and `epoch`), as in `joined` replies and welcomes that recover.
    var position: StreamPosition? {
        guard let offset = integer("offset") else { return nil }
        return StreamPosition(offset: offset, epoch: string("epoch") ?? "")
    }

    static func excerpt(_ text: String) -> String {
        text.count > 200 ? String(text.prefix(200)) + "…" : text
    }
}

/// What a request asks; its frame is written when it leaves (a queued join carries the
/// position known then, not when it was called).
enum RequestBody: Sendable {
    case join(String)
    case leave(String)
    case publish(room: String, data: RawJSON)
    case send(user: String, data: RawJSON)
    case broadcast(RawJSON)
    case presence(String)
    case ack(offset: Int64, epoch: String?)
    case refresh(token: String)

    var name: String {
        switch self {
        case .join: "join"
        case .leave: "leave"
        case .publish: "publish"
        case .send: "send"
        case .broadcast: "broadcast"
        case .presence: "presence"
        case .ack: "ack"
        case .refresh: "refresh"
        }
    }

    /// Sent again on the next connection when the connection died before the reply: the
    /// outcome is the same. Publish, send, broadcast and refresh are not (they fail `disconnected`).
    var isIdempotent: Bool {
        switch self {
        case .join, .leave, .presence, .ack: true
        case .publish, .send, .broadcast, .refresh: false
        }
    }

    var joinedRoom: String? {
        if case .join(let room) = self { room } else { nil }
    }

    /// The frame's JSON text; `since` is the join's resume position.
    func text(id: Int, since: StreamPosition?) -> String {
        var buffer = ByteBuffer()
        switch self {
        case .join(let room):
            buffer.writeStaticString(#"{"type":"join","room":"#)
            buffer.writeJSONString(room)
            if let since {
                buffer.writeStaticString(#","since":{"offset":"#)
                buffer.writeString(String(since.offset))
                buffer.writeStaticString(#","epoch":"#)
                buffer.writeJSONString(since.epoch)
                buffer.writeStaticString("}")
            } else {
                // No position yet: the reply says where the room stands, to resume from later.
                buffer.writeStaticString(#","since":"latest""#)
            }
        case .leave(let room):
            buffer.writeStaticString(#"{"type":"leave","room":"#)
            buffer.writeJSONString(room)
        case .publish(let room, let data):
            buffer.writeStaticString(#"{"type":"publish","room":"#)
            buffer.writeJSONString(room)
            buffer.writeData(data)
        case .send(let user, let data):
            buffer.writeStaticString(#"{"type":"send","user":"#)
            buffer.writeJSONString(user)
            buffer.writeData(data)
        case .broadcast(let data):
            buffer.writeStaticString(#"{"type":"broadcast""#)
            buffer.writeData(data)
        case .presence(let room):
            buffer.writeStaticString(#"{"type":"presence","room":"#)
            buffer.writeJSONString(room)
        case .ack(let offset, let epoch):
            buffer.writeStaticString(#"{"type":"ack","offset":"#)
            buffer.writeString(String(offset))
            if let epoch {
                buffer.writeStaticString(#","epoch":"#)
                buffer.writeJSONString(epoch)
            }
        case .refresh(let token):
            buffer.writeStaticString(#"{"type":"refresh","token":"#)
            buffer.writeJSONString(token)
        }
        buffer.writeStaticString(#","id":"#)
        buffer.writeString(String(id))
        buffer.writeStaticString("}")
        return String(buffer: buffer)
    }
}

extension ByteBuffer {
    fileprivate mutating func writeData(_ data: RawJSON) {
        writeStaticString(#","data":"#)
        var bytes = data.bytes
        writeBuffer(&bytes)
    }
}
