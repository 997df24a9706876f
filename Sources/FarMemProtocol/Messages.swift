/// HELLO: version negotiation, the session key that names this client's
/// namespace, and the server's optional shared token.
public struct Hello: Equatable, Sendable {
    public var minVersion: UInt16
    public var maxVersion: UInt16
    public var pageSize: UInt32
    public var sessionKey: [UInt8]       // 16 bytes, random per client
    public var token: [UInt8]            // empty if the server has none

    public init(minVersion: UInt16 = ProtocolVersion.oldest, maxVersion: UInt16 = ProtocolVersion.newest, pageSize: UInt32 = UInt32(ProtocolLimits.pageSize),
                sessionKey: [UInt8], token: [UInt8] = []) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.pageSize = pageSize
        self.sessionKey = sessionKey
        self.token = token
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u16(minVersion); w.u16(maxVersion); w.u32(pageSize)
        w.raw(sessionKey.count == 16 ? sessionKey : Array(repeating: 0, count: 16))
        w.u16(UInt16(token.count)); w.raw(token)
        return w.bytes
    }

    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> Hello {
        var r = ByteReader(payload, context: "HELLO")
        let minVersion = try r.u16(), maxVersion = try r.u16(), pageSize = try r.u32()
        let key = Array(try r.bytes(16))
        let tokenLength = Int(try r.u16())
        guard tokenLength <= ProtocolLimits.maxTokenLength else {
            throw ProtocolError(.malformedFrame, "HELLO: token of \(tokenLength) bytes exceeds \(ProtocolLimits.maxTokenLength)")
        }
        let token = Array(try r.bytes(tokenLength))
        try r.expectEnd()
        return Hello(minVersion: minVersion, maxVersion: maxVersion, pageSize: pageSize, sessionKey: key, token: token)
    }
}

public struct HelloReply: Equatable, Sendable {
    public var version: UInt16
    public var pageSize: UInt32
    public var maxBatchPages: UInt32
    public var maxPayload: UInt32
    public var capacityPages: UInt64
    public var unreservedPages: UInt64

    public init(version: UInt16, pageSize: UInt32, maxBatchPages: UInt32, maxPayload: UInt32,
                capacityPages: UInt64, unreservedPages: UInt64) {
        self.version = version
        self.pageSize = pageSize
        self.maxBatchPages = maxBatchPages
        self.maxPayload = maxPayload
        self.capacityPages = capacityPages
        self.unreservedPages = unreservedPages
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u16(version); w.u16(0); w.u32(pageSize); w.u32(maxBatchPages); w.u32(maxPayload)
        w.u64(capacityPages); w.u64(unreservedPages)
        return w.bytes
    }

    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> HelloReply {
        var r = ByteReader(payload, context: "HELLO reply")
        let version = try r.u16()
        _ = try r.u16()
        let reply = HelloReply(version: version, pageSize: try r.u32(), maxBatchPages: try r.u32(),
                               maxPayload: try r.u32(), capacityPages: try r.u64(), unreservedPages: try r.u64())
        try r.expectEnd()
        return reply
    }
}

/// CREATE_REGION makes a region of `pageCount` pages named by the client and
/// reserves capacity for it: all of it, or (version 2) `reservedPages` of it;
/// DROP_REGION releases it and every page in it.
public struct RegionSpec: Equatable, Sendable {
    public var regionID: UInt64
    public var pageCount: UInt64
    /// Version 2 only; nil reserves the whole region (the version-1 meaning).
    public var reservedPages: UInt64?
    public init(regionID: UInt64, pageCount: UInt64, reservedPages: UInt64? = nil) {
        self.regionID = regionID; self.pageCount = pageCount; self.reservedPages = reservedPages
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(); w.u64(regionID); w.u64(pageCount)
        if let reservedPages { w.u64(reservedPages) }
        return w.bytes
    }
    /// `version` is the connection's: the 24-byte form is version 2's.
    public static func decode(_ payload: UnsafeRawBufferPointer, version: UInt16 = ProtocolVersion.newest) throws(ProtocolError) -> RegionSpec {
        var r = ByteReader(payload, context: "CREATE_REGION")
        var spec = RegionSpec(regionID: try r.u64(), pageCount: try r.u64())
        if version >= 2, r.remaining > 0 {
            let reserved = try r.u64()
            guard reserved <= spec.pageCount else {
                throw ProtocolError(.malformedFrame, "CREATE_REGION: reserved_pages \(reserved) exceeds page_count \(spec.pageCount)")
            }
            spec.reservedPages = reserved
        }
        try r.expectEnd()
        return spec
    }
}

