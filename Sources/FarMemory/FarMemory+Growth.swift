import FarMemSystem

/// Growing a region without reading a page (`FarRegion.grow`; the preload
/// library's realloc of a big block). The new pages are a part of their own:
/// a store region mapped right after the region's last page, so no stored
/// page is renamed or copied on the servers. If that address space is
/// taken, the region first moves to where all of it fits: mremap moves the
/// page tables of resident pages (no copy), and the handlers follow their
/// REMAP events (evicted pages keep their numbers; see `RegionRecord.move`).
extension FarMemory {
    func grow(regionID id: UInt64, toPages newPages: Int, mayMove: Bool) throws(FarMemoryError) -> UInt {
        try lifecycle.withLock { () throws(FarMemoryError) -> UInt in
            guard let parts = book.withLock({ $0.closed ? nil : $0.open[id] }) else { throw .closed }
            let oldPages = parts.reduce(0) { $0 + $1.pageCount }
            let pieces = try placedPieces(of: parts)
            let base = pieces[0].start
            guard newPages >= oldPages else {
                throw .invalidArgument("grow to \(newPages) pages: the region has \(oldPages) already (unmap its tail to shrink it)")
            }
            guard newPages > oldPages else { return base }
            guard newPages <= Int(UInt32.max) else { throw .invalidArgument("a region is at most 16 TiB, got \(newPages) pages") }
            let oldLength = oldPages * 4096, newLength = newPages * 4096
            // The tail's address space: right after the region if it is free,
            // else a new place for all of it (the tail part goes at its end).
            var newBase = base
            do throws(Errno) {
                _ = try MemoryMapping.anonymous(at: base + UInt(oldLength), length: newLength - oldLength, noReserve: true)
            } catch {
                guard error == .exists else { throw .system("mapping \(newLength - oldLength) bytes after the region", error) }
                guard mayMove else { throw .system("growing the region where it is (the address space after it is taken)", .outOfMemory) }
                do throws(Errno) {
                    newBase = try MemoryMapping.anonymous(length: newLength, noReserve: true)
                } catch {
                    throw .system("mapping a \(newLength)-byte region", error)
                }
            }
            // The part first: a full server refuses it before anything moved.
            let tail: RegionPart
            do throws(FarMemoryError) {
                tail = try makePart(pages: newPages - oldPages, mappedAt: newBase + UInt(oldLength))
            } catch {
                if newBase != base { MemoryMapping.unmap(newBase, length: oldLength) }
                throw error
            }
            if newBase != base {
                do throws(FarMemoryError) {
                    try move(pieces, from: base, to: newBase)
                } catch {
                    closeParts([tail])
                    throw error
                }
            }
            // A barrier too: each handler has applied its REMAP events once it answers.
            let moved = try placedPieces(of: parts)
            if moved[0].start != newBase {
                logger.critical("region \(id) should start at \(newBase) after growing, its handler has it at \(moved[0].start)")
            }
            let stillOpen = book.withLock { book in
                guard book.open[id] != nil else { return false }
                book.open[id]!.append(tail)
                return true
            }
            if !stillOpen { closeParts([tail]) }   // closed meanwhile: an application bug; the part is not leaked
            return newBase
        }
    }

    /// Where each shard's chunk of each part is mapped, in page order, if the
    /// region is whole and in one piece: each chunk one extent, each right
    /// after the one before. Asks the handlers (they own the extents).
    private func placedPieces(of parts: [RegionPart]) throws(FarMemoryError) -> [Extent] {
        var pieces: [Extent] = []
        var partStart = 0
        for part in parts {
            for (shard, record) in part.records {
                let extents = shards[shard].extents(of: record)
                let pageInRegion = partStart + record.chunk.lowerBound
                guard extents.count == 1, extents[0].pageCount == record.chunk.count,
                      pieces.isEmpty || extents[0].start == pieces[0].start + UInt(pageInRegion * 4096) else {
                    throw .invalidArgument("only a whole region can grow: this one was partly unmapped or split by mremap")
                }
                pieces.append(extents[0])
            }
            partStart += part.pageCount
        }
        return pieces
    }

    /// Moves every piece from the region at `base` to the same place in the
    /// region at `newBase` (mapped by the caller). If one cannot move, the
    /// ones moved go back, so the region is never left split.
    private func move(_ pieces: [Extent], from base: UInt, to newBase: UInt) throws(FarMemoryError) {
        for (index, piece) in pieces.enumerated() {
            do throws(Errno) {
                try MemoryMapping.move(piece.start, length: piece.pageCount * 4096, to: newBase + (piece.start - base))
            } catch {
                for earlier in pieces[..<index] {
                    let length = earlier.pageCount * 4096
                    do throws(Errno) {
                        // Only where nobody mapped anything since (never over another mapping).
                        _ = try MemoryMapping.anonymous(at: earlier.start, length: length, noReserve: true)
                        try MemoryMapping.move(newBase + (earlier.start - base), length: length, to: earlier.start)
                    } catch {
                        logger.critical("a region that could not move is left split: \(length) bytes at \(newBase + (earlier.start - base)) (\(error))")
                    }
                }
                let rest = pieces[index...].reduce(0) { $0 + $1.pageCount * 4096 }
                MemoryMapping.unmap(newBase + (piece.start - base), length: rest)
                throw .system("moving the region to grow it", error)
            }
        }
    }
}
