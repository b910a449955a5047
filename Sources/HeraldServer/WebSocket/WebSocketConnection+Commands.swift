import CoreMetrics
import Herald
import HeraldWire
import Logging
import NIOCore

extension WebSocketConnection {
    /// Acts on one decoded client frame. Deliveries go through the broker, never straight to sockets.
    func perform(_ frame: ClientFrame) {
        let id = frame.id
        switch frame.command {
        case .join(let room, let since):
            // A membership the backend granted needs no permission from the token.
            if permissions.allows(room) {
                join(room, since: since, grant: .user, id: id)
            } else if node.hub.grant(user: user, room: room) == .backend {
                // Already a member by the backend's grant: nothing to write (a join racing the
                // backend's removal must not bring the membership back as the user's own).
                join(room, since: since, grant: nil, id: id)
            } else if let hook = node.joinHook {
                askJoinHook(hook, room: room, since: since, id: id)
            } else {
                send(ServerFrame.error(.forbidden, message: "your token does not allow joining room \(room)", id: id))
            }

        case .leave(let room):
            let roster = node.roster
            let user = self.user
            runCommand(id: id) { () async throws(HubError) in
                _ = try await roster.leave(user: user, room: room)
                return ServerFrame.left(room: room, id: id)
            }

        case .publish(let room, let data):
            if node.configuration.effectivePublishPolicy == .members, !mayUse(room) {
                send(denial(of: room, "join room \(room) before publishing to it", id: id))
                return
            }
            publish(.message(to: .room(room), from: user, data: data), id: id)

        case .send(let recipient, let data):
            send(data, to: recipient, id: id)

        case .broadcast(let data):
            guard node.configuration.allowClientBroadcast else {
                send(ServerFrame.error(.forbidden, message: "client broadcasts are disabled on this server (--allow-client-broadcast)", id: id))
                return
            }
            publish(.message(to: .all, from: user, data: data), id: id)

        case .ack(let offset, let epoch):
            acknowledge(offset: offset, epoch: epoch, id: id)

        case .refresh(let token):
            refresh(with: token, id: id)

        case .ping:
            send(ServerFrame.pong(id: id))

        case .presence(let room):
            guard mayUse(room) else {
                send(denial(of: room, "join room \(room) to see who is in it", id: id))
                return
            }
            let roster = node.roster
            runCommand(id: id) { () async throws(HubError) in
                let presence = try await roster.presence(of: room)
                return ServerFrame.presence(room: room, members: presence.members, online: presence.online, id: id)
            }
        }
    }

    /// Joins once allowed: by the token (`grant` `.user`), by the backend's join hook
    /// (`.backend`: the backend decided, the membership stands on its own), or already a member
    /// by the backend's grant (`nil`: nothing is written, the reply and any replay only).
    private func join(_ room: String, since: StreamPosition?, grant: MembershipGrant?, id: RawJSON?) {
        if since == .latest {
            joinAtLatest(room: room, grant: grant, id: id)
            return
        }
        if let since {
            joinRecovering(room: room, since: since, grant: grant, id: id)
            return
        }
        let roster = node.roster
        let user = self.user
        let presence = presenceStateRequest(for: room)
        runCommand(id: id, afterReply: presence) { () async throws(HubError) in
            if let grant { _ = try await roster.join(user: user, room: room, grant: grant) }
            return ServerFrame.joined(room: room, id: id)
        }
    }

    /// For a connection that asked for presence events joining a watched room: asks the
    /// notifier, once the membership stands and the `joined` reply is sent, to send the room's
    /// `presence_state`, the state its later `presence_change` frames apply to.
    private func presenceStateRequest(for room: String) -> (@Sendable () -> Void)? {
        guard wantsPresenceEvents, let notifier = node.presenceNotifier, notifier.configuration.covers(room) else { return nil }
        return { [self] in notifier.sendState(of: room, to: self) }
    }

