#if canImport(Glibc)
import Glibc
#endif

/// Reads a small text file whole (token files, port files); nil if unreadable.
public func readTextFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The first line of a token file, as bytes (a trailing newline is not part of it).
public func readTokenFile(_ path: String) -> [UInt8]? {
    guard let text = readTextFile(path) else { return nil }
    return Array((text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "").utf8)
}

/// The text in a NUL-terminated C buffer (an error message a C call filled in).
public func stringFromCBuffer(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
