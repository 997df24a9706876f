/// One store region of a far region, and its records in the shards that
/// handle its pages. A region starts as one part; each `FarRegion.grow`
/// appends a part for the new pages, mapped right after the others, so
/// growing never renames or copies a page that is already stored.
struct RegionPart {
    let store: StoreRegion
    let pageCount: Int
    /// One per shard with a non-empty chunk of the part, in page order.
    let records: [(shard: Int, record: RegionRecord)]
    /// A memfd part's file and second mapping (one for all its shards' chunks).
    var shared: SharedBacking? { records.first?.record.shared }
}