/// RESERVE (version 2) sets a region's reservation to `reservedPages`; the
/// reply carries the reservation the region has now (never below the pages it
/// holds).
public struct Reservation: Equatable, Sendable {
    public var regionID: UInt64
    public var reservedPages: UInt64
    public init(regionID: UInt64, reservedPages: UInt64) { self.regionID = regionID; self.reservedPages = reservedPages }

    public func encode() -> [UInt8] { var w = ByteWriter(); w.u64(regionID); w.u64(reservedPages); return w.bytes }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> Reservation {
        var r = ByteReader(payload, context: "RESERVE")
        let reservation = Reservation(regionID: try r.u64(), reservedPages: try r.u64())
        try r.expectEnd()
        return reservation
    }

    public static func encodeReply(reservedPages: UInt64) -> [UInt8] { var w = ByteWriter(); w.u64(reservedPages); return w.bytes }
    public static func decodeReply(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> UInt64 {
        var r = ByteReader(payload, context: "RESERVE reply")
        let pages = try r.u64()
        try r.expectEnd()
        return pages
    }
}

public struct RegionRef: Equatable, Sendable {
    public var regionID: UInt64
    public init(regionID: UInt64) { self.regionID = regionID }
    public func encode() -> [UInt8] { var w = ByteWriter(); w.u64(regionID); return w.bytes }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> RegionRef {
        var r = ByteReader(payload, context: "DROP_REGION")
        let ref = RegionRef(regionID: try r.u64())
        try r.expectEnd()
        return ref
    }
}

/// FENCE (version 3): `u32 link, u32 generation`. A client numbers its
/// connections to a session: one link per thread that talks to the server,
/// and a generation that grows each time that link reconnects. Once a
/// connection has fenced (link, g), a connection of the same link with a
/// lower generation can no longer write or discard pages: a request the
/// client gave up on (a time-out, then a retry on a new connection) can never
/// land later over the retry's newer data.
public struct Fence: Equatable, Sendable {
    public var link: UInt32
    public var generation: UInt32
    public init(link: UInt32, generation: UInt32) { self.link = link; self.generation = generation }
    public func encode() -> [UInt8] {
        var w = ByteWriter(); w.u32(link); w.u32(generation); return w.bytes
    }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> Fence {
        var r = ByteReader(payload, context: "FENCE")
        let fence = Fence(link: try r.u32(), generation: try r.u32())
        try r.expectEnd()
        return fence
    }
}

/// DISCARD forgets a range of pages: the next read of them returns zeros.
public struct DiscardRange: Equatable, Sendable {
    public var regionID: UInt64
    public var firstPage: UInt64
    public var pageCount: UInt64
    public init(regionID: UInt64, firstPage: UInt64, pageCount: UInt64) {
        self.regionID = regionID; self.firstPage = firstPage; self.pageCount = pageCount
    }
    public func encode() -> [UInt8] {
        var w = ByteWriter(); w.u64(regionID); w.u64(firstPage); w.u64(pageCount); return w.bytes
    }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> DiscardRange {
        var r = ByteReader(payload, context: "DISCARD")
        let range = DiscardRange(regionID: try r.u64(), firstPage: try r.u64(), pageCount: try r.u64())
        try r.expectEnd()
        return range
    }
}

/// The page list at the front of READ_PAGES and WRITE_PAGES:
/// u64 region, u32 count, u32 reserved (0), count x u64 page numbers.
/// WRITE_PAGES follows it with count x pageSize bytes of data.
public struct PageBatchHeader: Equatable, Sendable {
    public var regionID: UInt64
    public var pages: [UInt64]
    public init(regionID: UInt64, pages: [UInt64]) { self.regionID = regionID; self.pages = pages }

