public import NIOCore

/// Encoders for the frames the server sends (protocol v1, docs/protocol.md).
///
/// Each returns the finished JSON text in a `ByteBuffer`. A delivery is encoded once and the
/// same buffer is written to every recipient.
public enum ServerFrame {
    /// `{"type":"welcome","user":U,"connection":C,"node":N,"heartbeat":SECONDS}`, the first frame of a connection.
    /// With `recovery`, the welcome of a connection that asked to resume its user's channel
    /// (`?since_offset=O&since_epoch=E`): `"recovered":B[,"reason":WHY],"offset":L,"epoch":E2`.
    /// With `position` (a connection that asked `?since=latest`): `"offset":L,"epoch":E`, the
    /// user channel's position the connection receives every message after.
    /// With `expires` (the token's `exp`, seconds since 1970): `"expires":EXP`.
    /// With `presenceEvents` (room names and `prefix*` patterns): `"presence_events":[...]`, the
    /// rooms whose members get `presence_change` frames.
    public static func welcome(
        user: String, connection: String, node: String, heartbeat: Int, recovery: (Recovery, StreamPosition)? = nil,
        position: StreamPosition? = nil, expires: Int64? = nil, presenceEvents: [String]? = nil
    ) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(96 + user.utf8.count + connection.utf8.count + node.utf8.count)
        buffer.writeStaticString(#"{"type":"welcome","user":"#)
        buffer.writeJSONString(user)
        buffer.writeStaticString(#","connection":"#)
        buffer.writeJSONString(connection)
        buffer.writeStaticString(#","node":"#)
        buffer.writeJSONString(node)
        buffer.writeStaticString(#","heartbeat":"#)
        buffer.writeString(String(heartbeat))
        if let expires {
            buffer.writeStaticString(#","expires":"#)
            buffer.writeString(String(expires))
        }
        if let presenceEvents {
            buffer.writeStaticString(#","presence_events":"#)
            buffer.writeJSONStringArray(presenceEvents)
        }
        if let (recovery, latest) = recovery {
            buffer.writeRecovery(recovery, latest: latest)
        } else if let position {
            var fields = positionFields(position)
            buffer.writeBuffer(&fields)
        }
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"joined","room":R,"id":X}`
    public static func joined(room: String, id: RawJSON?) -> ByteBuffer {
        roomReply(type: #"{"type":"joined","room":"#, room: room, id: id)
    }

    /// `{"type":"joined","room":R,"id":X,"offset":O,"epoch":E}`: the reply to a `join` without
    /// `since`. Every message of the room after this position reaches the connection, so a
    /// client that has not received a message of the room yet still has a position to resume
    /// from after a reconnect.
    public static func joined(room: String, id: RawJSON?, at position: StreamPosition) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"joined","room":"#)
        buffer.writeJSONString(room)
        buffer.writeID(id)
        var fields = positionFields(position)
        buffer.writeBuffer(&fields)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"left","room":R,"id":X}`
    public static func left(room: String, id: RawJSON?) -> ByteBuffer {
        roomReply(type: #"{"type":"left","room":"#, room: room, id: id)
    }

    /// Why the server tells a connection, unasked, that it left or joined a room.
    public enum MembershipNoticeReason: String, Sendable {
        /// The connection's token no longer allows a room the user joined themselves: the
        /// connection receives and may use it no more (the membership itself stays).
        case revoked
        /// A refreshed token allows such a room again.
        case restored
    }

    /// `{"type":"left","room":R,"reason":WHY}`, sent unasked.
    public static func left(room: String, reason: MembershipNoticeReason) -> ByteBuffer {
        notice(type: #"{"type":"left","room":"#, room: room, reason: reason)
    }

    /// `{"type":"joined","room":R,"reason":WHY}`, sent unasked.
    public static func joined(room: String, reason: MembershipNoticeReason) -> ByteBuffer {
        notice(type: #"{"type":"joined","room":"#, room: room, reason: reason)
    }

    private static func notice(type prefix: StaticString, room: String, reason: MembershipNoticeReason) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(prefix)
        buffer.writeJSONString(room)
        buffer.writeStaticString(#","reason":"#)
        buffer.writeJSONString(reason.rawValue)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"refreshed","expires":EXP,"id":X}`: the connection now runs on the new token
    /// (`expires` omitted for a token without `exp`).
    public static func refreshed(expires: Int64?, id: RawJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"refreshed""#)
        if let expires {
            buffer.writeStaticString(#","expires":"#)
            buffer.writeString(String(expires))
        }
        buffer.writeID(id)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"token_expiring","expires":EXP}`: send `refresh` before `EXP` (seconds since
    /// 1970), or the connection is closed with 4001 "token expired".
    public static func tokenExpiring(expires: Int64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"token_expiring","expires":"#)
        buffer.writeString(String(expires))
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"ok","id":X}`
    /// `{"type":"pong","id":X}`: the answer to a client's `ping` frame.
    public static func pong(id: RawJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"pong""#)
        buffer.writeID(id)
        buffer.writeStaticString("}")
        return buffer
    }

    public static func ok(id: RawJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"ok""#)
        buffer.writeID(id)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"error","id":X,"code":CODE,"message":TEXT}`
    public static func error(_ code: ErrorCode, message: String, id: RawJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"error""#)
        buffer.writeID(id)
        buffer.writeStaticString(#","code":"#)
        buffer.writeJSONString(code.rawValue)
        buffer.writeStaticString(#","message":"#)
        buffer.writeJSONString(message)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"presence","room":R,"members":[...],"online":[...],"id":X}`
    public static func presence(room: String, members: [String], online: [String], id: RawJSON?) -> ByteBuffer {
        var buffer = presenceLists(type: #"{"type":"presence","room":"#, room: room, members: members, online: online)
        buffer.writeID(id)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":T,"room":R,"members":[...],"online":[...]`, unclosed: the start of a presence
    /// reply or state.
    private static func presenceLists(type: StaticString, room: String, members: [String], online: [String]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(type)
        buffer.writeJSONString(room)
        buffer.writeStaticString(#","members":"#)
        buffer.writeJSONStringArray(members)
        buffer.writeStaticString(#","online":"#)
        buffer.writeJSONStringArray(online)
        return buffer
    }

    /// `{"type":"presence_state","room":R,"members":[...],"online":[...]}`: a watched room's
    /// presence, sent unasked after a join; the `presence_change` frames after it apply to it.
    /// With `info` (users' token `info` claims, JSON objects, checked by the caller):
    /// `"info":{"USER":{...},...}`.
    public static func presenceState(room: String, members: [String], online: [String], info: [(user: String, info: String)] = []) -> ByteBuffer {
        var buffer = presenceLists(type: #"{"type":"presence_state","room":"#, room: room, members: members, online: online)
        buffer.writePresenceInfo(info)
        buffer.writeStaticString("}")
        return buffer
    }

    /// `{"type":"presence_change","room":R,"joined":[...],"left":[...],"online":[...],"offline":[...][,"omitted":N]}`:
    /// what changed in a room's presence over one window, sent unasked to its members.
    /// `omitted` counts names left out to bound the frame.
    public static func presenceChange(
        room: String, joined: [String], left: [String], online: [String], offline: [String], omitted: Int, info: [(user: String, info: String)] = []
    ) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"presence_change","room":"#)
        buffer.writeJSONString(room)
        buffer.writeStaticString(#","joined":"#)
        buffer.writeJSONStringArray(joined)
        buffer.writeStaticString(#","left":"#)
        buffer.writeJSONStringArray(left)
        buffer.writeStaticString(#","online":"#)
        buffer.writeJSONStringArray(online)
        buffer.writeStaticString(#","offline":"#)
        buffer.writeJSONStringArray(offline)
        if omitted > 0 {
            buffer.writeStaticString(#","omitted":"#)
            buffer.writeString(String(omitted))
        }
        buffer.writePresenceInfo(info)
        buffer.writeStaticString("}")
        return buffer
    }

    /// A delivery: `{"type":"message","scope":S[,"room":R][,"from":U][,"ack":true][,"ts":MS],"data":ANY}`.
    public static func message(scope: Scope, from sender: String?, data: RawJSON, requiresAck: Bool = false, acceptedAt: Int64? = nil) -> ByteBuffer {
        messageParts(scope: scope, from: sender, data: data, requiresAck: requiresAck, acceptedAt: acceptedAt).frame
    }

    /// `,"offset":O,"epoch":E`, the fields a broker inserts at a message's `positionIndex`.
    public static func positionFields(_ position: StreamPosition) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(32 + position.epoch.utf8.count)
        buffer.writeStaticString(#","offset":"#)
        buffer.writeString(String(position.offset))
        buffer.writeStaticString(#","epoch":"#)
        buffer.writeJSONString(position.epoch)
        return buffer
    }

    /// `{"type":"joined","room":R,"id":X,"recovered":B[,"reason":WHY],"offset":O,"epoch":E}`:
    /// the reply to a `join` with `since`; `offset` and `epoch` are the room's latest position.
    public static func joined(room: String, id: RawJSON?, recovery: Recovery, latest: StreamPosition) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"type":"joined","room":"#)
        buffer.writeJSONString(room)
        buffer.writeID(id)
        buffer.writeRecovery(recovery, latest: latest)
        buffer.writeStaticString("}")
        return buffer
    }

    /// The message frame, and where `,"offset":O,"epoch":E` goes (just before `,"ts":` or `,"data":`).
    /// `requiresAck` marks a message the client must acknowledge (`"ack":true`): without the
    /// mark a client could not tell which messages the server keeps until acknowledged.
    /// `acceptedAt` (milliseconds since 1970) is when the publishing node took the message, written
    /// as `"ts"` so that a message replayed from history shows when it was sent, not when it arrived.
    public static func messageParts(scope: Scope, from sender: String?, data: RawJSON, requiresAck: Bool = false, acceptedAt: Int64? = nil) -> (
        frame: ByteBuffer, positionIndex: Int
    ) {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(64 + data.bytes.readableBytes + (sender?.utf8.count ?? 0))
        switch scope {
        case .all:
            buffer.writeStaticString(#"{"type":"message","scope":"all""#)
        case .user:
            buffer.writeStaticString(#"{"type":"message","scope":"user""#)
        case .room(let room):
            buffer.writeStaticString(#"{"type":"message","scope":"room","room":"#)
            buffer.writeJSONString(room)
        }
        if let sender {
            buffer.writeStaticString(#","from":"#)
            buffer.writeJSONString(sender)
        }
        if requiresAck { buffer.writeStaticString(#","ack":true"#) }
        let positionIndex = buffer.writerIndex
        if let acceptedAt {
            buffer.writeStaticString(#","ts":"#)
            buffer.writeString(String(acceptedAt))
        }
        buffer.writeStaticString(#","data":"#)
        var data = data.bytes
        buffer.writeBuffer(&data)
        buffer.writeStaticString("}")
        return (buffer, positionIndex)
    }

    private static func roomReply(type prefix: StaticString, room: String, id: RawJSON?) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(prefix)
        buffer.writeJSONString(room)
        buffer.writeID(id)
        buffer.writeStaticString("}")
        return buffer
    }
}

/// How a delivered message was addressed, as the `scope` field of a `message` frame says.
public enum Scope: Sendable, Hashable {
    case all
    case room(String)
    case user
}

extension ByteBuffer {
    /// `,"recovered":B[,"reason":WHY],"offset":L,"epoch":E`
    fileprivate mutating func writeRecovery(_ recovery: Recovery, latest: StreamPosition) {
        writeStaticString(recovery == .recovered ? #","recovered":true"# : #","recovered":false"#)
        if let reason = recovery.reason {
            writeStaticString(#","reason":"#)
            writeJSONString(reason)
        }
        var position = ServerFrame.positionFields(latest)
        writeBuffer(&position)
    }

    /// `,"info":{"USER":INFO,...}`, nothing when empty. Each INFO is a JSON object the caller
    /// checked.
    fileprivate mutating func writePresenceInfo(_ info: [(user: String, info: String)]) {
        guard !info.isEmpty else { return }
        writeStaticString(#","info":{"#)
        for (index, entry) in info.enumerated() {
            if index > 0 { writeStaticString(",") }
            writeJSONString(entry.user)
            writeStaticString(":")
            writeString(entry.info)
        }
        writeStaticString("}")
    }

    fileprivate mutating func writeID(_ id: RawJSON?) {
        guard var bytes = id?.bytes else { return }
        writeStaticString(#","id":"#)
        writeBuffer(&bytes)
    }
}

extension ServerFrame {
    /// The `ts` of a `message` frame built by ``messageParts(scope:from:data:requiresAck:acceptedAt:)``
    /// (milliseconds since 1970), or `nil` when it has none.
    ///
    /// Reads only the header: `ts` comes before `"data"`, and a raw `"` never occurs inside a
    /// JSON string, so the first `,"ts":` before `,"data":` is the field itself.
    public static func acceptedAt(ofMessage frame: ByteBuffer) -> Int64? {
        frame.withUnsafeReadableBytes { bytes -> Int64? in
            let ts = Array(#","ts":"#.utf8)
            let data = Array(#","data":"#.utf8)
            var index = 0
            // Names are at most a few hundred bytes: the header is short.
            let end = min(bytes.count, 1024)
            while index + ts.count <= end {
                if bytes[index] == UInt8(ascii: ","), index + 1 < end, bytes[index + 1] == UInt8(ascii: "\"") {
                    if matches(bytes, at: index, data) { return nil }
                    if matches(bytes, at: index, ts) {
                        var value: Int64 = 0
                        var cursor = index + ts.count
                        var digits = 0
                        while cursor < bytes.count, digits < 16, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[cursor]) {
                            value = value * 10 + Int64(bytes[cursor] - UInt8(ascii: "0"))
                            cursor += 1
                            digits += 1
                        }
                        return digits > 0 ? value : nil
                    }
                }
                index += 1
            }
            return nil
        }
    }

    private static func matches(_ bytes: UnsafeRawBufferPointer, at index: Int, _ pattern: [UInt8]) -> Bool {
        guard index + pattern.count <= bytes.count else { return false }
        for offset in 0..<pattern.count where bytes[index + offset] != pattern[offset] { return false }
        return true
    }
}
