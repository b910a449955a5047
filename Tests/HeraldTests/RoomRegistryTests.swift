import Herald
import Testing

@Suite("Rooms")
struct RoomRegistryTests {
    @Test func joinLeaveAndEmptyRoomDisappears() throws {
        var rooms = RoomRegistry()
        let joined = try rooms.join(user: "a", room: "r")
        let joinedAgain = try rooms.join(user: "a", room: "r")
        #expect(joined && !joinedAgain)
        try rooms.join(user: "b", room: "r")
        #expect(rooms.members(of: "r") == ["a", "b"])
        #expect(rooms.rooms(of: "a") == ["r"])
        let left = rooms.leave(user: "a", room: "r")
        let leftAgain = rooms.leave(user: "a", room: "r")
        #expect(left && !leftAgain)
        #expect(rooms.roomExists("r"))
        rooms.leave(user: "b", room: "r")
        #expect(!rooms.roomExists("r"))
        #expect(rooms.roomCount == 0)
        #expect(rooms.rooms(of: "b").isEmpty)
    }

    @Test func limitsAreEnforced() throws {
        var limits = HubConfiguration()
        limits.maxRoomsPerUser = 2
        limits.maxRooms = 3
        limits.maxMembersPerRoom = 2
        var rooms = RoomRegistry(limits: limits)
        try rooms.join(user: "a", room: "r1")
        try rooms.join(user: "a", room: "r2")
        #expect(throws: HubError.self) { try rooms.join(user: "a", room: "r3") }
        try rooms.join(user: "b", room: "r1")
        #expect(throws: HubError.self) { try rooms.join(user: "c", room: "r1") }
        try rooms.join(user: "c", room: "r3")
        #expect(throws: HubError.self) { try rooms.join(user: "c", room: "r4") }
        #expect(!rooms.isMember(user: "a", room: "r3"))
    }
}
