import Foundation
import Herald
import HeraldServer
import HeraldWire
import Logging

// A backend that embeds Herald on one node (in-memory broker and roster) and pushes its own
// events into a room: every client that joins "clock" gets the time each second.
var configuration = HeraldConfiguration()
configuration.port = Int(ProcessInfo.processInfo.environment["PORT"] ?? "") ?? 8080
let logger = Logger(label: "clock")
let hub = HeraldServer.makeHub(configuration: configuration, logger: logger)
let broker = LocalBroker(deliveringTo: hub, history: configuration.history)
let roster = LocalRoster(limits: configuration.hub, notifying: hub)
let server = try await HeraldServer(configuration: configuration, hub: hub, broker: broker, roster: roster, services: [broker], logger: logger)

let clock = Task {
    while !Task.isCancelled {
        let now = try RawJSON(validating: "{\"now\":\(Date().timeIntervalSince1970)}")
        _ = try? await broker.publish(.message(to: .room("clock"), from: nil, data: now), on: hub.anyEventLoop)
        try await Task.sleep(for: .seconds(1))
    }
}
try await server.run { port in logger.info("listening on \(port)") }  // until SIGTERM or SIGINT
clock.cancel()
