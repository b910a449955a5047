import Foundation
public import Logging
import Synchronization

/// The last warnings and errors a node logged, for the status page ("last errors"): a ring of
/// ``capacity`` entries, filled by a log handler added beside the node's own.
public final class RecentLogEvents: Sendable {
    public struct Entry: Sendable, Encodable, Equatable {
        /// Milliseconds since 1970.
        public var time: Int64
        public var level: String
        public var message: String
    }

    public static let capacity = 20
    private let entries = Mutex<[Entry]>([])

    public init() {}

    /// The entries, oldest first.
    public var all: [Entry] { entries.withLock { $0 } }

    func record(_ level: Logger.Level, _ message: String) {
        // Bounded twice: the ring's length and each message's bytes.
        let text = LogRedaction.redact(message.count > 300 ? String(message.prefix(300)) + "…" : message)
        let entry = Entry(time: Int64(Date().timeIntervalSince1970 * 1000), level: level.rawValue, message: text)
        entries.withLock { entries in
            entries.append(entry)
            if entries.count > Self.capacity { entries.removeFirst(entries.count - Self.capacity) }
        }
    }

    /// `logger` with a handler beside its own that records its warnings and errors here.
    public func capturing(_ logger: Logger) -> Logger {
        var captured = logger
        captured.handler = MultiplexLogHandler([logger.handler, Handler(events: self)])
        captured.logLevel = logger.logLevel
        return captured
    }

    private struct Handler: LogHandler {
        let events: RecentLogEvents
        var logLevel: Logger.Level = .warning
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            guard event.level >= .warning else { return }
            events.record(event.level, event.message.description)
        }
    }
}
