// Fuzzes `ClientFrame.decode` (the WebSocket protocol's client frames) and `Name.problem`.
//
// Input: the text of one client frame (the corpus holds the frames of docs/protocol.md).
//
// Checks on a decoded frame: room and user names pass the name rules; `data` and `id` are
// single JSON values that re-validate to the same bytes; offsets are non-negative; and the
// frame, encoded again (names with `writeJSONString`, `data`/`id` as their raw bytes),
// decodes to an equal frame. An error's `id` is valid JSON.
// Checks on the input taken as a name: an accepted name is 1 to 200 bytes, not space-padded,
// free of controls and U+FFFD, and in NFC (its NFD spelling, when different, is refused, so two
// accepted names are `==` only when their bytes are equal); it survives a round trip through a
// `join` frame, and a refused one makes that frame fail.
import Foundation
import FuzzSupport
import HeraldWire
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientFrame(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    checkFrame(input)
    if input.count <= 4 * Name.maxBytes, let name = String(validating: input, as: UTF8.self) {
        checkName(name)
    }
    return 0
}

func decode(_ bytes: [UInt8]) -> Result<ClientFrame, ClientFrameError> {
    Result { () throws(ClientFrameError) in try ClientFrame.decode(ByteBuffer(bytes: bytes)) }
}

func checkFrame(_ input: [UInt8]) {
    let frame: ClientFrame
    switch decode(input) {
    case .failure(let error):
        if let id = error.id { checkRaw(id, "error id") }
        invariant(!error.message.isEmpty, "error without a message")
        return
    case .success(let decoded):
        frame = decoded
    }
    invariant(isValidUTF8(input), "a frame of invalid UTF-8 decoded")
    if let id = frame.id { checkRaw(id, "id") }
    switch frame.command {
    case .join(let room, let since):
        checkName(room, "room")
        if let since { invariant(since.offset >= 0 || since == .latest, "since offset \(since.offset)") }
    case .leave(let room), .presence(let room):
        checkName(room, "room")
    case .publish(let room, let data):
        checkName(room, "room")
        checkRaw(data, "data")
    case .send(let user, let data):
        checkName(user, "user")
        checkRaw(data, "data")
    case .broadcast(let data):
        checkRaw(data, "data")
    case .ack(let offset, _):
        invariant(offset >= 0, "ack offset \(offset)")
    case .refresh(let token):
        invariant(!token.isEmpty, "refresh with an empty token decoded")
    case .ping:
        break
    }
    let encoded = encode(frame)
    let again = decode(encoded)
    invariant(again == .success(frame), "\(frame) encoded as \(String(decoding: encoded, as: UTF8.self)) decodes as \(again)")
}

func checkName(_ name: String, _ field: String) {
    invariant(Name.problem(name) == nil, "\(field) \(name.debugDescription) decoded, but \(Name.problem(name)!)")
}

func checkRaw(_ raw: RawJSON, _ field: String) {
    let again = try? RawJSON(validating: raw.bytes)
    invariant(again?.bytes == raw.bytes, "\(field) \(hex(raw.bytes)) is not one trimmed JSON value")
}

/// The frame as a client would write it.
func encode(_ frame: ClientFrame) -> [UInt8] {
    var buffer = ByteBuffer()
    func field(_ name: StaticString) {
        buffer.writeStaticString(",\"")
        buffer.writeStaticString(name)
        buffer.writeStaticString("\":")
    }
    func raw(_ value: RawJSON) {
        var bytes = value.bytes
        buffer.writeBuffer(&bytes)
    }
    buffer.writeStaticString(#"{"type":"#)
    switch frame.command {
    case .join(let room, let since):
        buffer.writeJSONString("join")
        field("room")
        buffer.writeJSONString(room)
        if since == .latest {
            field("since")
            buffer.writeStaticString(#""latest""#)
        } else if let since {
            field("since")
            buffer.writeString(#"{"offset":\#(since.offset),"epoch":"#)
            buffer.writeJSONString(since.epoch)
            buffer.writeStaticString("}")
        }
    case .leave(let room):
        buffer.writeJSONString("leave")
        field("room")
        buffer.writeJSONString(room)
    case .presence(let room):
        buffer.writeJSONString("presence")
        field("room")
        buffer.writeJSONString(room)
    case .publish(let room, let data):
        buffer.writeJSONString("publish")
        field("room")
        buffer.writeJSONString(room)
        field("data")
        raw(data)
    case .send(let user, let data):
        buffer.writeJSONString("send")
        field("user")
        buffer.writeJSONString(user)
        field("data")
        raw(data)
    case .broadcast(let data):
        buffer.writeJSONString("broadcast")
        field("data")
        raw(data)
    case .ack(let offset, let epoch):
        buffer.writeJSONString("ack")
        field("offset")
        buffer.writeString(String(offset))
        if let epoch {
            field("epoch")
            buffer.writeJSONString(epoch)
        }
    case .refresh(let token):
        buffer.writeJSONString("refresh")
        field("token")
        buffer.writeJSONString(token)
    case .ping:
        buffer.writeJSONString("ping")
    }
    if let id = frame.id {
        field("id")
        raw(id)
    }
    buffer.writeStaticString("}")
    return Array(buffer.readableBytesView)
}

func checkName(_ name: String) {
    let frame = Array(#"{"type":"join","room":"#.utf8) + jsonString(name) + [UInt8(ascii: "}")]
    let decoded = decode(frame)
    guard Name.problem(name) == nil else {
        if case .success(let frame) = decoded {
            invariant(false, "refused name \(name.debugDescription) joined as \(frame)")
        }
        return
    }
    let utf8 = Array(name.utf8)
    invariant((1...Name.maxBytes).contains(utf8.count), "accepted a name of \(utf8.count) bytes")
    invariant(utf8.first != 0x20 && utf8.last != 0x20, "accepted a name with a leading or trailing space")
    invariant(!name.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }, "accepted a control character in \(name.debugDescription)")
    invariant(!name.unicodeScalars.contains("\u{FFFD}"), "accepted U+FFFD in \(name.debugDescription)")
    invariant(
        !name.unicodeScalars.contains { [0x200B, 0x2060, 0xFEFF, 0x202E, 0x00A0, 0x3000, 0x2028].contains($0.value) },
        "accepted an invisible or blank character in \(name.debugDescription)")
    invariant(utf8.elementsEqual(name._nfcCodeUnits), "accepted a name not in NFC: \(hex(utf8))")
    // One spelling per canonical equivalence class: an accepted name's NFD, when its bytes
    // differ, is `==` to it and must be refused.
    let nfd = name.decomposedStringWithCanonicalMapping
    if !nfd.utf8.elementsEqual(utf8) {
        invariant(Name.problem(nfd) != nil, "both \(hex(utf8)) and its NFD \(hex(nfd.utf8)) are accepted names")
    }
    invariant(decoded == .success(ClientFrame(command: .join(room: name))), "name \(name.debugDescription) in a join frame decodes as \(decoded)")
}

func jsonString(_ string: String) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeJSONString(string)
    return Array(buffer.readableBytesView)
}
