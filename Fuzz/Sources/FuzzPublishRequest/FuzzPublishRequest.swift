// Fuzzes the HTTP API's publishing calls: `PublishRequest.target(path:)` (the route, with the
// percent-encoded room or user name) and `PublishRequest.envelope(body:to:)` (the JSON body).
// HeraldServer internals: `@testable import`.
//
// Input: the request path (as in the request line, query included), a newline, the body.
//
// Checks on the route: a name taken from a path passes the name rules, is the path segment
// itself when it has no `%`, and comes back unchanged when fully percent-encoded into each
// route again; a query never changes the route; only `/api/...` paths are routes; a refused
// name is a 400.
// Checks on the body, for every kind of target: the envelope is built exactly when the body
// is a JSON object with `data`, `ack` (if any) a boolean and true only for a user, `id` (if any)
// a string of 1 to 200 bytes; its frame is then a JSON `message` frame with the right scope and
// room, `ack` only when required, and the body's `data` byte for byte, before and after the
// broker inserts the position fields.
import FuzzSupport
import Herald
import HeraldWire
import NIOCore

@testable import HeraldServer

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPublishRequest(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    let newline = input.firstIndex(of: 0x0A) ?? input.count
    let path = String(decoding: input[..<newline], as: UTF8.self)
    let body = ByteBuffer(bytes: input[min(newline + 1, input.count)...])

    var targets: [DeliveryTarget] = [.all, .room("lobby"), .user("u")]
    if let target = checkRoute(path) { targets.append(target) }
    for target in targets { checkEnvelope(body: body, target: target) }
    return 0
}

enum Route: Equatable {
    case none
    case target(DeliveryTarget)
    case badName
}

func route(_ path: String) -> Route {
    switch PublishRequest.target(path: path) {
    case nil: return .none
    case .success(let target)?: return .target(target)
    case .failure(let error)?:
        invariant(
            error.status == .badRequest && error.code == .badRequest && !error.message.isEmpty, "a refused route answers \(error.status) \(error.message)")
        return .badName
    }
}

/// Checks the route of `path`; returns its target.
func checkRoute(_ path: String) -> DeliveryTarget? {
    let result = route(path)
    let beforeQuery = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
    if !path.contains("?") {
        invariant(route(path + "?x=%zz&y=/api/broadcast") == result, "a query changes the route of \(path.debugDescription)")
    }
    if result != .none {
        invariant(beforeQuery.hasPrefix("/api/"), "\(path.debugDescription) routed")
    }
    let segments = beforeQuery.split(separator: "/", omittingEmptySubsequences: false)
    switch result {
    case .target(.all):
        invariant(beforeQuery == "/api/broadcast", "\(path.debugDescription) routed as a broadcast")
        return .all
    case .target(.room(let name)), .target(.user(let name)):
        invariant(Name.problem(name) == nil, "name \(name.debugDescription) from \(path.debugDescription) fails the name rules: \(Name.problem(name)!)")
        invariant(segments.count == 5, "\(path.debugDescription) routed with \(segments.count) segments")
        if !segments[3].contains("%") {
            invariant(String(segments[3]) == name, "segment \(segments[3].debugDescription) gave the name \(name.debugDescription)")
        }
        let encoded = percentEncoded(name)
        invariant(route("/api/rooms/\(encoded)/publish") == .target(.room(name)), "room \(name.debugDescription) encoded as \(encoded) does not route back")
        invariant(route("/api/users/\(encoded)/send") == .target(.user(name)), "user \(name.debugDescription) encoded as \(encoded) does not route back")
        return PublishRequest.target(path: path).flatMap { try? $0.get() }
    case .badName:
        invariant(segments.count == 5, "\(path.debugDescription) refused with \(segments.count) segments")
        return nil
    case .none:
        return nil
    }
}

/// Every byte but the unreserved ones as `%XX`.
func percentEncoded(_ name: String) -> String {
    var out = ""
    for byte in name.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            out += "%" + hex([byte]).uppercased()
        }
    }
    return out
}

func checkEnvelope(body: ByteBuffer, target: DeliveryTarget) {
    let isUser = if case .user = target { true } else { false }
    // What the API documents, from the body's top-level fields.
    let object = try? JSONObject(parsing: body)
    var acceptable = object?.raw("data") != nil
    var requiresAck = false
    if let object, let kind = object.kind("ack") {
        requiresAck = kind == .bool && object.raw("ack")?.text == "true"
        acceptable = acceptable && kind == .bool && (!requiresAck || isUser)
    }
    var key: String?
    if let object, object.kind("id") != nil {
        switch object.string("id") {
        case .success(let value?) where (1...200).contains(value.utf8.count): key = value
        default: acceptable = false
        }
    }

    let envelope: Envelope
    do {
        envelope = try PublishRequest.envelope(body: body, to: target)
    } catch {
        invariant(!acceptable, "refused an acceptable body for \(target): \(error.message)")
        invariant(error.status == .badRequest && !error.message.isEmpty, "refusal with \(error.status)")
        return
    }
    invariant(acceptable, "accepted a body it should refuse for \(target)")
    invariant(envelope.target == target, "envelope for \(envelope.target), not \(target)")
    invariant(envelope.requiresAck == requiresAck, "requiresAck \(envelope.requiresAck)")
    invariant(envelope.idempotencyKey == key, "idempotency key \(String(describing: envelope.idempotencyKey)) instead of \(String(describing: key))")
    invariant((envelope.positionIndex == nil) == (target == .all), "position index \(String(describing: envelope.positionIndex)) for \(target)")
    let data = object!.raw("data")!
    checkFrame(envelope.frame, target: target, data: data, requiresAck: requiresAck, position: nil)
    if envelope.positionIndex != nil {
        let position = StreamPosition(offset: 42, epoch: "ep\"\u{1}")
        let positioned = envelope.at(position)
        checkFrame(positioned.deliveredFrame, target: target, data: data, requiresAck: requiresAck, position: position)
    }
}

func checkFrame(_ frame: ByteBuffer, target: DeliveryTarget, data: RawJSON, requiresAck: Bool, position: StreamPosition?) {
    guard let message = try? JSONObject(parsing: frame) else {
        invariant(false, "message frame is not a JSON object: \(String(buffer: frame).debugDescription)")
        return
    }
    invariant(message.string("type") == .success("message"), "frame type")
    switch target {
    case .all:
        invariant(message.string("scope") == .success("all") && message.kind("room") == nil, "scope for \(target)")
    case .room(let room):
        invariant(message.string("scope") == .success("room") && message.string("room") == .success(room), "scope for \(target)")
    case .user:
        invariant(message.string("scope") == .success("user") && message.kind("room") == nil, "scope for \(target)")
    }
    invariant(message.raw("data")?.bytes == data.bytes, "data not passed through byte for byte")
    invariant(message.raw("ack")?.text == (requiresAck ? "true" : nil), "ack field \(String(describing: message.raw("ack")))")
    invariant(message.kind("from") == nil, "an API message has a sender")
    if let position {
        invariant(message.integer("offset") == .success(position.offset) && message.string("epoch") == .success(position.epoch), "position fields")
    } else {
        invariant(message.kind("offset") == nil && message.kind("epoch") == nil, "position fields before positioning")
    }
}
