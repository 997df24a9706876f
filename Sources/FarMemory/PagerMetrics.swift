/// The library's statistics in the Prometheus text format (0.0.4), for
/// `FarMemoryConfiguration.metricsListen` (C: the FARMEM_METRICS variable).
/// Read off `PagerStatistics` when scraped: nothing on the fault path.
enum PagerMetrics {
    static let latencyBounds: [Double] = [5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3, 1]

    static func render(_ s: PagerStatistics, budgetBytes: Int, faultService: LatencyHistogram) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: UInt64) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        let page: UInt64 = 4096
        metric("farmem_budget_bytes", "gauge", "Local memory the pager keeps resident at most.", UInt64(budgetBytes))
        metric("farmem_resident_bytes", "gauge", "Far-region pages resident now.", s.residentPages * page)
        metric("farmem_staged_bytes", "gauge", "Pages on their way out (write-back in flight).", s.stagedPages * page)
        metric("farmem_unevictable_pages", "gauge", "Pages the kernel refuses to move out (pinned, locked).", s.unevictablePages)
        metric("farmem_faults_total", "counter", "Missing-page faults handled.", s.faults)
        metric("farmem_write_protect_faults_total", "counter", "First writes to clean pages.", s.writeProtectFaults)
        metric("farmem_fetched_pages_total", "counter", "Pages read from the memory servers for a fault.", s.fetches)
        metric("farmem_prefetched_pages_total", "counter", "Pages fetched ahead of a fault.", s.prefetched)
        metric("farmem_zero_fills_total", "counter", "First touches served with a zero page.", s.zeroFills)
        metric("farmem_evictions_total", "counter", "Pages moved out of local memory.", s.evictions)
        metric("farmem_clean_drops_total", "counter", "Evicted pages dropped without a write-back.", s.cleanDrops)
        metric("farmem_write_backs_total", "counter", "Pages written back to the memory servers.", s.writeBacks)
        metric("farmem_discards_total", "counter", "Pages the application discarded (MADV_DONTNEED, munmap).", s.discards)
        metric("farmem_received_bytes_total", "counter", "Page bytes received from the memory servers.", s.bytesIn)
        metric("farmem_sent_bytes_total", "counter", "Page bytes sent to the memory servers.", s.bytesOut)
        metric("farmem_retries_total", "counter", "Requests tried again after a network failure.", s.retries)
        metric("farmem_poisoned_pages_total", "counter", "Pages no server could return (the access raised SIGBUS).", s.poisoned)
        metric("farmem_rdma_pages_in_total", "counter", "Pages fetched with one-sided RDMA READs.", s.rdmaPagesIn)
        metric("farmem_rdma_pages_out_total", "counter", "Pages written with one-sided RDMA WRITEs.", s.rdmaPagesOut)
        metric("farmem_rdma_pages_in_place_total", "counter", "Pages RDMA READ straight into a shared region's page cache.", s.rdmaPagesInPlace)
        metric("farmem_hot_refaults_total", "counter", "Pages fetched again soon after their eviction.", s.hotRefaults)
        metric("farmem_second_chances_total", "counter", "Hot pages kept when FIFO order picked them.", s.secondChances)
        metric("farmem_probation_hits_total", "counter", "Faults served from the probation area, without the network.", s.probationHits)
        metric("farmem_probation_expired_total", "counter", "Pages that left the probation area untouched.", s.probationExpired)
        metric("farmem_probation_pages", "gauge", "Evicted pages held in the probation area.", s.probationPages)
        metric("farmem_budget_waits_total", "counter", "Faults that waited for eviction to make room under the budget.", s.budgetWaits)
        metric("farmem_forked_children", "gauge", "Forked child processes served (they map memfd or hugetlb regions).", s.forkedChildren)
        metric("farmem_child_faults_total", "counter", "Faults of forked children served.", s.childFaults)
        metric("farmem_servers", "gauge", "Memory servers configured.", s.servers)
        metric("farmem_servers_down", "gauge", "Memory servers marked down.", s.serversDown)
        metric("farmem_under_replicated_extents", "gauge", "Extents with fewer live copies than configured.", s.underReplicatedExtents)
        metric("farmem_misplaced_extents", "gauge", "Extents not yet moved back to where the hash puts them.", s.misplacedExtents)
        metric("farmem_repaired_pages_total", "counter", "Pages copied by the repair.", s.pagesRepaired)
        metric("farmem_moved_extents_total", "counter", "Extents moved back to a rejoined server.", s.extentsMoved)
        metric("farmem_server_rejoins_total", "counter", "Times a server marked down rejoined.", s.serverRejoins)
        let (counts, total, sum) = faultService.cumulative(atMost: latencyBounds.map { UInt64($0 * 1e9) })
        let name = "farmem_fault_service_seconds"
        out += "# HELP \(name) Time the handler spent per fault, message read to page installed (within 6.25%).\n# TYPE \(name) histogram\n"
        for (bound, count) in zip(latencyBounds, counts) { out += "\(name)_bucket{le=\"\(bound)\"} \(count)\n" }
        out += "\(name)_bucket{le=\"+Inf\"} \(total)\n\(name)_sum \(Double(sum) / 1e9)\n\(name)_count \(total)\n"
        return out
    }
}
