import HeraldWire
import Logging
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Frames from the server: welcome, replies, deliveries, notices.
extension ClientCore {
    /// A text frame of connection `generation`; frames of a connection given up on are ignored.
    func receive(_ text: String, generation: UInt64) {
        let parsed = InboundFrame.parse(text)
        locked { state, effects in
            guard let link = state.link, link.generation == generation, link.localClose == nil else { return }
            state.lastReceived = .now
            switch parsed {
            case .success(let frame): dispatch(frame, &state, &effects)
            case .failure(let error): emit(.error(error), &effects)
            }
        }
    }

    func receiveBinary(generation: UInt64) {
        locked { state, effects in
            guard state.link?.generation == generation else { return }
            state.lastReceived = .now
            emit(.error(.unexpectedFrame("a binary frame from the server was ignored: Herald sends JSON text frames")), &effects)
        }
    }

    func dispatch(_ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        if let ping = state.ping, frame.requestID == ping.id {
            state.ping = nil  // the pong (or an older server's error for an unknown type)
            return
        }
        switch frame.type {
        case "welcome": return onWelcome(frame, &state, &effects)
        case "message": return onMessage(frame, &state, &effects)
        case "token_expiring":
            emit(.tokenExpiring(expires: frame.integer("expires")), &effects)
            return startRefresh(&state, &effects)
        case "pong": return
        case "presence_state", "presence_change": return onPresence(frame, &state, &effects)
        default: break
        }
        if frame.hasID { return onReply(frame, &state, &effects) }
        switch frame.type {
        case "joined", "left":
            guard let room = frame.string("room") else {
                return emit(.error(.unexpectedFrame("a \(frame.type) notice without a room was ignored")), &effects)
            }
            emit(.membership(room: room, joined: frame.type == "joined", reason: frame.string("reason")), &effects)
        case "error":
            // An error without an id: a frame the server could not read (or rate limiting).
            emit(.error(.server(code: frame.string("code") ?? "error", message: frame.string("message") ?? "")), &effects)
        default:
            break  // unknown types are allowed by the protocol's versioning rule
        }
    }

    /// Applies a `presence_state` or `presence_change` of a joined room; others are ignored.
    func onPresence(_ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        guard let room = frame.string("room"), let entry = state.rooms[room], entry.joined else { return }
        var members = Set(entry.presence?.members ?? [])
        var online = Set(entry.presence?.online ?? [])
        var info = entry.presence?.info ?? [:]
        var change: PresenceChange?
        if frame.type == "presence_state" {
            members = Set(frame.strings("members") ?? [])
            online = Set(frame.strings("online") ?? [])
            info = [:]
        } else {
            let diff = PresenceChange(
                joined: frame.strings("joined") ?? [], left: frame.strings("left") ?? [], online: frame.strings("online") ?? [],
                offline: frame.strings("offline") ?? [], omitted: Int(frame.integer("omitted") ?? 0))
            members.formUnion(diff.joined)
            members.subtract(diff.left)
            online.formUnion(diff.online)
            online.subtract(diff.offline)
            online.subtract(diff.left)
            for user in diff.left { info[user] = nil }
            change = diff
        }
        if let raw = frame.raw("info"), let told = try? JSONDecoder().decode([String: [String: String]].self, from: Data(raw.bytes.readableBytesView)) {
            info.merge(told) { $1 }
        }
        let update = PresenceUpdate(room: room, members: members.sorted(), online: online.sorted(), info: info, change: change)
        state.rooms[room]?.presence = update
        emit(.presence(update), &effects)
        if let change, change.omitted > 0, !entry.presenceResyncing {
            state.rooms[room]?.presenceResyncing = true
            resyncPresence(of: room)
        }
    }

    /// After a change the server cut short (`omitted`): asks for the room's whole state at a
    /// random moment within 5 s (so that a room's members do not all ask at once) and applies
    /// it as a state.
    func resyncPresence(of room: String) {
        let delay = Duration.milliseconds(Int64(configuration.random() * 5000))
        Task { [self] in
            try? await Task.sleep(for: delay)
            let reply = try? await request(.presence(room), internal: true)
            locked { state, effects in
                state.rooms[room]?.presenceResyncing = false
                guard let reply, let entry = state.rooms[room], entry.joined else { return }
                let members = reply.strings("members") ?? []
                let info = (entry.presence?.info ?? [:]).filter { members.contains($0.key) }
                let update = PresenceUpdate(room: room, members: members, online: reply.strings("online") ?? [], info: info, change: nil)
                state.rooms[room]?.presence = update
                emit(.presence(update), &effects)
            }
        }
    }

    func onWelcome(_ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        guard state.phase == .connecting else {
            return emit(.error(.unexpectedFrame("an unexpected welcome was ignored (the connection was already welcomed)")), &effects)
        }
        let welcome = Welcome(
            user: frame.string("user") ?? "",
            connection: frame.string("connection") ?? "",
            node: frame.string("node") ?? "",
            heartbeat: Int(frame.integer("heartbeat") ?? 25),
            expires: frame.integer("expires"),
            presenceEvents: frame.strings("presence_events") ?? []
        )
        state.phase = .connected
        state.welcome = welcome
        state.welcomedAt = .now
        state.statistics.welcomes += 1
        state.authRetried = false
        state.ping = nil
        configuration.logger.debug("herald client connected", metadata: ["node": "\(welcome.node)", "connection": "\(welcome.connection)"])
        scheduleRefresh(expires: welcome.expires, &state)
        let recovered = frame.bool("recovered")
        if recovered == false {
            recoveryFailed(.user, frame, &state, &effects)
        } else if recovered == nil, let latest = frame.position, state.positions.entry(.user) == nil {
            // `since=latest`: the floor of what this connection receives on the user channel.
            state.positions.set(.user, epoch: latest.epoch, offset: 0, floor: latest.offset)
        }
        emit(.connected(welcome), &effects)
        rejoin(&state, &effects)
        flushQueue(&state)
    }

