import Synchronization

/// The tenants a server with a keys file knows: their secrets and accounts.
/// HELLO finds a tenant by its secret; SIGHUP reloads the file without
/// touching sessions (see `reload`).
final class TenantDirectory: Sendable {
    private struct Entry {
        var secret: [UInt8]
        var account: TenantAccount
    }
    private let entries: Mutex<[Entry]>
    /// Accounts of tenants a reload removed, while they still have sessions
    /// (their reservations are released into them as those end).
    private let retired = Mutex<[TenantAccount]>([])

    init(_ keys: TenantKeys) {
        entries = Mutex(keys.keys.map { Entry(secret: $0.secret, account: TenantAccount(name: $0.name, quotaPages: $0.quotaPages)) })
    }

    /// The tenant whose secret is `token`, or nil (unknown or revoked). Every
    /// secret is compared in full, so timing does not tell which one nearly matched.
    func authenticate(_ token: [UInt8]) -> TenantAccount? {
        entries.withLock { entries in
            var found: TenantAccount?
            for entry in entries where constantTimeEqual(entry.secret, token) { found = entry.account }
            return found
        }
    }

    /// Takes a new keys file. A tenant it keeps (by name) keeps its account,
    /// usage and sessions, with the new secret and quota; a new one starts
    /// empty; a removed one can no longer connect (its open sessions go on
    /// until they close). Returns what changed, for the log.
    func reload(_ keys: TenantKeys) -> (added: [String], removed: [String], kept: [String]) {
        entries.withLock { entries in
            var old = Dictionary(uniqueKeysWithValues: entries.map { ($0.account.name, $0.account) })
            var added: [String] = [], kept: [String] = []
            entries = keys.keys.map { key in
                if let account = old.removeValue(forKey: key.name) {
                    account.setQuota(key.quotaPages)
                    kept.append(key.name)
                    return Entry(secret: key.secret, account: account)
                }
                added.append(key.name)
                return Entry(secret: key.secret, account: TenantAccount(name: key.name, quotaPages: key.quotaPages))
            }
            retired.withLock { retired in
                retired.removeAll { $0.sessions.load(ordering: .relaxed) == 0 }
                retired += old.values.filter { $0.sessions.load(ordering: .relaxed) > 0 }
            }
            return (added, old.keys.sorted(), kept)
        }
    }

    /// Every account with a key or with sessions, for metrics.
    var accounts: [TenantAccount] {
        let current = entries.withLock { $0.map(\.account) }
        return current + retired.withLock { $0.filter { $0.sessions.load(ordering: .relaxed) > 0 } }
    }
}
