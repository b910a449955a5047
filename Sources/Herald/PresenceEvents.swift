import HeraldWire
public import Logging
import NIOCore
public import ServiceLifecycle
import Synchronization

/// Which rooms tell their members when presence changes (`--presence-events`), and how often.
public struct PresenceEventsConfiguration: Sendable, Equatable {
    /// Exact room names or `prefix*` patterns; `*` is every room.
    public var rooms: [String]
    /// Changes within one window become one event per room: a thousand reconnects in a second
    /// are one frame per member, not a thousand.
    public var window: Duration = .seconds(1)
    /// Names one event lists, over all its lists; past it the rest is only counted (`omitted`),
    /// so a mass change cannot make a frame of megabytes for every member.
    public var maxNamesPerEvent = 1000
    /// Rooms whose presence is read at the same time.
    public var concurrentReads = 8

    public init(rooms: [String], window: Duration = .seconds(1)) {
        self.rooms = rooms
        self.window = window
    }

    /// Whether `room` has presence events.
    public func covers(_ room: String) -> Bool {
        rooms.contains { pattern in pattern.hasSuffix("*") ? room.hasPrefix(pattern.dropLast()) : room == pattern }
    }
}

/// Tells the members of watched rooms connected to this node what changed in their room's
/// presence: `{"type":"presence_change","room":R,"joined":[…],"left":[…],"online":[…],"offline":[…]}`.
///
/// The roster is the truth and every node watches for itself: once per window the notifier
/// asks the roster which rooms may have changed (``Roster/presenceChanges(since:)``, one cheap
/// call), reads the presence of those that have members connected here, compares it with what
/// it read the window before, and hands one frame per changed room to the hub, which writes it
/// to the room's local members whose connection asked for presence events
/// (`?presence_events=true`; encoded once, the same bytes to each). So a
/// cluster needs no extra messages between nodes, a user who reconnects within a window is no
/// change at all, and a thousand users coming online in a window are one frame per member.
/// Memory: one snapshot (members and online users) per watched room with local members.
public final class PresenceNotifier: Service, Sendable {
    private let hub: Hub
    private let roster: any Roster
    public let configuration: PresenceEventsConfiguration
    private let logger: Logger
    /// Events handed to the hub (one per room per window with a change).
    public let eventsSent = Atomic<Int>(0)
    /// Presence reads of rooms.
    public let roomsRead = Atomic<Int>(0)
    /// Connections waiting for a room's `presence_state`, by room, one entry per connection and
    /// room however often it joins (bounded by ``maxPendingStates``: past it a request is
    /// dropped, counted and logged once per window; the client can still ask with `presence`).
    private let pendingStates = Mutex<PendingStates>(PendingStates())
    static let maxPendingStates = 100_000
    /// Windows a request waits for its room to have local members (a join this node has not
    /// applied yet) before it is dropped.
    static let maxPendingWindows = 5

    struct PendingState {
        var connection: any ClientConnection
        var windows = 0
    }

    struct PendingStates {
        var byRoom: [String: [ObjectIdentifier: PendingState]] = [:]
        var count = 0
        var dropped = 0

        mutating func add(_ request: PendingState, room: String) -> Bool {
            let key = ObjectIdentifier(request.connection)
            if byRoom[room]?[key] != nil { return true }
            guard count < PresenceNotifier.maxPendingStates else {
                dropped += 1
                return false
            }
            byRoom[room, default: [:]][key] = request
            count += 1
            return true
        }
    }

    public init(hub: Hub, roster: any Roster, configuration: PresenceEventsConfiguration, logger: Logger = Logger(label: "herald.presence")) {
        self.hub = hub
        self.roster = roster
        self.configuration = configuration
        self.logger = logger
    }

    /// Sends `connection` (which just joined `room`) the room's `presence_state` at the next
    /// window, after that window's `presence_change` and in order with every later one: the
    /// state it gets is the one the next change applies to, so no change falls between a
    /// separate presence read and the first event.
    public func sendState(of room: String, to connection: any ClientConnection) {
        guard configuration.covers(room) else { return }
        _ = pendingStates.withLock { $0.add(PendingState(connection: connection), room: room) }
    }

    /// What the notifier remembers between windows.
    struct Watch {
        var version: String?
        var snapshots: [String: PresenceSnapshot] = [:]
    }

