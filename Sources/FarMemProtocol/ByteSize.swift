/// Parses sizes as people write them: "8GiB", "512MiB", "64m", "4096".
/// Binary units (KiB, MiB, GiB, TiB and the bare k, m, g, t) are powers of
/// 1024; KB, MB, GB, TB are powers of 1000.
public func parseByteSize(_ text: String) -> Int? {
    let lower = String(text.lowercased().filter { $0 != " " && $0 != "_" })
    let units: [(String, Double)] = [
        ("kib", 0x1p10), ("mib", 0x1p20), ("gib", 0x1p30), ("tib", 0x1p40),
        ("kb", 1e3), ("mb", 1e6), ("gb", 1e9), ("tb", 1e12),
        ("k", 0x1p10), ("m", 0x1p20), ("g", 0x1p30), ("t", 0x1p40), ("b", 1),
    ]
    for (suffix, scale) in units where lower.hasSuffix(suffix) {
        guard let value = Double(lower.dropLast(suffix.count)), value >= 0, value * scale < 0x1p62 else { return nil }
        return Int(value * scale)
    }
    return Int(lower).flatMap { $0 >= 0 ? $0 : nil }
}

/// "64.0 MiB"-style rendering for reports.
public func formatByteSize(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    let tenths = Int((value * 10).rounded())
    return unit == 0 ? "\(bytes) B" : "\(tenths / 10).\(tenths % 10) \(units[unit])"
}
