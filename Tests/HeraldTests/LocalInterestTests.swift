import NIOCore
import NIOPosix
import Testing

@testable import Herald

@Suite("LocalInterest: which channels a node needs")
struct LocalInterestTests {
    let loop = MultiThreadedEventLoopGroup.singleton.any()

    @Test func usersAndRoomsAreSubscribedOnFirstInterestAndDroppedOnLast() throws {
        var interest = LocalInterest()
        #expect(interest.userArrived("alice", ready: loop.makePromise()) == InterestChange(subscribe: [.user("alice")]))
        let loadedaliceRooms = interest.roomsLoaded("alice", memberships: ["R": .backend])
        let (aliceRooms, aliceReady) = try #require(loadedaliceRooms)
        aliceReady.succeed()
        #expect(aliceRooms == InterestChange(subscribe: [.room("R")]))

        _ = interest.userArrived("bob", ready: loop.makePromise())
        let loadedbobRooms = interest.roomsLoaded("bob", memberships: ["R": .backend, "S": .backend])
        let (bobRooms, bobReady) = try #require(loadedbobRooms)
        bobReady.succeed()
        #expect(bobRooms == InterestChange(subscribe: [.room("S")]))  // R is needed already
        #expect(interest.localMembers["R"] == ["alice", "bob"])

        // A join of a room someone here is in needs no new channel; the first member does.
        #expect(interest.apply(MembershipChange(user: "alice", room: "S", isMember: true)).interest.isEmpty)
        #expect(interest.apply(MembershipChange(user: "alice", room: "T", isMember: true)).interest == InterestChange(subscribe: [.room("T")]))
        #expect(interest.apply(MembershipChange(user: "alice", room: "T", isMember: false)).interest == InterestChange(unsubscribe: [.room("T")]))
        // Changes for users with no connection here are not tracked.
        #expect(interest.apply(MembershipChange(user: "carol", room: "R", isMember: true)).interest.isEmpty)

        let (aliceGone, _) = interest.userLeft("alice")
        #expect(aliceGone == InterestChange(unsubscribe: [.user("alice")]))  // bob still needs R and S
        let (bobGone, _) = interest.userLeft("bob")
        #expect(bobGone.unsubscribe.first == .user("bob"))
        #expect(Set(bobGone.unsubscribe.dropFirst()) == [.room("R"), .room("S")])
        #expect(interest.localMembers.isEmpty && interest.roomsOfUser.isEmpty)
    }

    @Test func changesHeardWhileRoomsLoadAreReplayedInOrder() throws {
        var interest = LocalInterest()
        let ready = loop.makePromise(of: Void.self)
        _ = interest.userArrived("alice", ready: ready)
        #expect(interest.readiness(of: "alice") != nil)
        // The snapshot may or may not include these; replaying them on top gives the latest state.
        _ = interest.apply(MembershipChange(user: "alice", room: "A", isMember: false)).interest
        _ = interest.apply(MembershipChange(user: "alice", room: "B", isMember: true)).interest
        _ = interest.apply(MembershipChange(user: "alice", room: "B", isMember: false)).interest
        _ = interest.apply(MembershipChange(user: "alice", room: "C", isMember: true)).interest
        let loadedchange = interest.roomsLoaded("alice", memberships: ["A": .backend, "B": .backend])
        let (change, promise) = try #require(loadedchange)
        promise.succeed()
        #expect(change == InterestChange(subscribe: [.room("C")]))
        #expect(interest.readiness(of: "alice") == nil)
    }

    @Test func aUserWhoLeavesWhileLoadingLeavesNothingBehind() {
        var interest = LocalInterest()
        let ready = loop.makePromise(of: Void.self)
        _ = interest.userArrived("alice", ready: ready)
        let (change, waiting) = interest.userLeft("alice")
        #expect(change == InterestChange(unsubscribe: [.user("alice")]))
        waiting?.succeed()
        #expect(interest.roomsLoaded("alice", memberships: ["R": .backend]) == nil)
        #expect(interest.localMembers.isEmpty)
    }
}
