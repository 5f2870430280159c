//! `redstone stats`: the counters as a table, per node for a cluster.

use std::fmt::Write;

use redstone::client::TensorStore;
use redstone::cluster::NodeStats;
use redstone::disk::DiskStats;
use redstone::stats::Stats;

use crate::error::CliError;
use crate::target::Store;

const HEADER: [&str; 8] = [
    "node",
    "entries",
    "used",
    "budget",
    "used %",
    "hit rate",
    "hits/misses",
    "evictions",
];

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn row(name: &str, s: &Stats) -> [String; 8] {
    [
        name.to_owned(),
        s.entries.to_string(),
        mib(s.memory_used),
        mib(s.memory_limit),
        format!("{:.1}", s.memory_utilization * 100.0),
        format!("{:.1}%", s.hit_rate * 100.0),
        format!("{}/{}", s.hits, s.misses),
        s.evictions.to_string(),
    ]
}

/// One line about a disk tier.
fn disk_line(d: &DiskStats) -> String {
    format!(
        "disk: {} tensors, {} of {}, hits/misses {}/{}, promotions {}, writes {} (dropped {}), corrupt {}, evictions {}, {}",
        d.entries,
        mib(d.bytes),
        mib(d.limit),
        d.hits,
        d.misses,
        d.promotions,
        d.writes,
        d.dropped_writes,
        d.corrupt,
        d.evictions,
        if d.writable { "writable" } else { "NOT WRITABLE" }
    )
}

/// Lays out rows under the header, columns aligned.
fn table(rows: &[[String; 8]]) -> String {
    let mut widths = HEADER.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for r in std::iter::once(&header).chain(rows) {
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            // Names left-aligned, numbers right-aligned.
            let _ = if i == 0 {
                write!(out, "{cell:<w$}  ")
            } else {
                write!(out, "{cell:>w$}  ")
            };
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// The table for `store`: one row, or one per node plus their total; and
/// for one server's fast path with a disk tier, a line about it.
pub async fn render(store: &Store, name: &str) -> Result<String, CliError> {
    let Some(nodes) = store.node_stats().await else {
        let stats = TensorStore::stats(store).await?;
        let mut out = table(&[row(name, &stats)]);
        if let Store::Fast(client) = store {
            // A server without a disk tier says so; an older one without
            // the opcode answers with an error: no line either way.
            if let Ok(Some(d)) = client.disk_stats().await {
                let _ = writeln!(out, "{}", disk_line(&d));
            }
        }
        return Ok(out);
    };
    let mut rows = Vec::new();
    let mut down = Vec::new();
    for node in &nodes {
        match &node.stats {
            Ok(s) => rows.push(row(&node.addr, s)),
            Err(e) => down.push(format!("{}: {e}", node.addr)),
        }
    }
    let Some(total) = NodeStats::sum(&nodes) else {
        return Err(CliError::Unreachable(down.join("; ")));
    };
    rows.push(row("total", &total));
    let mut out = table(&rows);
    for line in down {
        let _ = writeln!(out, "unreachable: {line}");
    }
    Ok(out)
}
