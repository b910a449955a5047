import Foundation

/// `herald bench --plot FILE.svg`: the run's timeline as a self-contained SVG, deliveries per
/// second above and latency percentiles (p50, p99, p99.9; logarithmic) below, against seconds
/// since publishing began.
public enum BenchPlot {
    public static func svg(_ report: BenchReport, title: String? = nil) -> String {
        let points = report.timeline ?? []
        let width = 760.0
        let left = 70.0, right = 20.0
        let plotWidth = width - left - right
        let rateTop = 60.0, rateHeight = 150.0
        let latencyTop = rateTop + rateHeight + 60, latencyHeight = 190.0
        let height = latencyTop + latencyHeight + 50
        let maxSeconds = Swift.max(points.last?.seconds ?? 1, 0.001)
        func x(_ seconds: Double) -> Double { left + seconds / maxSeconds * plotWidth }

        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" \
            font-family="system-ui, sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="#ffffff"/>

            """
        let heading = title ?? "\(report.scenario) — \(report.target)"
        svg += text(left, 22, heading, size: 15, weight: "600")
        svg += text(
            left, 40,
            "\(report.connectionsOK) connections · \(report.deliveries.received) deliveries in \(format(report.seconds)) s · "
                + "p50 \(report.latency.map { format($0.p50) } ?? "–") ms, p99 \(report.latency.map { format($0.p99) } ?? "–") ms"
                + (report.serverCPUMicrosecondsPerDelivery.map { " · server \(format($0)) µs CPU/delivery" } ?? ""),
            color: "#555")

        // Deliveries per second.
        let maxRate = niceCeiling(points.map(\.deliveriesPerSecond).max() ?? 1)
        func yRate(_ value: Double) -> Double { rateTop + rateHeight - value / maxRate * rateHeight }
        svg += panel(left, rateTop, plotWidth, rateHeight, label: "deliveries / s")
        for tick in stride(from: 0.0, through: maxRate, by: maxRate / 4) {
            svg += gridLine(left, yRate(tick), plotWidth) + text(left - 6, yRate(tick) + 4, format(tick), anchor: "end", color: "#555")
        }
        svg += polyline(points.map { (x($0.seconds), yRate($0.deliveriesPerSecond)) }, color: "#1a7f46")

        // Latency percentiles, log scale.
        let latencies = points.flatMap { [$0.p50, $0.p99, $0.p999].compactMap { $0 } }.filter { $0 > 0 }
        let low = pow(10, floor(log10(Swift.max(latencies.min() ?? 0.1, 0.001))))
        let high = pow(10, ceil(log10(Swift.max(latencies.max() ?? 1, low * 10))))
        func yLatency(_ value: Double) -> Double {
            let clamped = Swift.min(Swift.max(value, low), high)
            return latencyTop + latencyHeight - (log10(clamped) - log10(low)) / (log10(high) - log10(low)) * latencyHeight
        }
        svg += panel(left, latencyTop, plotWidth, latencyHeight, label: "latency, ms (log)")
        var decade = low
        while decade <= high * 1.0001 {
            svg += gridLine(left, yLatency(decade), plotWidth) + text(left - 6, yLatency(decade) + 4, format(decade), anchor: "end", color: "#555")
            decade *= 10
        }
        let series: [(String, String, KeyPath<TimelinePoint, Double?>)] = [
            ("p50", "#2f5fd0", \.p50), ("p99", "#c07a00", \.p99), ("p99.9", "#b3261e", \.p999),
        ]
        for (index, (name, color, path)) in series.enumerated() {
            let line = points.compactMap { point in point[keyPath: path].map { (x(point.seconds), yLatency($0)) } }
            svg += polyline(line, color: color)
            let legendX = left + plotWidth - 180 + Double(index) * 60
            svg += "<rect x=\"\(legendX)\" y=\"\(latencyTop - 14)\" width=\"14\" height=\"3\" fill=\"\(color)\"/>"
            svg += text(legendX + 18, latencyTop - 10, name, color: "#333")
        }

        // Time axis under both panels.
        let step = niceCeiling(maxSeconds / 6)
        for second in stride(from: 0.0, through: maxSeconds + 1e-9, by: step) {
            svg += text(x(second), rateTop + rateHeight + 16, format(second), anchor: "middle", color: "#555")
            svg += text(x(second), latencyTop + latencyHeight + 16, format(second), anchor: "middle", color: "#555")
        }
        svg += text(left + plotWidth / 2, latencyTop + latencyHeight + 34, "seconds since publishing began", anchor: "middle", color: "#555")
        svg += "</svg>\n"
        return svg
    }

    private static func panel(_ x: Double, _ y: Double, _ width: Double, _ height: Double, label: String) -> String {
        "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(width)\" height=\"\(height)\" fill=\"none\" stroke=\"#c8ccd6\"/>"
            + text(x, y - 6, label, weight: "600", color: "#333")
    }

    private static func gridLine(_ x: Double, _ y: Double, _ width: Double) -> String {
        "<line x1=\"\(x)\" y1=\"\(round(y * 10) / 10)\" x2=\"\(x + width)\" y2=\"\(round(y * 10) / 10)\" stroke=\"#eceef3\"/>"
    }

    private static func polyline(_ points: [(Double, Double)], color: String) -> String {
        guard !points.isEmpty else { return "" }
        let coordinates = points.map { "\(round($0.0 * 10) / 10),\(round($0.1 * 10) / 10)" }.joined(separator: " ")
        return "<polyline points=\"\(coordinates)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.6\" stroke-linejoin=\"round\"/>\n"
    }

    private static func text(
        _ x: Double, _ y: Double, _ content: String, anchor: String = "start", size: Int = 11, weight: String = "400", color: String = "#111"
    ) -> String {
        let escaped = content.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
            of: ">", with: "&gt;")
        return
            "<text x=\"\(round(x * 10) / 10)\" y=\"\(round(y * 10) / 10)\" text-anchor=\"\(anchor)\" font-size=\"\(size)\" font-weight=\"\(weight)\" fill=\"\(color)\">\(escaped)</text>\n"
    }

    /// 1, 2 or 5 times a power of ten, at least `value`.
    static func niceCeiling(_ value: Double) -> Double {
        guard value > 0, value.isFinite else { return 1 }
        let magnitude = pow(10, floor(log10(value)))
        for factor in [1.0, 2, 5, 10] where factor * magnitude >= value { return factor * magnitude }
        return 10 * magnitude
    }

    static func format(_ value: Double) -> String {
        if value >= 10_000 { return String(format: "%.0fk", value / 1000) }
        if value >= 100 || value == value.rounded() { return String(format: "%.0f", value) }
        if value >= 1 { return String(format: "%.1f", value) }
        return String(format: "%.2g", value)
    }
}