    /// Sends a join (with `since`) for every room the application is in whose join is not already queued.
    func rejoin(_ state: inout State, _ effects: inout Effects) {
        let queuedJoins = Set(state.queue.compactMap { state.pending[$0]?.body.joinedRoom })
        for (name, room) in state.rooms.sorted(by: { $0.key < $1.key }) where room.joined && !queuedJoins.contains(name) {
            requestInBackground(.join(name), what: "re-joining \(name) failed", &state, &effects)
        }
    }

    func onReply(_ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        if frame.type == "joined", let room = frame.string("room") { state.resuming.remove(room) }  // a late reply too
        guard let id = frame.requestID, let request = settle(id, &state, byReply: true) else {
            // Replies to requests that timed out are expected; anything else is odd.
            if let id = frame.requestID, id <= state.nextID { return }
            return emit(.error(.unexpectedFrame("a \(frame.type) reply with an unknown id was ignored")), &effects)
        }
        if frame.type == "error" {
            let error = HeraldClientError.server(code: frame.string("code") ?? "error", message: frame.string("message") ?? "")
            return effects.append { request.completion(.failure(error)) }
        }
        if frame.type == "joined", let room = request.body.joinedRoom { onJoined(room, frame, &state, &effects) }
        if frame.type == "refreshed" { scheduleRefresh(expires: frame.integer("expires"), &state) }
        effects.append { request.completion(.success(frame)) }
    }

    func onJoined(_ room: String, _ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        let recovered = frame.bool("recovered")
        if recovered == false {
            recoveryFailed(.room(room), frame, &state, &effects)
        } else if recovered == nil, let latest = frame.position, state.positions.entry(.room(room)) == nil {
            // A plain join that tells the room's position gives one to resume from later.
            state.positions.set(.room(room), epoch: latest.epoch, offset: 0, floor: latest.offset)
        }
    }

    /// Missed messages cannot all be replayed: tell the application and carry on from the
    /// server's position (recorded as the floor, so unprocessed `ack:true` messages still come).
    func recoveryFailed(_ channel: Channel, _ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        let latest = frame.position
        if let latest { state.positions.giveUp(channel, latest: latest) }
        emit(.recoveryFailed(RecoveryFailure(channel: channel, reason: frame.string("reason") ?? "unknown", latest: latest)), &effects)
    }

    func onMessage(_ frame: InboundFrame, _ state: inout State, _ effects: inout Effects) {
        guard let data = frame.raw("data") else {
            return emit(.error(.unexpectedFrame("a message without data was ignored")), &effects)
        }
        let scope: Scope
        let channel: Channel?
        let roomStream: StreamFanOut<HeraldMessage>?
        switch frame.string("scope") {
        case "room":
            guard let name = frame.string("room") else {
                return emit(.error(.unexpectedFrame("a room message without a room was ignored")), &effects)
            }
            let entry = state.rooms[name]
            guard entry?.joined == true || configuration.acceptUnjoinedRooms else {
                return emit(.error(.unexpectedFrame("a message for room \(name), which the application did not join, was ignored")), &effects)
            }
            // Sent again after the reply to the join with `since` on the wire.
            if state.resuming.contains(name) { return }
            scope = .room(name)
            channel = .room(name)
            roomStream = entry?.stream
        case "user": (scope, channel, roomStream) = (.user, .user, nil)
        case "all": (scope, channel, roomStream) = (.all, nil, nil)
        default:
            return emit(.error(.unexpectedFrame("a message with an unknown scope was ignored")), &effects)
        }
        let offset = frame.integer("offset")
        let epoch = frame.string("epoch")
        let requiresAck = frame.bool("ack") == true
        let position = offset.map { StreamPosition(offset: $0, epoch: epoch ?? "") }
        if requiresAck, channel == .user, let position {
            if state.acknowledged.contains(position) {
                state.statistics.duplicates += 1
                // Acknowledged before: confirm again, quietly.
                requestInBackground(.ack(offset: position.offset, epoch: epoch), what: "acknowledging", &state, &effects)
                return
            }
            _ = state.positions.accept(.user, offset: offset, epoch: epoch, requiresAck: false)  // the newest moves the position
        } else if let channel {
            guard state.positions.accept(channel, offset: offset, epoch: epoch, requiresAck: requiresAck) else {
                state.statistics.duplicates += 1
                // Already processed: confirm again, quietly.
                if requiresAck, let position { requestInBackground(.ack(offset: position.offset, epoch: epoch), what: "acknowledging", &state, &effects) }
                return
            }
        }
        state.statistics.messages += 1
        let message = HeraldMessage(
            scope: scope, from: frame.string("from"), data: data, position: position, timestamp: frame.integer("ts"), requiresAck: requiresAck, core: self)
        let (messages, events, autoAck) = (self.messages, self.events, configuration.autoAck)
        effects.append {
            let takenByRoom = roomStream?.yield(message) ?? false
            let taken = messages.yield(message) || takenByRoom
            if !taken {
                events.yield(.messageDropped(message))
            } else if requiresAck, autoAck, let position {
                self.locked { state, effects in
                    state.acknowledged.insert(position)
                    self.requestInBackground(.ack(offset: position.offset, epoch: epoch), what: "acknowledging", &state, &effects)
                }
            }
        }
    }
}
