import Histogram
import NIOCore
import Synchronization

/// Counters every receiving connection updates as deliveries arrive, readable from any thread
/// for the progress line; latency goes into one histogram per event loop (merged at the end).
final class ReceiverStatistics: Sendable {
    let framesReceived = Atomic<Int>(0)
    /// Frames that carried a bench payload.
    let deliveries = Atomic<Int>(0)
    let welcomes = Atomic<Int>(0)
    let replies = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
    let closedByServer = Atomic<Int>(0)
    /// Close codes the server sent, counted by code.
    let closeCodes = Mutex<[UInt16: Int]>([:])
    private let histograms: [ObjectIdentifier: LoopHistogram]

    init(group: any EventLoopGroup) {
        var histograms: [ObjectIdentifier: LoopHistogram] = [:]
        for loop in group.makeIterator() { histograms[ObjectIdentifier(loop)] = LoopHistogram() }
        self.histograms = histograms
    }

    /// Records a latency in microseconds; call on `loop`.
    func recordLatency(_ microseconds: UInt64, on loop: any EventLoop) {
        guard let loopHistogram = histograms[ObjectIdentifier(loop)] else { return }
        loopHistogram.histogram.record(microseconds)
        loopHistogram.interval?.record(microseconds)
    }

    /// Starts keeping a second histogram per loop, emptied by each ``takeInterval(group:)``.
    func startIntervals(group: any EventLoopGroup) async {
        for loop in group.makeIterator() {
            guard let loopHistogram = histograms[ObjectIdentifier(loop)] else { continue }
            try? await loop.submit { loopHistogram.interval = LoopHistogram.make() }.get()
        }
    }

    /// The latencies recorded since the last call, every loop's merged (each read and reset on its loop).
    func takeInterval(group: any EventLoopGroup) async -> Histogram<UInt64> {
        var merged = LoopHistogram.make()
        for loop in group.makeIterator() {
            guard let loopHistogram = histograms[ObjectIdentifier(loop)] else { continue }
            let taken = try? await loop.submit { () -> Histogram<UInt64>? in
                defer { loopHistogram.interval?.reset() }
                return loopHistogram.interval
            }.get()
            if let taken = taken.flatMap({ $0 }) { merged.add(taken) }
        }
        return merged
    }

    /// All loops' latencies. Call once receiving has stopped.
    func mergedHistogram() -> Histogram<UInt64> {
        var merged = LoopHistogram.make()
        for loopHistogram in histograms.values { merged.add(loopHistogram.histogram) }
        return merged
    }

    func recordClose(code: UInt16?) {
        closedByServer.add(1, ordering: .relaxed)
        closeCodes.withLock { $0[code ?? 0, default: 0] += 1 }
    }
}

/// A histogram touched only on its own event loop.
final class LoopHistogram: @unchecked Sendable {
    var histogram = LoopHistogram.make()
    /// For `--plot`: what arrived since the sampler last took it.
    var interval: Histogram<UInt64>?

    static func make() -> Histogram<UInt64> {
        // 1 µs to 10 minutes at 3 significant digits.
        Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    }
}
