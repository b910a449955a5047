import Herald
import HeraldWire
import NIOCore

extension WebSocketConnection {
    /// Acts on one decoded client frame. Deliveries go through the broker, never straight to sockets.
    func perform(_ frame: ClientFrame) {
        let id = frame.id
        switch frame.command {
        case .join(let room):
            // A membership the backend granted needs no permission from the token.
            guard permissions.allows(room) || node.hub.isMember(user: user, room: room) else {
                send(ServerFrame.error(.forbidden, message: "your token does not allow joining room \(room)", id: id))
                return
            }
            do {
                try node.hub.join(user: user, room: room)
                send(ServerFrame.joined(room: room, id: id))
            } catch {
                send(ServerFrame.error(.limitExceeded, message: error.description, id: id))
            }

        case .leave(let room):
            node.hub.leave(user: user, room: room)
            send(ServerFrame.left(room: room, id: id))

        case .publish(let room, let data):
            if node.configuration.effectivePublishPolicy == .members, !node.hub.isMember(user: user, room: room) {
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

        case .presence(let room):
            guard node.hub.isMember(user: user, room: room) else {
                send(ServerFrame.error(.notAMember, message: "join room \(room) to see who is in it", id: id))
                return
            }
            let members = node.hub.members(of: room).sorted()
            let online = node.hub.onlineMembers(of: room).sorted()
            send(ServerFrame.presence(room: room, members: members, online: online, id: id))
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