    /// A `join` with `"since":"latest"`: the reply carries the room's latest position, and the
    /// connection receives every message after it. Deliveries wait (a hold) while the position
    /// is read and are written, in order, before the reply: the user may be a member already
    /// (another device, a reload), so this connection may be receiving the room live, and
    /// none of that may be dropped. A client that has processed no message of the room takes the
    /// reply's position as its floor; one that has keeps its own.
    private func joinAtLatest(room: String, grant: MembershipGrant?, id: RawJSON?) {
        let target = DeliveryTarget.room(room)
        let hold = node.hub.hold(target, for: self)
        let roster = node.roster
        let broker = node.broker
        let user = self.user
        let presence = presenceStateRequest(for: room)
        beginCommand()
        eventLoop.makeFutureWithTask { () async throws -> StreamPosition? in
            if let grant { _ = try await roster.join(user: user, room: room, grant: grant) }
            // The membership stands once the roster took it: a position the broker cannot read
            // now only costs the client its resume point, not the join.
            return try? await broker.position(of: target)
        }.whenComplete { [self] result in
            node.hub.release(hold, for: self)
            switch result {
            case .success(let position?):
                replay(nil, after: nil, recovered: false, then: hold)
                send(ServerFrame.joined(room: room, id: id, at: position))
                presence?()
            case .success(nil):
                send(ServerFrame.joined(room: room, id: id))
                replay(nil, after: nil, recovered: false, then: hold)
                presence?()
            case .failure(let error as HubError) where error.isMembershipLimit:
                send(ServerFrame.error(.limitExceeded, message: error.description, id: id))
                replay(nil, after: nil, recovered: false, then: hold)
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
                replay(nil, after: nil, recovered: false, then: hold)
            }
            endCommand()
        }
    }

    /// A join the token does not allow: the backend's join hook decides. Frames after it wait.
    private func askJoinHook(_ hook: BackendHook, room: String, since: StreamPosition?, id: RawJSON?) {
        let user = self.user
        beginCommand()
        eventLoop.makeFutureWithTask { await hook.join(user: user, room: room) }.whenComplete { [self] result in
            if case .success(.allow) = result {
                // The join carries the command on: later frames wait for its answer.
                join(room, since: since, grant: .backend, id: id)
                return
            }
            defer { endCommand() }
            switch result {
            case .success(.allow):
                break
            case .success(.deny(let reason)):
                send(ServerFrame.error(.forbidden, message: "the backend refused joining room \(room): \(reason)", id: id))
            case .success(.unavailable(let why)):
                node.logger.warning("join hook undecided", metadata: ["user": "\(user)", "room": "\(room)", "why": "\(why)"])
                send(ServerFrame.error(.unavailable, message: "cannot ask the backend whether you may join room \(room) (\(why)); retry shortly", id: id))
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
            }
        }
    }

    /// The refusal of a room action: `forbidden` when the user is a member by a join the current
    /// token no longer allows, `not_a_member` otherwise.
    private func denial(of room: String, _ notAMember: String, id: RawJSON?) -> ByteBuffer {
        guard node.hub.grant(user: user, room: room) == .user else { return ServerFrame.error(.notAMember, message: notAMember, id: id) }
        return ServerFrame.error(
            .forbidden, message: "your token no longer allows room \(room) (its rooms claim): refresh with a token that does, or leave it", id: id)
    }

    /// `send`: delivers `data` to every connection of `recipient`, if the send policy allows.
    /// Denials are `forbidden` naming the rule; the connection stays open.
    private func send(_ data: RawJSON, to recipient: String, id: RawJSON?) {
        let envelope = Envelope.message(to: .user(recipient), from: user, data: data)
        // Oneself (one's other devices) and the users the token's send claim names: always.
        if recipient == user || recipients?.allows(recipient) == true {
            publish(envelope, id: id)
            return
        }
        switch node.configuration.effectiveSendPolicy {
        case .anyone:
            publish(envelope, id: id)
        case .claim:
            send(ServerFrame.error(.forbidden, message: "your token's send claim does not allow sending to user \(recipient) (send policy: claim)", id: id))
        case .sharedRoom:
            let roster = node.roster
            let sender = user
            // Rooms this connection's token no longer allows do not count as shared.
            let revoked = revokedRooms
            beginCommand()
            eventLoop.makeFutureWithTask { () async throws -> Bool in
                async let theirs = roster.rooms(of: recipient)
                let mine = try await roster.rooms(of: sender).subtracting(revoked)
                return try await !mine.isDisjoint(with: theirs)
            }.whenComplete { [self] result in
                switch result {
                case .success(true):
                    publish(envelope, id: id)
                case .success(false):
                    send(ServerFrame.error(.forbidden, message: "you share no room with user \(recipient) (send policy: shared-room)", id: id))
                case .failure(let error):
                    send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
                }
                endCommand()
            }
        }
    }

