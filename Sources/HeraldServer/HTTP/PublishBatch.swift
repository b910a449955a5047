import HTTPTypes
import Herald
import HeraldWire
import NIOCore

/// `POST /api/publish`: several messages in one request, each to its own target.
///
/// ```json
/// {"commands":[{"room":"lobby","data":{"text":"hi"},"id":"m-1"},
///              {"user":"ada","data":"ping","ack":true},
///              {"all":true,"data":"maintenance at 5"}]}
/// ```
///
/// Answered `200 {"results":[…]}`, one result per command in order: `{"status":202,"accepted":true}`
/// or `{"status":400|503|507,"error":CODE,"message":TEXT}`. A command that is malformed is
/// reported and the others are still published (partial success, never all-or-nothing): a
/// backend retries only the commands that failed, and with their `id` a retry of one that did
/// go through is a no-op. The whole request is refused (`400`) only when it is not a batch at
/// all: not a JSON object, no `commands` array, more than ``PublishCommand/maxBatch``, or no
/// command.
enum PublishBatch {
    /// The commands of a batch body: each an envelope, or why it cannot be published (400).
    static func commands(body: ByteBuffer) throws(APIError) -> [Result<Envelope, APIError>] {
        let object: JSONObject
        do {
            object = try JSONObject(parsing: body)
        } catch {
            throw APIError(.badRequest, code: .badRequest, message: "body must be a JSON object {\"commands\":[…]}: \(error.message)")
        }
        let elements: [RawJSON]
        switch object.array("commands", limit: PublishCommand.maxBatch) {
        case .failure where object.kind("commands") == .array:
            throw APIError(
                .badRequest, code: .badRequest,
                message: "more than \(PublishCommand.maxBatch) commands in one batch; at most \(PublishCommand.maxBatch): split it")
        case .failure:
            throw APIError(.badRequest, code: .badRequest, message: "field \"commands\" must be an array of commands")
        case .success(nil):
            throw APIError(.badRequest, code: .badRequest, message: "missing field \"commands\": {\"commands\":[{\"room\":R,\"data\":…},…]}")
        case .success(let array?):
            elements = array
        }
        switch PublishCommand.batch(elements) {
        case .failure(let error):
            throw APIError(.badRequest, code: .badRequest, message: error.message)
        case .success(let commands):
            return commands.enumerated().map { index, command in
                command.mapError { APIError(.badRequest, code: .badRequest, message: "command \(index): \($0.message)") }
            }
        }
    }

    /// `{"results":[…]}` for the commands' outcomes, in order.
    static func resultsBody(_ outcomes: [Result<Void, APIError>]) -> ByteBuffer {
        var body = ByteBuffer()
        body.reserveCapacity(16 + outcomes.count * 32)
        body.writeStaticString(#"{"results":["#)
        for (index, outcome) in outcomes.enumerated() {
            if index > 0 { body.writeStaticString(",") }
            switch outcome {
            case .success:
                body.writeStaticString(#"{"status":202,"accepted":true}"#)
            case .failure(let error):
                body.writeString(#"{"status":\#(error.status.code),"error":"#)
                body.writeJSONString(error.code.rawValue)
                body.writeStaticString(#","message":"#)
                body.writeJSONString(error.message)
                body.writeStaticString("}")
            }
        }
        body.writeStaticString("]}")
        return body
    }
}
