import DequeModule

/// The authenticator's memory, as a plain value (kept behind a lock by ``DatabaseAuthenticator``):
///
/// - users: username → the stored password hash, or "no such user" (a negative entry, kept for the
///   shorter `negativeTTL`), for `ttl`;
/// - verified: (username, keyed digest of the presented password) → the stored hash it was verified
///   against, for `ttl`. A hit needs the stored hash to be the same one, so once the user entry is
///   refreshed after `iotgw user passwd`, the old password stops working.
///
/// Both maps hold at most `maxEntries`; the oldest entries go first. Time is passed in, so tests drive
/// it by hand.
struct AuthCache {
    struct Settings: Sendable, Hashable {
        var ttl: Duration
        var negativeTTL: Duration
        var maxEntries: Int
    }

    struct VerifiedKey: Hashable, Sendable {
        var username: String
        var digest: [UInt8]
    }

    var settings: Settings
    private var users: ExpiringMap<String, String?>
    private var verified: ExpiringMap<VerifiedKey, String>

    init(settings: Settings) {
        self.settings = settings
        users = ExpiringMap(maxEntries: settings.maxEntries)
        verified = ExpiringMap(maxEntries: settings.maxEntries)
    }

    /// The cached look-up of `username`: `.some(hash)`, `.some(nil)` for a known-missing user, or nil
    /// when not cached (or expired).
    mutating func user(_ username: String, now: ContinuousClock.Instant) -> String?? {
        users.value(for: username, now: now)
    }

    mutating func storeUser(_ username: String, hash: String?, now: ContinuousClock.Instant) {
        let ttl = hash == nil ? settings.negativeTTL : settings.ttl
        guard ttl > .zero else { return }
        users.store(hash, for: username, expires: now.advanced(by: ttl))
    }

    /// Whether this password (by digest) was verified against exactly `storedHash` within the TTL.
    mutating func isVerified(_ key: VerifiedKey, storedHash: String, now: ContinuousClock.Instant) -> Bool {
        verified.value(for: key, now: now) == storedHash
    }

    mutating func storeVerified(_ key: VerifiedKey, storedHash: String, now: ContinuousClock.Instant) {
        guard settings.ttl > .zero else { return }
        verified.store(storedHash, for: key, expires: now.advanced(by: settings.ttl))
    }

    /// Forgets everything (a reload, or new settings).
    mutating func removeAll() {
        users = ExpiringMap(maxEntries: settings.maxEntries)
        verified = ExpiringMap(maxEntries: settings.maxEntries)
    }

    var userCount: Int { users.count }
    var verifiedCount: Int { verified.count }
}

/// A map whose entries expire, holding at most `maxEntries` (the oldest stored is evicted first).
struct ExpiringMap<Key: Hashable, Value> {
    private struct Entry {
        var value: Value
        var expires: ContinuousClock.Instant
        var generation: UInt64
    }

    private var entries: [Key: Entry] = [:]
    /// Keys in the order stored; an element whose generation no longer matches its entry is stale
    /// (the key was stored again or removed) and skipped.
    private var order: Deque<(key: Key, generation: UInt64)> = []
    private var generation: UInt64 = 0
    let maxEntries: Int

    init(maxEntries: Int) {
        self.maxEntries = max(1, maxEntries)
    }

    var count: Int { entries.count }

    mutating func value(for key: Key, now: ContinuousClock.Instant) -> Value? {
        guard let entry = entries[key] else { return nil }
        guard now < entry.expires else {
            entries[key] = nil
            return nil
        }
        return entry.value
    }

    mutating func store(_ value: Value, for key: Key, expires: ContinuousClock.Instant) {
        generation += 1
        entries[key] = Entry(value: value, expires: expires, generation: generation)
        order.append((key, generation))
        while entries.count > maxEntries, let oldest = order.popFirst() {
            if entries[oldest.key]?.generation == oldest.generation { entries[oldest.key] = nil }
        }
        // Re-stored keys leave stale elements behind; rebuild before they outnumber the live ones.
        if order.count > 2 * maxEntries + 16 {
            order = Deque(entries.map { ($0.key, $0.value.generation) }.sorted { $0.1 < $1.1 })
        }
    }
}
