import Foundation
import HTTPTypes
import HeraldWire
import Hummingbird
import NIOCore

/// JSON responses of the HTTP API (not a hot path: Foundation's encoder is fine here).
enum JSONBody {
    static func response(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    static func errorBody(code: String, message: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString(#"{"error":"#)
        buffer.writeJSONString(code)
        buffer.writeStaticString(#","message":"#)
        buffer.writeJSONString(message)
        buffer.writeStaticString("}")
        return buffer
    }
}
