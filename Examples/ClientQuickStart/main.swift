import Foundation
import HeraldClient

// Joins room "lobby" as alice, says hello and prints what the room says until it hears itself.
let url = URL(string: ProcessInfo.processInfo.environment["HERALD_URL"] ?? "ws://127.0.0.1:8080/ws")!
let client = HeraldClient(url: url, credentials: .user("alice"))
struct Chat: Codable { var text: String }

try await withThrowingTaskGroup(of: Void.self) { group in
    group.addTask { try await client.run() }  // connects, reconnects, resumes
    let lobby = client.room("lobby")
    let messages = lobby.messages  // subscribe before publishing
    try await lobby.join()
    try await lobby.publish(Chat(text: "hello"))
    for await message in messages {
        let chat = try message.decode(Chat.self)
        print("\(message.from ?? "server"): \(chat.text)")
        if message.from == "alice" { break }
    }
    let online = try await lobby.presence().online
    print("online in lobby: \(online)")
    group.cancelAll()  // run() returns: the socket is closed cleanly
}
