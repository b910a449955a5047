import Hummingbird
import Logging
import ServiceLifecycle

/// `/metrics`, `/healthz` and `/readyz` on an address of their own (``MetricsEndpoint/separate(host:port:)``),
/// without the API key: for a scraper and probes on a private network, never the public port.
struct MetricsListener: Service {
    let host: String
    let port: Int
    let node: HeraldNode
    let metrics: NodeMetrics
    let logger: Logger

    func run() async throws {
        let router = Router()
        router.middlewares.add(JSONErrorMiddleware())
        ProbeRoutes(node: node).register(on: router)
        router.getAndHead("/metrics") { [metrics] _, _ in
            try await metrics.response()
        }
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .notice)  // Hummingbird logs each start at info
        let application = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "herald-metrics"),
            onServerRunning: { [logger, host] channel in
                let bound = channel.localAddress?.port ?? 0
                logger.info("metrics on http://\(host):\(bound)/metrics (also /healthz, /readyz)", metadata: ["metrics_port": "\(bound)"])
            },
            logger: quiet
        )
        try await application.runService()
    }
}