    /// Runs a window after another until graceful shutdown or cancellation.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var watch = Watch()
            while !Task.isCancelled {
                do { try await Task.sleep(for: self.configuration.window) } catch { return }
                await self.tick(&watch)
            }
        }
    }

    /// One window: reads what may have changed and sends what did.
    func tick(_ watch: inout Watch) async {
        // Taken before anything is read: every read below follows these joins.
        let (taken, dropped) = pendingStates.withLock { pending in
            defer { pending = PendingStates() }
            return (pending.byRoom, pending.dropped)
        }
        var pending = taken
        if dropped > 0 {
            logger.warning(
                "presence states not sent: too many joins waiting for one", metadata: ["dropped": "\(dropped)", "limit": "\(Self.maxPendingStates)"])
        }
        defer {
            // States not sent (a failed read, a room not local yet) wait for a later window.
            for (room, requests) in pending {
                for request in requests.values where request.windows < Self.maxPendingWindows {
                    var later = request
                    later.windows += 1
                    _ = pendingStates.withLock { $0.add(later, room: room) }
                }
            }
        }
        // Nobody here asked for presence events: no reads, no snapshots (a server that sends
        // them by default costs nothing to clients that do not use them).
        guard hub.hasPresenceListeners || !pending.isEmpty else {
            watch = Watch()
            return
        }
        let changes: PresenceChanges
        do {
            changes = try await roster.presenceChanges(since: watch.version)
        } catch {
            logger.debug("presence changes not read; trying again next window", metadata: ["error": "\(error)"])
            return
        }
        let watched = hub.localRooms(where: configuration.covers)
        for room in watch.snapshots.keys where !watched.contains(room) { watch.snapshots[room] = nil }
        let toRead = watched.filter { room in changes.rooms?.contains(room) ?? true || watch.snapshots[room] == nil || pending[room] != nil }
        // Joiners of rooms without local members wait a few windows (their join may not be
        // applied here yet; or they left, or disconnected: then they get nothing).
        var complete = true
        for (room, read) in await readPresence(of: Array(toRead)) {
            guard let now = read else {
                complete = false
                continue
            }
            if let before = watch.snapshots[room], let diff = PresenceDiff(from: before, to: now, maxNames: configuration.maxNamesPerEvent) {
                let info = await info(of: diff.joined + diff.online)
                hub.deliverPresenceEvent(diff.frame(room: room, info: info), toRoom: room)
                eventsSent.add(1, ordering: .relaxed)
            }
            watch.snapshots[room] = now
            if let joiners = pending.removeValue(forKey: room) {
                let online = now.online.sorted()
                let state = ServerFrame.presenceState(room: room, members: now.members.sorted(), online: online, info: await info(of: online))
                let frame = hub.framed(state)
                for connection in joiners.values.map(\.connection) {
                    // Through the connection's loop queue, after this window's change.
                    connection.eventLoop.execute {
                        if connection.enqueue(frame) { connection.flush() }
                    }
                }
            }
        }
        // After a failed read the same changes are asked for again next window.
        if complete { watch.version = changes.version }
    }

    /// The presence info of those of `users` that have some, sorted by user; none when the
    /// roster cannot say now (an event without names' info beats no event).
    private func info(of users: [String]) async -> [(user: String, info: String)] {
        guard !users.isEmpty else { return [] }
        do {
            return try await roster.presenceInfo(of: users).sorted { $0.key < $1.key }.map { (user: $0.key, info: $0.value) }
        } catch {
            logger.debug("presence info not read; the event goes without it", metadata: ["error": "\(error)"])
            return []
        }
    }

    /// Reads the rooms' presence, a few at a time; `nil` for a read that failed.
    private func readPresence(of rooms: [String]) async -> [(String, PresenceSnapshot?)] {
        guard !rooms.isEmpty else { return [] }
        roomsRead.add(rooms.count, ordering: .relaxed)
        let roster = self.roster
        let logger = self.logger
        return await withTaskGroup(of: (String, PresenceSnapshot?).self) { group in
            var results: [(String, PresenceSnapshot?)] = []
            results.reserveCapacity(rooms.count)
            var next = rooms.makeIterator()
            func addRead(_ room: String) {
                group.addTask {
                    do {
                        let presence = try await roster.presence(of: room)
                        return (room, PresenceSnapshot(members: Set(presence.members), online: Set(presence.online)))
                    } catch {
                        logger.debug("presence not read; trying again next window", metadata: ["room": "\(room)", "error": "\(error)"])
                        return (room, nil)
                    }
                }
            }
            for _ in 0..<max(1, configuration.concurrentReads) {
                guard let room = next.next() else { break }
                addRead(room)
            }
            for await result in group {
                results.append(result)
                if let room = next.next() { addRead(room) }
            }
            return results
        }
    }
}

/// What changed in a room's presence over one window. A member who leaves while online is
/// listed in `left` and in `offline`.
struct PresenceDiff: Equatable {
    var joined: [String]
    var left: [String]
    var online: [String]
    var offline: [String]
    /// Names left out past the bound.
    var omitted: Int

    /// `nil` when nothing changed. Lists at most `maxNames` names over all four lists.
    init?(from before: PresenceSnapshot, to after: PresenceSnapshot, maxNames: Int) {
        guard before != after else { return nil }
        var lists = [
            after.members.subtracting(before.members), before.members.subtracting(after.members),
            after.online.subtracting(before.online), before.online.subtracting(after.online),
        ].map { $0.sorted() }
        guard lists.contains(where: { !$0.isEmpty }) else { return nil }
        var budget = maxNames
        var omitted = 0
        for index in lists.indices {
            let kept = min(budget, lists[index].count)
            omitted += lists[index].count - kept
            lists[index].removeSubrange(kept...)
            budget -= kept
        }
        (joined, left, online, offline, self.omitted) = (lists[0], lists[1], lists[2], lists[3], omitted)
    }

    func frame(room: String, info: [(user: String, info: String)] = []) -> ByteBuffer {
        ServerFrame.presenceChange(room: room, joined: joined, left: left, online: online, offline: offline, omitted: omitted, info: info)
    }
}

/// A room's members and which of them are online, as the notifier last read them.
struct PresenceSnapshot: Equatable {
    var members: Set<String>
    var online: Set<String>
}
