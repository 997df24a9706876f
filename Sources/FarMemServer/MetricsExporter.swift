import FarMemProtocol

/// The server's figures in the Prometheus text format (version 0.0.4), for
/// `--metrics-listen`. Written here rather than through swift-metrics and a
/// Prometheus backend: the figures already live in the server's own atomics
/// (CapacityLedger, ServerMetrics), so rendering them on a scrape is all an
/// exporter has to do, and no dependency is added to the request path.
struct MetricsExporter: Sendable {
    let context: ServerContext
    let metrics: ServerMetrics

    func render() -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: String = "", _ value: some CustomStringConvertible) {
            out += labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(labels)} \(value)\n"
        }
        let stats = context.stats()
        let page = UInt64(ProtocolLimits.pageSize)
        // Single values: (name, type, help, value).
        let single: [(String, String, String, UInt64)] = [
            ("farmemd_capacity_bytes", "gauge", "Page memory the server may hold for all clients.", stats.capacityPages * page),
            ("farmemd_reserved_bytes", "gauge", "Capacity promised to regions (CREATE_REGION, RESERVE).", stats.reservedPages * page),
            ("farmemd_stored_bytes", "gauge", "Pages holding data (written over TCP and not discarded).", stats.storedPages * page),
            ("farmemd_sessions", "gauge", "Live sessions (clients).", stats.sessions),
            ("farmemd_connections", "gauge", "Open TCP connections.", stats.connections),
            ("farmemd_connections_accepted_total", "counter", "TCP connections accepted since start.", metrics.connectionsAccepted.current),
            ("farmemd_connections_refused_total", "counter", "TCP connections refused (max-connections reached).", metrics.connectionsRefused.current),
            ("farmemd_pages_read_total", "counter", "Pages sent in READ_PAGES replies.", stats.pagesRead),
            ("farmemd_pages_written_total", "counter", "Pages stored by WRITE_PAGES.", stats.pagesWritten),
            ("farmemd_received_bytes_total", "counter", "Request bytes received (headers and payloads).", metrics.bytesReceived.current),
            ("farmemd_sent_bytes_total", "counter", "Reply bytes sent (headers and payloads).", metrics.bytesSent.current),
            ("farmemd_frame_buffers", "gauge", "Frame buffers (about 1 MiB each) held by connections for a request still arriving or a reply not yet taken.",
             UInt64(max(context.bufferGauges.inUse.load(ordering: .relaxed), 0))),
            ("farmemd_frame_buffer_limit", "gauge", "Frame buffers connections may hold together (--buffer-memory).",
             UInt64(context.bufferGauges.limit.load(ordering: .relaxed))),
            ("farmemd_frame_buffer_overdrafts_total", "counter", "Frame buffers taken over the limit (for a reply already built).",
             UInt64(context.bufferGauges.overdrafts.load(ordering: .relaxed))),
            ("farmemd_connections_waiting_for_buffer", "gauge", "Connections whose frame waits, unread, for a frame buffer.",
             UInt64(max(context.bufferGauges.waiting.load(ordering: .relaxed), 0))),
        ]
        for (name, type, help, value) in single {
            family(name, type, help)
            sample(name, "", value)
        }

        if let rdma = context.rdma {
            let registered = context.sessions.all.map(\.registrations).reduce((0, 0)) { ($0.0 + $1.count, $0.1 + $1.bytes) }
            let rdmaFigures: [(String, String, Int)] = [
                ("farmemd_rdma_connections", "RDMA connections (queue pairs) open.", rdma.connectionCount),
                ("farmemd_rdma_registrations", "Regions registered for one-sided RDMA.", registered.0),
                ("farmemd_rdma_registered_bytes", "Memory registered for RDMA (pinned: it cannot be swapped or freed until its session ends).", registered.1),
            ]
            for (name, help, value) in rdmaFigures {
                family(name, "gauge", help)
                sample(name, "", value)
            }
        }
        if let tenants = context.tenants?.accounts {
            // Per tenant (servers with a keys file): quota and use.
            let perTenant: [(String, String, (TenantAccount) -> UInt64)] = [
                ("farmemd_tenant_quota_bytes", "Capacity the tenant's sessions may hold reserved together.", { UInt64($0.quotaPages) * page }),
                ("farmemd_tenant_reserved_bytes", "Capacity the tenant's sessions hold reserved.", { UInt64($0.reservedPages) * page }),
                ("farmemd_tenant_stored_bytes", "Pages the tenant's sessions store.", { UInt64($0.storedPages) * page }),
                ("farmemd_tenant_sessions", "The tenant's live sessions.", { UInt64($0.sessions.load(ordering: .relaxed)) }),
            ]
            for (name, help, value) in perTenant {
                family(name, "gauge", help)
                for account in tenants { sample(name, "tenant=\"\(account.name)\"", value(account)) }
            }
        }

        family("farmemd_requests_total", "counter", "Requests answered, by kind.")
        for opcode in Opcode.allCases { sample("farmemd_requests_total", "request=\"\(opcode.metricName)\"", metrics.requests[Int(opcode.rawValue)].current) }
        family("farmemd_request_errors_total", "counter", "Error replies, by error code.")
        for code in ErrorCode.allCases { sample("farmemd_request_errors_total", "code=\"\(code.name)\"", metrics.errors[Int(code.rawValue)].current) }
        family("farmemd_request_duration_seconds", "histogram", "Time from a request's frame read to its reply sent, by kind.")
        for opcode in Opcode.allCases {
            let histogram = metrics.latency[Int(opcode.rawValue)]
            let label = "request=\"\(opcode.metricName)\""
            var cumulative: UInt64 = 0
            for (i, bound) in ServerMetrics.Histogram.bounds.enumerated() {
                cumulative += histogram.buckets[i].current
                sample("farmemd_request_duration_seconds_bucket", "\(label),le=\"\(bound)\"", cumulative)
            }
            cumulative += histogram.buckets[ServerMetrics.Histogram.bounds.count].current
            sample("farmemd_request_duration_seconds_bucket", "\(label),le=\"+Inf\"", cumulative)
            sample("farmemd_request_duration_seconds_sum", label, Double(histogram.sumNanoseconds.current) / 1e9)
            // The +Inf bucket's value, not the count read later: they must agree in one scrape.
            sample("farmemd_request_duration_seconds_count", label, cumulative)
        }
        return out
    }
}

extension Opcode {
    /// The request's name in metrics labels: "read_pages", "rdma_expose".
    var metricName: String {
        switch self {
        case .hello: return "hello"
        case .createRegion: return "create_region"
        case .dropRegion: return "drop_region"
        case .readPages: return "read_pages"
        case .writePages: return "write_pages"
        case .discard: return "discard"
        case .stats: return "stats"
        case .rdmaAttach: return "rdma_attach"
        case .rdmaExpose: return "rdma_expose"
        case .reserve: return "reserve"
        case .fence: return "fence"
        }
    }
}