    public static func fixedSize(count: Int) -> Int { 16 + 8 * count }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: PageBatchHeader.fixedSize(count: pages.count))
        w.u64(regionID); w.u32(UInt32(pages.count)); w.u32(0)
        for page in pages { w.u64(page) }
        return w.bytes
    }

    /// Decodes the page list and returns it with the offset where page data begins.
    public static func decode(_ payload: UnsafeRawBufferPointer, withData: Bool) throws(ProtocolError) -> (PageBatchHeader, dataOffset: Int) {
        let name = withData ? "WRITE_PAGES" : "READ_PAGES"
        var r = ByteReader(payload, context: name)
        let region = try r.u64()
        let count = Int(try r.u32())
        let reserved = try r.u32()
        guard reserved == 0 else { throw ProtocolError(.malformedFrame, "\(name): reserved field is \(reserved), must be 0") }
        guard count >= 1, count <= ProtocolLimits.maxBatchPages else {
            throw ProtocolError(.tooLarge, "\(name): batch of \(count) pages; allowed 1...\(ProtocolLimits.maxBatchPages)")
        }
        var pages: [UInt64] = []
        pages.reserveCapacity(count)
        for _ in 0..<count { pages.append(try r.u64()) }
        let dataOffset = r.offset
        let expected = withData ? count * ProtocolLimits.pageSize : 0
        guard r.remaining == expected else {
            throw ProtocolError(.malformedFrame, "\(name): \(r.remaining) bytes after the page list, expected \(expected)")
        }
        return (PageBatchHeader(regionID: region, pages: pages), dataOffset)
    }
}

/// STATS reply: server-wide figures and this session's share.
public struct ServerStats: Equatable, Sendable, Codable {
    public var capacityPages: UInt64 = 0
    public var reservedPages: UInt64 = 0
    public var storedPages: UInt64 = 0
    public var sessions: UInt64 = 0
    public var connections: UInt64 = 0
    public var sessionRegions: UInt64 = 0
    public var sessionReservedPages: UInt64 = 0
    public var sessionStoredPages: UInt64 = 0
    public var pagesRead: UInt64 = 0
    public var pagesWritten: UInt64 = 0
    /// Version 3, on a server with a keys file: the asking session's tenant.
    public var tenant: Tenant?
    public init() {}

    public struct Tenant: Equatable, Sendable, Codable {
        public var name: String
        public var quotaPages: UInt64
        public var reservedPages: UInt64
        public var storedPages: UInt64
        public init(name: String, quotaPages: UInt64, reservedPages: UInt64, storedPages: UInt64) {
            self.name = name; self.quotaPages = quotaPages; self.reservedPages = reservedPages; self.storedPages = storedPages
        }
    }

    static let fieldCount = 10

    /// Versions 1 and 2: the ten figures. Version 3 adds the tenant:
    /// `u16 name_length, name, u64 quota_pages, u64 reserved_pages, u64 stored_pages`
    /// (name_length 0 and no more fields on a server without tenants).
    public func encode(version: UInt16 = ProtocolVersion.newest) -> [UInt8] {
        var w = ByteWriter()
        for v in [capacityPages, reservedPages, storedPages, sessions, connections, sessionRegions,
                  sessionReservedPages, sessionStoredPages, pagesRead, pagesWritten] { w.u64(v) }
        if version >= 3 {
            let name = Array((tenant?.name ?? "").utf8)
            w.u16(UInt16(name.count)); w.raw(name)
            if let tenant { w.u64(tenant.quotaPages); w.u64(tenant.reservedPages); w.u64(tenant.storedPages) }
        }
        return w.bytes
    }

    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> ServerStats {
        var r = ByteReader(payload, context: "STATS reply")
        var s = ServerStats()
        s.capacityPages = try r.u64(); s.reservedPages = try r.u64(); s.storedPages = try r.u64()
        s.sessions = try r.u64(); s.connections = try r.u64(); s.sessionRegions = try r.u64()
        s.sessionReservedPages = try r.u64(); s.sessionStoredPages = try r.u64()
        s.pagesRead = try r.u64(); s.pagesWritten = try r.u64()
        if r.remaining > 0 {
            let length = Int(try r.u16())
            if length > 0 {
                let name = String(decoding: try r.bytes(length), as: UTF8.self)
                s.tenant = Tenant(name: name, quotaPages: try r.u64(), reservedPages: try r.u64(), storedPages: try r.u64())
            }
        }
        try r.expectEnd()
        return s
    }
}
