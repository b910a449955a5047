import HeraldRedis
import HeraldRedisClient
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// The batching behind a connect storm, without Redis: reads gathered while others are in
/// flight, shared per key, failures handed to every waiter.
@Suite("Batched reads")
struct BatchedReaderTests {
    /// Records each batch and answers it when the test says so.
    final class FakeStore: Sendable {
        let batches = Mutex<[[String]]>([])
        private let pending = Mutex<[(keys: [String], promise: EventLoopPromise<[String]>)]>([])
        let loop = MultiThreadedEventLoopGroup.singleton.any()

        func read(_ keys: [String]) -> EventLoopFuture<[String]> {
            let promise = loop.makePromise(of: [String].self)
            batches.withLock { $0.append(keys) }
            pending.withLock { $0.append((keys, promise)) }
            return promise.futureResult
        }

        /// Answers the oldest batch still waiting with each key's value ("v-KEY").
        func answerOldest() -> Bool {
            guard let (keys, promise) = pending.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { return false }
            promise.succeed(keys.map { "v-" + $0 })
            return true
        }
    }

    @Test func readsArrivingWhileOneIsInFlightLeaveTogetherInTheNextBatch() async throws {
        let store = FakeStore()
        let reader = BatchedReader<String>(maxBatch: 100, maxInFlight: 1) { store.read($0) }
        let loop = store.loop
        let first = reader.value(of: "a", on: loop)
        // While "a" is at the store: 250 connects, two of them for "b".
        var later = (0..<248).map { reader.value(of: "k\($0)", on: loop) }
        later.append(reader.value(of: "b", on: loop))
        later.append(reader.value(of: "b", on: loop))
        #expect(store.batches.withLock { $0 } == [["a"]])
        #expect(reader.waitingCount == 249)
        // Each answer lets the next batch leave: 249 distinct keys in batches of at most 100.
        let deadline = ContinuousClock.now + .seconds(10)
        while reader.waitingCount > 0 || store.batches.withLock({ $0.count }) < 4 || store.answerOldest() {
            if !store.answerOldest() { try await Task.sleep(for: .milliseconds(5)) }
            try #require(ContinuousClock.now < deadline, "the batches did not all leave within 10 s")
        }
        for future in later { _ = try await future.get() }
        #expect(try await first.get() == "v-a")
        #expect(try await later.last!.get() == "v-b")
        let sizes = store.batches.withLock { $0.map(\.count) }
        #expect(sizes == [1, 100, 100, 49], "\(sizes)")
        #expect(reader.waitingCount == 0)
    }

    @Test func aFailedBatchFailsItsWaitersAndTheNextBatchStillLeaves() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let calls = Atomic<Int>(0)
        let reader = BatchedReader<Int>(maxInFlight: 1) { keys in
            calls.add(1, ordering: .relaxed).newValue == 1
                ? loop.makeFailedFuture(RedisError.transport("Redis did not answer"))
                : loop.makeSucceededFuture(keys.map(\.count))
        }
        await #expect(throws: RedisError.self) { _ = try await reader.value(of: "x", on: loop).get() }
        #expect(try await reader.value(of: "abc", on: loop).get() == 3)
    }

    @Test func anAnswerOfTheWrongLengthFailsRatherThanMisassigning() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let reader = BatchedReader<Int>(maxInFlight: 1) { _ in loop.makeSucceededFuture([]) }
        await #expect(throws: RedisError.self) { _ = try await reader.value(of: "x", on: loop).get() }
    }
}
