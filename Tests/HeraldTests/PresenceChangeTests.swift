import HeraldWire
import NIOCore
import NIOPosix
import Testing

@testable import Herald

/// The pure parts of presence events: what one window's event says, and how the in-memory
/// roster tracks which rooms changed.
@Suite("Presence changes")
struct PresenceChangeTests {
    func text(_ buffer: ByteBuffer?) -> String? { buffer.map { String(buffer: $0) } }

    @Test func anEventListsWhatChangedAndNothingWhenNothingDid() {
        let before = PresenceSnapshot(members: ["ada", "bob", "cy"], online: ["ada", "bob"])
        let after = PresenceSnapshot(members: ["ada", "bob", "dee"], online: ["ada", "dee"])
        #expect(
            text(PresenceDiff(from: before, to: after, maxNames: 100)?.frame(room: "r"))
                == #"{"type":"presence_change","room":"r","joined":["dee"],"left":["cy"],"online":["dee"],"offline":["bob"]}"#
        )
        #expect(PresenceDiff(from: before, to: before, maxNames: 100) == nil)
    }

    @Test func aMassChangeIsBoundedAndCountsWhatItLeftOut() {
        let before = PresenceSnapshot(members: [], online: [])
        let users = Set((0..<50).map { "u\($0)" })
        let after = PresenceSnapshot(members: users, online: users)
        let frame = text(PresenceDiff(from: before, to: after, maxNames: 60)?.frame(room: "r")) ?? ""
        #expect(frame.hasSuffix(#","omitted":40}"#), "60 names of 100 listed: \(frame)")
        #expect(frame.split(separator: "\"u", omittingEmptySubsequences: false).count - 1 == 60)
    }

    @Test func theRosterTellsWhichRoomsChangedSinceAVersion() {
        var versions = PresenceVersions()
        let start = versions.changes(since: nil)
        #expect(start.rooms == nil, "the first call cannot tell")
        #expect(versions.changes(since: start.version).rooms == [])
        versions.changed(["a", "b"])
        let first = versions.changes(since: start.version)
        #expect(first.rooms == ["a", "b"])
        versions.changed(["c"])
        #expect(versions.changes(since: first.version).rooms == ["c"])
        #expect(versions.changes(since: start.version).rooms == ["a", "b", "c"])
        #expect(versions.changes(since: "garbage").rooms == nil)
        #expect(versions.changes(since: "999").rooms == nil, "a version from the future (another roster) is not trusted")
    }

    @Test func pastItsBoundTheRosterForgetsAndAnswersAnyRoom() {
        var versions = PresenceVersions()
        let start = versions.changes(since: nil)
        versions.changed((0..<PresenceVersions.limit).map { "r\($0)" })
        let full = versions.changes(since: start.version)
        #expect(full.rooms?.count == PresenceVersions.limit)
        versions.changed(["one-more"])
        #expect(versions.changes(since: start.version).rooms == nil, "older versions lost track")
        #expect(versions.changes(since: full.version).rooms == ["one-more"], "the change past the bound is still known")
    }

    @Test func theLocalRosterReportsMembershipAndOnlineChanges() async throws {
        let roster = LocalRoster(notifying: HistoryBudgetTests.CountingSink())
        let start = try await roster.presenceChanges(since: nil)
        _ = try await roster.join(user: "ada", room: "a")
        _ = try await roster.join(user: "ada", room: "b")
        let joined = try await roster.presenceChanges(since: start.version)
        #expect(joined.rooms == ["a", "b"])
        roster.presenceChanged(user: "ada", delta: 1)
        let online = try await roster.presenceChanges(since: joined.version)
        #expect(online.rooms == ["a", "b"], "ada came online in both rooms")
        roster.presenceChanged(user: "ada", delta: 1)
        #expect(try await roster.presenceChanges(since: online.version).rooms == [], "a second connection changes no one's presence")
        roster.presenceChanged(user: "ada", delta: -2)
        #expect(try await roster.presenceChanges(since: online.version).rooms == ["a", "b"])
    }
}
