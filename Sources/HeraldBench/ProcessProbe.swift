import Foundation

/// CPU time and resident memory of server processes, read from /proc.
public struct ProcessProbe: Sendable {
    public let pids: [Int32]

    public init(pids: [Int32]) {
        self.pids = pids
    }

    public struct Sample: Sendable, Codable, Equatable {
        /// User + system CPU seconds, summed over the processes.
        public var cpuSeconds: Double
        /// Resident set size in bytes, summed over the processes.
        public var rssBytes: Int
    }

    /// `nil` when no pid was given or /proc cannot be read.
    public func sample() -> Sample? {
        guard !pids.isEmpty else { return nil }
        var cpu = 0.0
        var rss = 0
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        for pid in pids {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            else { return nil }
            // Fields after the parenthesised command name: utime and stime are fields 14 and 15.
            guard let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
            cpu += (utime + stime) / ticks
            for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
                let parts = line.split(separator: " ", omittingEmptySubsequences: true)
                if parts.count >= 2, let kilobytes = Int(parts[1]) { rss += kilobytes * 1024 }
            }
        }
        return Sample(cpuSeconds: cpu, rssBytes: rss)
    }
}