    /// `refresh`: verifies a new token for the same user and, when valid, runs the connection
    /// on it from the next frame on (its rooms, send claim and expiry). A refused token is
    /// answered with an error; the connection keeps its current token.
    private func refresh(with token: String, id: RawJSON?) {
        let authenticator = node.authenticator
        guard !authenticator.isDevelopmentMode else {
            send(ServerFrame.error(.badRequest, message: "this server runs in development mode: there is no token to refresh", id: id))
            return
        }
        beginCommand()
        eventLoop.makeFutureWithTask { await authenticator.verify(token: token) }.whenComplete { [self] result in
            switch result {
            case .success(.success(let identity)) where identity.user != user:
                send(ServerFrame.error(.unauthorized, message: "token refused: it is for another user (sub); a connection keeps its user", id: id))
            case .success(.success(let identity)) where identity.tokenID.map(node.denylist.isRevoked) == true:
                send(ServerFrame.error(.unauthorized, message: "token refused: it was revoked (its jti is on the server's denylist); get a new one", id: id))
            case .success(.success(let identity)):
                adopt(identity)
                send(ServerFrame.refreshed(expires: identity.expires.map(Self.numericDate), id: id))
                // The rooms the new token no longer (or again) allows: applied before the next
                // delivery on this loop, told after the reply.
                node.hub.review(self)
            case .success(.failure(let failure)):
                send(ServerFrame.error(.unauthorized, message: "token refused: \(failure.reason)", id: id))
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
            }
            endCommand()
        }
    }

    /// `ack`: the message at `offset` of this user's channel need not be sent again.
    private func acknowledge(offset: Int64, epoch: String?, id: RawJSON?) {
        let broker = node.broker
        let user = self.user
        eventLoop.makeFutureWithTask { try await broker.acknowledgements.acknowledge(user: user, offset: offset, epoch: epoch) }.whenComplete { [self] result in
            switch result {
            case .success: send(ServerFrame.ok(id: id), flush: true)
            case .failure(let error): send(ServerFrame.error(.unavailable, message: "\(error)", id: id), flush: true)
            }
        }
    }

    /// `join` with `since`: joins, replays every message of the room after the client's position
    /// from history, then carries on live. Live deliveries of the room to this connection are
    /// held from before the join until the replay is written, then written past what history
    /// gave: no gap, no duplicate at the seam. The reply says whether the replay is complete.
    private func joinRecovering(room: String, since: StreamPosition, grant: MembershipGrant?, id: RawJSON?) {
        let target = DeliveryTarget.room(room)
        let hold = node.hub.hold(target, for: self)
        let roster = node.roster
        let broker = node.broker
        let user = self.user
        let limit = max(1, node.configuration.history.size)
        let presence = presenceStateRequest(for: room)
        beginCommand()
        eventLoop.makeFutureWithTask { () async throws -> HistoryPage in
            if let grant { _ = try await roster.join(user: user, room: room, grant: grant) }
            return try await broker.history(of: target, since: since.offset, limit: limit, inEpoch: since.epoch)
        }.whenComplete { [self] result in
            node.hub.release(hold, for: self)
            switch result {
            case .success(let page):
                let recovery = page.recovery(from: since)
                node.hub.metrics.recordRecovery(recovery)
                send(ServerFrame.joined(room: room, id: id, recovery: recovery, latest: page.latest))
                replay(page, after: since, recovered: recovery == .recovered, then: hold)
                presence?()
            case .failure(let error as HubError) where error.isMembershipLimit:
                send(ServerFrame.error(.limitExceeded, message: error.description, id: id))
                replay(nil, after: nil, recovered: false, then: hold)
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
                replay(nil, after: nil, recovered: false, then: hold)
            }
            endCommand()
        }
    }

    /// Runs a roster command; the frames after it wait until it has answered, so replies keep
    /// the order of the requests.
    /// Runs `body` and sends its reply (or the error); `afterReply` runs once a reply was sent.
    private func runCommand(id: RawJSON?, afterReply: (@Sendable () -> Void)? = nil, _ body: @escaping @Sendable () async throws(HubError) -> ByteBuffer) {
        beginCommand()
        eventLoop.makeFutureWithTask { try await body() }.whenComplete { [self] result in
            switch result {
            case .success(let reply):
                send(reply)
                afterReply?()
            case .failure(let error as HubError) where error.isMembershipLimit:
                send(ServerFrame.error(.limitExceeded, message: error.description, id: id))
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "\(error)", id: id))
            }
            endCommand()
        }
    }

    /// Publishes through the broker and answers `ok` once the broker has taken the message.
    private func publish(_ envelope: Envelope, id: RawJSON?) {
        node.broker.publish(envelope, on: eventLoop).hop(to: eventLoop).whenComplete { [self] result in
            switch result {
            case .success:
                node.hub.metrics.recordPublish(from: .websocket)
                send(ServerFrame.ok(id: id), flush: true)
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "message not confirmed (retry with the same id): \(error)", id: id), flush: true)
            }
        }
    }
}
