public import HeraldWire

/// A room of a ``HeraldClient`` (`client.room("lobby")`): joining, publishing, presence and its messages.
///
/// Rooms are joined by users, and the client keeps the application's rooms joined: between
/// ``join()`` and ``leave()``, every new connection re-joins the room from the last processed
/// offset, so the room's ``messages`` continue with no gap and no duplicate (or a
/// ``HeraldEvent/recoveryFailed(_:)`` says what could not be replayed).
public struct HeraldRoom: Sendable {
    /// The room's name.
    public let name: String
    let core: ClientCore

    /// Joins the room, resuming from the last processed position when there is one.
    ///
    /// A refused join (`forbidden`, `bad_request`, `limit_exceeded`) is not retried on reconnect;
    /// one that timed out or whose connection died still is.
    @discardableResult
    public func join() async throws(HeraldClientError) -> JoinResult {
        setJoined(true)
        do {
            let reply = try await core.request(.join(name))
            return JoinResult(recovered: reply.bool("recovered"), reason: reply.string("reason"), latest: reply.position)
        } catch {
            if !["timeout", "closed", "disconnected"].contains(error.code) { setJoined(false) }
            throw error
        }
    }

    /// Leaves the room: its messages stop, and reconnects no longer re-join it.
    public func leave() async throws(HeraldClientError) {
        setJoined(false)
        _ = try await core.request(.leave(name))
    }

    /// Publishes `data` to the room's members (the server may require membership: `not_a_member`).
    public func publish(_ data: RawJSON) async throws(HeraldClientError) {
        _ = try await core.request(.publish(room: name, data: data))
    }

    /// Publishes `value`, encoded as JSON.
    public func publish<T: Encodable>(_ value: T) async throws(HeraldClientError) {
        try await publish(RawJSON(encoding: value))
    }

    /// The room's members and which of them are online (the user must be a member: `not_a_member`).
    public func presence() async throws(HeraldClientError) -> Presence {
        let reply = try await core.request(.presence(name))
        return Presence(members: reply.strings("members") ?? [], online: reply.strings("online") ?? [])
    }

    /// A new stream of the room's messages, with the buffering of ``HeraldClient/messages``.
    public var messages: AsyncStream<HeraldMessage> {
        let stream = core.locked { state, _ in state.rooms[name]?.stream }
        guard let stream else { return AsyncStream { $0.finish() } }
        return HeraldClient.subscribe(stream, core: core, what: "room \(name) messages")
    }

    /// The room's presence as the server's presence events keep it (`nil` before the first;
    /// each update is also a ``HeraldEvent/presence(_:)`` event).
    public var presenceState: PresenceUpdate? { core.locked { state, _ in state.rooms[name]?.presence } }

    /// Whether the application is in the room (between ``join()`` and ``leave()``).
    public var isJoined: Bool { core.locked { state, _ in state.rooms[name]?.joined ?? false } }

    /// The position the next join resumes from.
    public var position: StreamPosition? { core.locked { state, _ in state.positions.resume(.room(name)) } }

    private func setJoined(_ joined: Bool) {
        core.locked { state, _ in
            if state.rooms[name] == nil {
                state.rooms[name] = ClientCore.RoomEntry(
                    stream: StreamFanOut(policy: .oldest(core.configuration.messageBufferSize), limit: core.configuration.maxSubscribers))
            }
            state.rooms[name]?.joined = joined
        }
    }
}
