import Testing

@testable import Herald

/// The denylist's bookkeeping: bounded, pruned of expired entries, and merged (never replaced)
/// by a reload from a shared store.
@Suite("Revoked tokens: bounds and merging")
struct TokenDenylistTests {
    @Test func entriesExpireAndTheLimitHoldsLiveEntriesOnly() throws {
        let tokens = RevokedTokens()
        try tokens.insert("a", until: 100, now: 50, limit: 2)
        try tokens.insert("b", until: 60, now: 50, limit: 2)
        #expect(tokens.contains("a", now: 99) && !tokens.contains("a", now: 100), "revoked until its expiry, not after")
        #expect(throws: HubError.denylistFull(limit: 2)) { try tokens.insert("c", until: 100, now: 55, limit: 2) }
        try tokens.insert("a", until: 200, now: 55, limit: 2)
        #expect(tokens.contains("a", now: 150), "extending an entry needs no room, and keeps the later expiry")
        try tokens.insert("a", until: 80, now: 55, limit: 2)
        #expect(tokens.contains("a", now: 150), "an earlier expiry never shortens one")
        // Once b expired, its place is free.
        try tokens.insert("c", until: 100, now: 61, limit: 2)
        #expect(tokens.count == 2 && tokens.contains("c", now: 61) && !tokens.contains("b", now: 61))
    }

    @Test func aReloadMergesAndNeverDropsAnEntryAnnouncedMeanwhile() throws {
        let tokens = RevokedTokens()
        try tokens.insert("announced", until: 500, now: 10, limit: 10)
        try tokens.insert("old", until: 20, now: 10, limit: 10)
        // The store's answer predates "announced": it must survive the reload.
        let added = tokens.merge(["loaded": 300, "expired": 5, "announced": 400], now: 30)
        #expect(added == ["loaded"], "only what the copy did not hold is new (and closes connections)")
        #expect(tokens.contains("announced", now: 450), "kept, with its later expiry")
        #expect(tokens.contains("loaded", now: 30))
        #expect(!tokens.contains("old", now: 30) && !tokens.contains("expired", now: 30))
        #expect(tokens.count == 2, "expired entries are forgotten by a merge")
    }
}
