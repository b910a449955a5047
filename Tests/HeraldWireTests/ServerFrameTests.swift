import Foundation
import HeraldWire
import NIOCore
import Testing

@Suite("Server frames")
struct ServerFrameTests {
    func json(_ buffer: ByteBuffer) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
    }

    @Test func messageFramesCarryScopeAndRawData() throws {
        let data = try RawJSON(validating: #"{"k": [1, 2.50]}"#)
        let room = ServerFrame.message(scope: .room("r \"1\""), from: "al\\ice", data: data)
        #expect(String(buffer: room) == #"{"type":"message","scope":"room","room":"r \"1\"","from":"al\\ice","data":{"k": [1, 2.50]}}"#)
        let all = ServerFrame.message(scope: .all, from: nil, data: data)
        #expect(String(buffer: all) == #"{"type":"message","scope":"all","data":{"k": [1, 2.50]}}"#)
        let user = try json(ServerFrame.message(scope: .user, from: "bob", data: try RawJSON(validating: "\"hi\"")))
        #expect(user["scope"] as? String == "user" && user["from"] as? String == "bob" && user["room"] == nil)
    }

    @Test func repliesEchoTheIDAndEscapeText() throws {
        let id = try RawJSON(validating: #"{"a":1}"#)
        #expect(String(buffer: ServerFrame.ok(id: nil)) == #"{"type":"ok"}"#)
        #expect(String(buffer: ServerFrame.ok(id: id)) == #"{"type":"ok","id":{"a":1}}"#)
        let error = try json(ServerFrame.error(.badRequest, message: "bad \u{1} \"thing\"\n", id: id))
        #expect(error["code"] as? String == "bad_request")
        #expect(error["message"] as? String == "bad \u{1} \"thing\"\n")
        let welcome = try json(ServerFrame.welcome(user: "ü", connection: "n-1", node: "n", heartbeat: 25))
        #expect(welcome["type"] as? String == "welcome" && welcome["heartbeat"] as? Int == 25 && welcome["user"] as? String == "ü")
        let presence = try json(ServerFrame.presence(room: "r", members: ["a", "b"], online: ["a"], id: nil))
        #expect(presence["members"] as? [String] == ["a", "b"] && presence["online"] as? [String] == ["a"])
    }

    @Test func everyCloseCodeIsDocumentedInRange() {
        for code in CloseCode.allCases {
            #expect((1000...1015).contains(code.rawValue) || (4000...4999).contains(code.rawValue))
        }
    }
}
