public import Herald
import HeraldRedisClient
import HeraldWire
public import NIOCore

/// The `AcknowledgementStore` of ``RedisBroker``: per user, a sorted set of the waiting
/// messages' `EPOCH:OFFSET` by deadline, and a hash of their frames (`INDEX\nFRAME`: where the
/// position goes, then the frame without it). The broker's publish script adds to both in the
/// step that assigns the offset; this store reads them (in batches, for connects) and removes
/// acknowledged and expired ones.
public final class RedisAcknowledgementStore: AcknowledgementStore {
    private let backplane: RedisBackplane
    /// Unacknowledged messages of users connecting, read in batches.
    private let reads: BatchedReader<[HistoryEntry]>

    public init(backplane: RedisBackplane) {
        self.backplane = backplane
        let layout = backplane.layout
        let client = backplane.client
        let shards = backplane.shards
        self.reads = BatchedReader { users in
            if let shards {
                // Sharded: each user's keys are in the slot of the user's channel; one call per
                // user, pipelined per master.
                let calls = users.map { user in
                    RedisClusterClient.RoutedCommand(
                        .script(Self.unacknowledgedOfUsersScript, keys: [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user)], arguments: []))
                }
                let replies = shards.submit(pipeline: calls)
                return EventLoopFuture.whenAllSucceed(replies, on: replies[0].eventLoop).flatMapThrowing { replies in
                    try replies.map { reply in
                        guard case .array(let lists?) = reply, lists.count == 1, case .array(let items?) = lists[0] else {
                            throw RedisError.unexpectedReply("Redis answered the unacknowledged script with \(reply)")
                        }
                        return Self.entries(items)
                    }
                }
            }
            let keys = users.flatMap { [layout.unacknowledgedKey($0), layout.unacknowledgedFramesKey($0)] }
            return client.evaluate(Self.unacknowledgedOfUsersScript, keys: keys, arguments: [ByteBuffer]())
                .flatMapThrowing { reply in
                    guard case .array(let lists?) = reply, lists.count == users.count else {
                        throw RedisError.unexpectedReply("Redis answered the unacknowledged script with \(reply)")
                    }
                    return try lists.map { list in
                        guard case .array(let items?) = list else { throw RedisError.unexpectedReply("Redis answered the unacknowledged script with \(list)") }
                        return Self.entries(items)
                    }
                }
        }
    }

    static let scripts = [unacknowledgedOfUsersScript, acknowledgeScript]

    /// Batched: every user connecting while a read is at Redis is read with the next one.
    public func unacknowledged(for user: String, on loop: any EventLoop) -> EventLoopFuture<[HistoryEntry]> {
        reads.value(of: user, on: loop).flatMapErrorThrowing { error in
            throw BrokerError("cannot read unacknowledged messages from Redis: \(error)")
        }
    }

    public func acknowledge(user: String, offset: Int64, epoch: String?) async throws(BrokerError) {
        let layout = backplane.layout
        let keys = [layout.unacknowledgedKey(user), layout.unacknowledgedFramesKey(user), layout.streamKey(.user(user))]
        let arguments = [String(offset), epoch ?? ""]
        do {
            if let shards = backplane.shards {
                _ = try await shards.evaluate(Self.acknowledgeScript, keys: keys, arguments: arguments)
            } else {
                _ = try await backplane.client.evaluate(Self.acknowledgeScript, keys: keys, arguments: arguments)
            }
        } catch {
            throw BrokerError("cannot record the acknowledgement in Redis: \(error)")
        }
    }

    /// `{{EPOCH:OFFSET, INDEX\nFRAME}, ...}` as the unacknowledged script answers it. A value
    /// without the index line (written before nodes stamped positions) is a whole frame.
    static func entries(_ items: [RESPValue]) -> [HistoryEntry] {
        items.compactMap { item -> HistoryEntry? in
            guard case .array(let pair?) = item, pair.count == 2, let member = pair[0].string,
                let colon = member.lastIndex(of: ":"), let offset = Int64(member[member.index(after: colon)...]),
                case .bulkString(let value?) = pair[1]
            else { return nil }
            let position = StreamPosition(offset: offset, epoch: String(member[..<colon]))
            let view = value.readableBytesView
            guard view.first != UInt8(ascii: "{"), let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
                return HistoryEntry(position: position, body: value, positionIndex: nil)
            }
            let indexText = String(decoding: view[view.startIndex..<newline], as: UTF8.self)
            let start = newline + 1 - view.startIndex
            let body = value.getSlice(at: value.readerIndex + start, length: value.readableBytes - start)!
            let index = indexText.isEmpty ? nil : Int(indexText)
            if let index, index > body.readableBytes { return nil }
            if index == nil, !indexText.isEmpty { return nil }
            return HistoryEntry(position: position, body: body, positionIndex: index)
        }
    }

    /// KEYS: each user's unacknowledged set and frames, in pairs. For each user, in order:
    /// drops expired messages and answers {{EPOCH:OFFSET, INDEX\nFRAME}, ...}, oldest first.
    /// Users with nothing waiting cost one ZCARD.
    static let unacknowledgedOfUsersScript = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local lists = {}
        for i = 1, #KEYS, 2 do
          local out = {}
          if redis.call('ZCARD', KEYS[i]) > 0 then
            for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now)) do redis.call('HDEL', KEYS[i + 1], member) end
            redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
            for _, member in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
              local frame = redis.call('HGET', KEYS[i + 1], member)
              if frame then out[#out + 1] = {member, frame} end
            end
          end
          lists[#lists + 1] = out
        end
        return lists
        """
    )

    /// KEYS: the user's unacknowledged set and frames, the user channel's stream key. ARGV:
    /// offset, epoch ("" for the channel's current one).
    static let acknowledgeScript = RedisScript(
        """
        local epoch = ARGV[2]
        if epoch == '' then epoch = redis.call('HGET', KEYS[3], 'epoch') or '' end
        local member = epoch .. ':' .. ARGV[1]
        redis.call('HDEL', KEYS[2], member)
        return redis.call('ZREM', KEYS[1], member)
        """
    )
}
