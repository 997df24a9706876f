import Foundation

/// `farmem bench --plot FILE.png`: one workload at a glance. Left, throughput
/// per budget for each backend (log scale; local memory and the uffd floor as
/// lines). Right, access-latency percentiles (p50 ... p99.9) for each backend
/// at the smallest budget, latency on a log axis.
struct BenchPlot {
    let report: BenchReport
    let workload: String

    /// Every backend in legend order: the references (drawn as lines), then the budgeted ones (bars).
    static let references = ["local", "uffd-floor"]
    static let budgeted = ["kernel-swap", "farmem-tcp", "farmem-tcp-noprefetch", "farmem-cluster-3x2", "farmem-cluster-3x1", "farmem-rdma"]
    static let colors: [String: PNGCanvas.Color] = [
        "local": .init(r: 40, g: 40, b: 40), "uffd-floor": .init(r: 150, g: 150, b: 150),
        "kernel-swap": .init(r: 214, g: 96, b: 77), "farmem-tcp": .init(r: 52, g: 120, b: 200),
        "farmem-tcp-noprefetch": .init(r: 130, g: 180, b: 230), "farmem-rdma": .init(r: 60, g: 170, b: 90),
        "farmem-cluster-3x2": .init(r: 150, g: 90, b: 190), "farmem-cluster-3x1": .init(r: 200, g: 160, b: 230),
    ]

    func render() -> PNGCanvas {
        var canvas = PNGCanvas(width: 1100, height: 520)
        let rows = report.rows.filter { $0.workload.rawValue == workload && !$0.failed && $0.seconds > 0 }
        canvas.text("farmem bench: \(workload)", x: 20, y: 12, scale: 2)
        drawThroughput(&canvas, rows: rows, x: 60, y: 60, w: 460, h: 360)
        drawLatency(&canvas, rows: rows, x: 620, y: 60, w: 440, h: 360)
        // Legend
        var lx = 20
        for name in Self.references + Self.budgeted
        where rows.contains(where: { $0.backend == name }) {
            canvas.fill(x: lx, y: 480, w: 14, h: 14, Self.colors[name]!)
            canvas.text(name, x: lx + 20, y: 482, scale: 1)
            lx += 30 + name.count * 6 + 20
        }
        return canvas
    }

    private func logScale(_ value: Double, _ lo: Double, _ hi: Double) -> Double {
        (log10(max(value, lo)) - log10(lo)) / (log10(hi) - log10(lo))
    }

    private func axes(_ c: inout PNGCanvas, x: Int, y: Int, w: Int, h: Int, lo: Double, hi: Double, vertical: Bool, label: String) {
        c.line(x, y + h, x + w, y + h, PNGCanvas.black)
        c.line(x, y, x, y + h, PNGCanvas.black)
        var decade = pow(10, floor(log10(lo)))
        while decade <= hi * 1.0001 {
            if decade >= lo {
                let f = logScale(decade, lo, hi)
                let text = decade >= 1000 ? "\(Int(decade / 1000))k" : decade >= 1 ? "\(Int(decade))" : String(format: "%.1f", decade)
                if vertical {
                    let py = y + h - Int(f * Double(h))
                    c.line(x, py, x + w, py, PNGCanvas.grey)
                    c.text(text, x: x - 8 - text.count * 6, y: py - 3)
                } else {
                    let px = x + Int(f * Double(w))
                    c.line(px, y, px, y + h, PNGCanvas.grey)
                    c.text(text, x: px - text.count * 3, y: y + h + 6)
                }
            }
            decade *= 10
        }
        c.text(label, x: x, y: y - 16)
    }

    private func drawThroughput(_ c: inout PNGCanvas, rows: [BenchRow], x: Int, y: Int, w: Int, h: Int) {
        let values = rows.map(\.pagesPerSecond).filter { $0 > 0 }
        guard let maxValue = values.max(), let minValue = values.min() else { return }
        let lo = pow(10, floor(log10(minValue))), hi = pow(10, ceil(log10(maxValue)))
        axes(&c, x: x, y: y, w: w, h: h, lo: lo, hi: hi, vertical: true, label: "pages per second by budget")
        for name in Self.references {
            guard let row = rows.first(where: { $0.backend == name }) else { continue }
            let py = y + h - Int(logScale(row.pagesPerSecond, lo, hi) * Double(h))
            c.line(x, py, x + w, py, Self.colors[name]!, thickness: 2)
        }
        let budgets = Array(Set(rows.filter { !Self.references.contains($0.backend) }.map(\.budgetPercent))).sorted()
        let backends = Self.budgeted.filter { name in rows.contains { $0.backend == name } }
        guard !budgets.isEmpty, !backends.isEmpty else { return }
        let groupWidth = w / budgets.count
        let barWidth = max(4, (groupWidth - 30) / backends.count)
        for (g, budget) in budgets.enumerated() {
            let gx = x + g * groupWidth + 15
            for (b, name) in backends.enumerated() {
                guard let row = rows.first(where: { $0.backend == name && $0.budgetPercent == budget }) else { continue }
                let bh = Int(logScale(row.pagesPerSecond, lo, hi) * Double(h))
                c.fill(x: gx + b * barWidth, y: y + h - bh, w: barWidth - 2, h: bh, Self.colors[name]!)
            }
            c.text("\(budget)%", x: gx + groupWidth / 2 - 20, y: y + h + 8)
        }
    }

    private func drawLatency(_ c: inout PNGCanvas, rows: [BenchRow], x: Int, y: Int, w: Int, h: Int) {
        let smallest = rows.filter { $0.backend != "local" && $0.backend != "uffd-floor" }.map(\.budgetPercent).min() ?? 0
        let chosen = rows.filter { ($0.backend == "local" || $0.backend == "uffd-floor" || $0.budgetPercent == smallest) && $0.latencyP50Nanoseconds + $0.latencyP999Nanoseconds > 0 }
        let latencies = chosen.flatMap { [$0.latencyP50Nanoseconds, $0.latencyP90Nanoseconds, $0.latencyP99Nanoseconds, $0.latencyP999Nanoseconds] }
            .map { max(Double($0) / 1000, 0.1) }
        guard let maxValue = latencies.max() else { return }
        let lo = 0.1, hi = pow(10, ceil(log10(maxValue)))
        axes(&c, x: x, y: y, w: w, h: h, lo: lo, hi: hi, vertical: false, label: "access latency us at \(smallest)% budget: p50 p90 p99 p99.9")
        let ranks = ["p50", "p90", "p99", "p99.9"]
        for (i, rank) in ranks.enumerated() {
            let py = y + h - (i + 1) * h / (ranks.count + 1)
            c.line(x, py, x + w, py, PNGCanvas.grey)
            c.text(rank, x: x - 40, y: py - 3)
        }
        for row in chosen {
            let points = [row.latencyP50Nanoseconds, row.latencyP90Nanoseconds, row.latencyP99Nanoseconds, row.latencyP999Nanoseconds]
                .enumerated().map { i, ns in
                    (x + Int(logScale(max(Double(ns) / 1000, lo), lo, hi) * Double(w)), y + h - (i + 1) * h / (ranks.count + 1))
                }
            for (a, b) in zip(points, points.dropFirst()) {
                c.line(a.0, a.1, b.0, b.1, Self.colors[row.backend] ?? PNGCanvas.black, thickness: 2)
            }
            for p in points { c.fill(x: p.0 - 3, y: p.1 - 3, w: 7, h: 7, Self.colors[row.backend] ?? PNGCanvas.black) }
        }
    }
}
