import Herald
import HeraldWire
import NIOCore

extension WebSocketConnection {
    /// Acts on one decoded client frame. Deliveries go through the broker, never straight to sockets.
    func perform(_ frame: ClientFrame) {
        let id = frame.id
        switch frame.command {
        case .join(let room, let since):
            // A membership the backend granted needs no permission from the token.
            guard permissions.allows(room) || node.hub.isLocalMember(user: user, room: room) else {
                send(ServerFrame.error(.forbidden, message: "your token does not allow joining room \(room)", id: id))
                return
            }
            if let since {
                joinRecovering(room: room, since: since, id: id)
                return
            }
            let roster = node.roster
            let user = self.user
            runCommand(id: id) { () async throws(HubError) in
                _ = try await roster.join(user: user, room: room)
                return ServerFrame.joined(room: room, id: id)
            }

        case .leave(let room):
            let roster = node.roster
            let user = self.user
            runCommand(id: id) { () async throws(HubError) in
                _ = try await roster.leave(user: user, room: room)
                return ServerFrame.left(room: room, id: id)
            }

        case .publish(let room, let data):
            if node.configuration.effectivePublishPolicy == .members, !node.hub.isLocalMember(user: user, room: room) {
                send(ServerFrame.error(.notAMember, message: "join room \(room) before publishing to it", id: id))
                return
            }
            publish(.message(to: .room(room), from: user, data: data), id: id)

        case .send(let recipient, let data):
            publish(.message(to: .user(recipient), from: user, data: data), id: id)

        case .broadcast(let data):
            guard node.configuration.allowClientBroadcast else {
                send(ServerFrame.error(.forbidden, message: "client broadcasts are disabled on this server (--allow-client-broadcast)", id: id))
                return
            }
            publish(.message(to: .all, from: user, data: data), id: id)

        case .ack(let offset, let epoch):
            acknowledge(offset: offset, epoch: epoch, id: id)

        case .presence(let room):
            guard node.hub.isLocalMember(user: user, room: room) else {
                send(ServerFrame.error(.notAMember, message: "join room \(room) to see who is in it", id: id))
                return
            }
            let roster = node.roster
            runCommand(id: id) { () async throws(HubError) in
                let presence = try await roster.presence(of: room)
                return ServerFrame.presence(room: room, members: presence.members, online: presence.online, id: id)
            }
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
    private func joinRecovering(room: String, since: StreamPosition, id: RawJSON?) {
        let target = DeliveryTarget.room(room)
        let hold = node.hub.hold(target, for: self)
        let roster = node.roster
        let broker = node.broker
        let user = self.user
        let limit = max(1, node.configuration.history.size)
        beginCommand()
        eventLoop.makeFutureWithTask { () async throws -> HistoryPage in
            _ = try await roster.join(user: user, room: room)
            return try await broker.history(of: target, since: since.offset, limit: limit)
        }.whenComplete { [self] result in
            node.hub.release(hold, for: self)
            switch result {
            case .success(let page):
                let recovery = page.recovery(from: since)
                send(ServerFrame.joined(room: room, id: id, recovery: recovery, latest: page.latest))
                replay(page, after: since, recovered: recovery == .recovered, then: hold)
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
    private func runCommand(id: RawJSON?, _ body: @escaping @Sendable () async throws(HubError) -> ByteBuffer) {
        beginCommand()
        eventLoop.makeFutureWithTask { try await body() }.whenComplete { [self] result in
            switch result {
            case .success(let reply):
                send(reply)
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
                send(ServerFrame.ok(id: id), flush: true)
            case .failure(let error):
                send(ServerFrame.error(.unavailable, message: "message not published: \(error)", id: id), flush: true)
            }
        }
    }
}
