import FarMemProtocol

/// One line of a keys file (`farmemd --keys-file`): a tenant, the secret its
/// clients present in HELLO (their token), and the most server capacity its
/// sessions may hold reserved together.
public struct TenantKey: Equatable, Sendable {
    public var name: String
    public var secret: [UInt8]
    public var quotaPages: Int

    public init(name: String, secret: [UInt8], quotaPages: Int) {
        self.name = name
        self.secret = secret
        self.quotaPages = quotaPages
    }
}

/// A keys file, parsed. The format, one tenant per line:
///
///     # name    secret                            quota
///     analytics 3f9c0d6e1b2a4c8d9e0f1a2b3c4d5e6f  64GiB
///     batch     b7a1c3e5d7f9a2b4c6d8e0f1a3b5c7d9  8GiB
///
/// Fields are separated by spaces or tabs; `#` starts a comment; blank lines
/// are ignored. Names are letters, digits, `-`, `_` and `.` (they appear in
/// metrics labels and messages); secrets are 16 to 256 bytes of printable
/// text without spaces, unique in the file; quotas are sizes such as 512MiB or
/// 8GiB (at least one page). Any mistake rejects the whole file, naming the line.
public struct TenantKeys: Equatable, Sendable {
    public var keys: [TenantKey]

    public static let minSecretLength = 16

    public init(keys: [TenantKey]) { self.keys = keys }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let line: Int
        public let reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    public static func parse(_ text: String) throws(ParseError) -> TenantKeys {
        var keys: [TenantKey] = []
        var names = Set<String>(), secrets = Set<[UInt8]>()
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            let content = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            if fields.isEmpty { continue }
            guard fields.count == 3 else {
                throw ParseError(line: line, reason: "expected 'name secret quota', got \(fields.count) field\(fields.count == 1 ? "" : "s")")
            }
            let (name, secret, quota) = (fields[0], Array(fields[1].utf8), fields[2])
            guard name.utf8.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw ParseError(line: line, reason: "tenant name '\(name)': use up to 64 letters, digits, '-', '_' or '.'")
            }
            guard names.insert(name).inserted else { throw ParseError(line: line, reason: "tenant '\(name)' is listed twice") }
            guard (minSecretLength...ProtocolLimits.maxTokenLength).contains(secret.count) else {
                throw ParseError(line: line, reason: "the secret of '\(name)' has \(secret.count) bytes; use \(minSecretLength) to \(ProtocolLimits.maxTokenLength)")
            }
            guard secrets.insert(secret).inserted else {
                throw ParseError(line: line, reason: "the secret of '\(name)' is another tenant's too (a secret names its tenant)")
            }
            guard let bytes = parseByteSize(quota), bytes >= ProtocolLimits.pageSize else {
                throw ParseError(line: line, reason: "quota '\(quota)' of '\(name)': use a size of at least 4096 bytes such as 8GiB")
            }
            keys.append(TenantKey(name: name, secret: secret, quotaPages: bytes / ProtocolLimits.pageSize))
        }
        return TenantKeys(keys: keys)
    }
}
