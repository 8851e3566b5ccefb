//! The report of `benches/beam/compare.sh`: reads the JSON lines both sides printed and writes
//! the side-by-side table (workload, BEAM, Rust, Rust/BEAM, the targets of issue 7), as text on
//! stdout and optionally as markdown, plus SVG charts of allocator throughput against clients
//! and against shards, drawn by hand (no plotting dependency).
//!
//! ```text
//! cargo run --release --example beam_report -- RESULTS.jsonl [--markdown FILE] [--svg-dir DIR]
//! ```
//!
//! Input lines: `{"side":"beam"|"rust", "workload": ..., ...}` from `freqbench.erl`,
//! `freqalloc bench tables --json` and `freqalloc load --json` (labelled `alloc/<durability>`
//! by compare.sh), and one `{"side":"meta", ...}` line describing the run. Other lines are
//! ignored.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

const TYPES: [&str; 4] = ["set", "ordered_set", "bag", "duplicate_bag"];
const DETS_TYPES: [&str; 3] = ["set", "bag", "duplicate_bag"];
const OPS: [&str; 3] = ["insert", "lookup", "delete"];

/// What a row must reach.
#[derive(Clone, Copy)]
enum Target {
    /// No target: shown for context.
    None,
    /// Rust/BEAM at least this.
    Ratio(f64),
    /// The Rust figure at least this, whatever BEAM does.
    Rust(f64),
}

struct Row {
    workload: String,
    /// Threads, or clients and shards.
    setup: String,
    unit: &'static str,
    beam: Option<f64>,
    rust: Option<f64>,
    target: Target,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        Some(self.rust? / self.beam?)
    }
    fn target_text(&self) -> String {
        match self.target {
            Target::None => "-".into(),
            Target::Ratio(x) => format!(">= {x}x"),
            Target::Rust(v) => format!(">= {} {}", human(v), self.unit),
        }
    }
    fn verdict(&self) -> String {
        match self.target {
            Target::None => "-".into(),
            Target::Ratio(x) => match self.ratio() {
                Some(r) if r >= x => "met".into(),
                Some(r) => format!("missed ({:.0}% of target)", 100.0 * r / x),
                None => "no data".into(),
            },
            Target::Rust(v) => match self.rust {
                Some(r) if r >= v => "met".into(),
                Some(r) => format!("missed ({:.0}% of target)", 100.0 * r / v),
                None => "no data".into(),
            },
        }
    }
}

/// 1234567 as "1.23 M".
fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The label of 10^e: 1, 10, 100, 1K, ..., 100M, 1G.
fn decade(e: i32) -> String {
    let units = ["", "K", "M", "G", "T"];
    let unit = usize::try_from(e.max(0) / 3)
        .unwrap_or(0)
        .min(units.len() - 1);
    if e < 0 {
        return format!("1e{e}");
    }
    format!("{}{}", 10u64.pow((e - 3 * unit as i32) as u32), units[unit])
}

struct Results {
    lines: Vec<Value>,
}

impl Results {
    fn find(&self, side: &str, workload: &str, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
        self.lines
            .iter()
            .rev()
            .find(|v| v["side"] == side && v["workload"] == workload && pred(v))
    }
    /// A table workload's ops/s.
    fn table(&self, side: &str, workload: &str, threads: u64) -> Option<f64> {
        self.find(side, workload, |v| v["threads"] == threads)?["ops_per_sec"].as_f64()
    }
    /// An allocator run's `field` (pairs_per_sec or ops_per_sec).
    fn alloc(
        &self,
        side: &str,
        workload: &str,
        shards: u64,
        clients: u64,
        field: &str,
    ) -> Option<f64> {
        self.find(side, workload, |v| {
            v["shards"] == shards && v["clients"] == clients
        })?[field]
            .as_f64()
    }
    fn meta(&self) -> Value {
        self.lines
            .iter()
            .find(|v| v["side"] == "meta")
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn u64s(v: &Value, default: &[u64]) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn rows(r: &Results, clients: &[u64], shards: &[u64], shard_clients: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for tt in TYPES {
        for op in OPS {
            for threads in [1, 2] {
                let w = format!("ets/{tt}/{op}");
                rows.push(Row {
                    beam: r.table("beam", &w, threads),
                    rust: r.table("rust", &w, threads),
                    workload: w,
                    setup: format!("{threads} thr"),
                    unit: "ops/s",
                    target: Target::Ratio(10.0),
                });
            }
        }
    }
    for tt in DETS_TYPES {
        for op in OPS {
            let w = format!("dets/{tt}/{op}");
            rows.push(Row {
                beam: r.table("beam", &w, 1),
                rust: r.table("rust", &w, 1),
                workload: w,
                setup: "1 thr".into(),
                unit: "ops/s",
                target: if op == "delete" {
                    Target::None
                } else {
                    Target::Ratio(100.0)
                },
            });
        }
    }
    // The floor: sled itself (no codec, no table type) against BEAM's dets set.
    for op in OPS {
        rows.push(Row {
            beam: r.table("beam", &format!("dets/set/{op}"), 1),
            rust: r.table("rust", &format!("dets/sled_raw/{op}"), 1),
            workload: format!("raw sled vs BEAM dets/set/{op}"),
            setup: "1 thr".into(),
            unit: "ops/s",
            target: Target::None,
        });
    }
    let w = "dets/set/insert_sync_each";
    rows.push(Row {
        beam: r.table("beam", w, 1),
        rust: r.table("rust", w, 1),
        workload: w.into(),
        setup: "1 thr".into(),
        unit: "ops/s",
        target: Target::None,
    });
    let big = shards.iter().copied().max().unwrap_or(8);
    for &c in clients {
        let target = match c {
            1 => Target::Ratio(2.0),
            12 | 64 => Target::Ratio(5.0),
            _ => Target::None,
        };
        rows.push(Row {
            workload: "alloc none vs BEAM router".into(),
            setup: format!("{c} cl, {big} sh"),
            unit: "pairs/s",
            beam: r.alloc("beam", "alloc/router", big, c, "pairs_per_sec"),
            rust: r.alloc("rust", "alloc/none", big, c, "pairs_per_sec"),
            target,
        });
    }
    for &c in clients {
        rows.push(Row {
            workload: "alloc none vs BEAM single server".into(),
            setup: format!("{c} cl, {big}/1 sh"),
            unit: "pairs/s",
            beam: r.alloc("beam", "alloc/single", 1, c, "pairs_per_sec"),
            rust: r.alloc("rust", "alloc/none", big, c, "pairs_per_sec"),
            target: Target::None,
        });
    }
    for &s in shards {
        rows.push(Row {
            workload: "alloc none vs BEAM router".into(),
            setup: format!("{shard_clients} cl, {s} sh"),
            unit: "pairs/s",
            beam: r.alloc("beam", "alloc/router", s, shard_clients, "pairs_per_sec"),
            rust: r.alloc("rust", "alloc/none", s, shard_clients, "pairs_per_sec"),
            target: Target::None,
        });
    }
    let sync_each = r.table("beam", "dets/set/insert_sync_each", 1);
    for &c in clients {
        rows.push(Row {
            workload: "alloc sync ops vs BEAM dets sync/write".into(),
            setup: format!("{c} cl, {big} sh"),
            unit: "ops/s",
            beam: sync_each,
            rust: r.alloc("rust", "alloc/sync", big, c, "ops_per_sec"),
            target: if c == 64 {
                Target::Rust(50_000.0)
            } else {
                Target::None
            },
        });
    }
    rows
}

fn cell(v: Option<f64>) -> String {
    v.map(human).unwrap_or_else(|| "-".into())
}

fn ratio_cell(r: &Row) -> String {
    r.ratio()
        .map(|x| format!("{x:.2}x"))
        .unwrap_or_else(|| "-".into())
}

fn text_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<40} {:<14} {:>12} {:>12} {:>9}  {:<18} result",
        "workload", "setup", "BEAM", "Rust", "Rust/BEAM", "target"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<40} {:<14} {:>12} {:>12} {:>9}  {:<18} {}",
            r.workload,
            r.setup,
            cell(r.beam),
            cell(r.rust),
            ratio_cell(r),
            r.target_text(),
            r.verdict()
        );
    }
    s
}

fn markdown(rows: &[Row], meta: &Value, charts: &[String]) -> String {
    let text = |k: &str| {
        meta[k]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| meta[k].to_string())
    };
    let mut s = String::new();
    let _ = writeln!(s, "# freqalloc and BEAM, side by side\n");
    let _ = writeln!(
        s,
        "Measured by `benches/beam/compare.sh` in one run on one machine. Date: {}. Machine: {} \
         ({} cores). Erlang/OTP {} (erts {}), {}. Load average (1/5/15 min) at start {}, at end {}. \
         Allocator runs: {} s each, pool {} frequencies.\n",
        text("date"),
        text("cpu"),
        text("cores"),
        text("otp"),
        text("erts"),
        text("rustc"),
        text("load_start"),
        text("load_end"),
        text("seconds"),
        text("pool"),
    );
    let _ = writeln!(
        s,
        "| workload | setup | BEAM | Rust | Rust/BEAM | target | result |\n|---|---|---:|---:|---:|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.setup,
            cell(r.beam).replace(' ', "&nbsp;"),
            cell(r.rust).replace(' ', "&nbsp;"),
            ratio_cell(r),
            r.target_text(),
            r.verdict()
        );
    }
    let _ = writeln!(
        s,
        "\nFigures are operations per second (`ets/*`, `dets/*`: one insert, lookup or delete per \
         key; keys 0..N in order, value = key) or allocate+deallocate pairs per second (`alloc`). \
         `thr` threads (BEAM: processes; 1 = the owner of a default protected table, 2 = a public \
         table with write and read concurrency, half the keys each), `cl` client threads or \
         processes, `sh` shards. DETS writes run with one sync at the end; `insert_sync_each` \
         syncs after every insert. `alloc sync` counts acknowledged durable operations (each \
         allocate and each deallocate is on disk before its reply) against BEAM's DETS with a sync \
         per write. The BEAM frequency server is the course's (plain processes, lists); the \
         router sends each allocation to the back end with the most free frequencies."
    );
    for c in charts {
        let _ = writeln!(s, "\n![{c}](../{c})");
    }
    s
}

// ---------------------------------------------------------------- SVG

struct Series {
    name: String,
    color: &'static str,
    points: Vec<Option<f64>>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart with categorical x and a log10 y axis.
fn chart(title: &str, x_label: &str, y_label: &str, xs: &[String], series: &[Series]) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (80.0, 250.0, 48.0, 56.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let x_at = |i: usize| left + pw * (i as f64 + 0.5) / xs.len().max(1) as f64;
    let y_at = |v: f64| top + ph * (1.0 - (v.log10() - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    let mut e = lo as i32;
    while e <= hi as i32 {
        let y = y_at(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            decade(e)
        );
        e += 1;
    }
    for (i, x) in xs.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x_at(i),
            top + ph + 18.0,
            esc(x)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 14.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{} (log scale)</text>"#,
        top + ph / 2.0,
        esc(y_label)
    );
    for (k, se) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = se
            .points
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| *v > 0.0).map(|v| (x_at(i), y_at(v))))
            .collect();
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            se.color
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"/>"#,
                se.color
            );
        }
        let ly = top + 10.0 + 22.0 * k as f64;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            se.color,
            lx + 28.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut input = None;
    let mut markdown_out: Option<PathBuf> = None;
    let mut svg_dir: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--markdown" => markdown_out = args.next().map(PathBuf::from),
            "--svg-dir" => svg_dir = args.next().map(PathBuf::from),
            _ => input = Some(PathBuf::from(a)),
        }
    }
    let input = input.ok_or_else(|| {
        anyhow::anyhow!("usage: beam_report RESULTS.jsonl [--markdown FILE] [--svg-dir DIR]")
    })?;
    let text = std::fs::read_to_string(&input)?;
    let results = Results {
        lines: text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect(),
    };
    let meta = results.meta();
    let clients = u64s(&meta["clients"], &[1, 4, 12, 64]);
    let shards = u64s(&meta["shards"], &[1, 2, 4, 8]);
    let shard_clients = meta["shard_clients"].as_u64().unwrap_or(12);
    let big = shards.iter().copied().max().unwrap_or(8);
    let rows = rows(&results, &clients, &shards, shard_clients);
    print!("{}", text_table(&rows));

    let mut charts = Vec::new();
    if let Some(dir) = svg_dir {
        std::fs::create_dir_all(&dir)?;
        let xs: Vec<String> = clients.iter().map(u64::to_string).collect();
        let per_clients = |side: &str, w: &str, sh: u64, field: &str| -> Vec<Option<f64>> {
            clients
                .iter()
                .map(|&c| results.alloc(side, w, sh, c, field))
                .collect()
        };
        let svg = chart(
            "Allocate+deallocate pairs/s against clients",
            "clients",
            "pairs/s",
            &xs,
            &[
                Series {
                    name: format!("Rust, none, {big} shards"),
                    color: "#d62728",
                    points: per_clients("rust", "alloc/none", big, "pairs_per_sec"),
                },
                Series {
                    name: format!("Rust, sync, {big} shards"),
                    color: "#ff7f0e",
                    points: per_clients("rust", "alloc/sync", big, "pairs_per_sec"),
                },
                Series {
                    name: format!("BEAM router, {big} shards"),
                    color: "#1f77b4",
                    points: per_clients("beam", "alloc/router", big, "pairs_per_sec"),
                },
                Series {
                    name: "BEAM single server".into(),
                    color: "#2ca02c",
                    points: per_clients("beam", "alloc/single", 1, "pairs_per_sec"),
                },
            ],
        );
        std::fs::write(dir.join("beam-clients.svg"), svg)?;
        charts.push("beam-clients.svg".to_string());

        let xs: Vec<String> = shards.iter().map(u64::to_string).collect();
        let per_shards = |side: &str, w: &str| -> Vec<Option<f64>> {
            shards
                .iter()
                .map(|&s| results.alloc(side, w, s, shard_clients, "pairs_per_sec"))
                .collect()
        };
        let svg = chart(
            &format!("Allocate+deallocate pairs/s against shards ({shard_clients} clients)"),
            "shards",
            "pairs/s",
            &xs,
            &[
                Series {
                    name: "Rust, none".into(),
                    color: "#d62728",
                    points: per_shards("rust", "alloc/none"),
                },
                Series {
                    name: "BEAM router".into(),
                    color: "#1f77b4",
                    points: per_shards("beam", "alloc/router"),
                },
            ],
        );
        std::fs::write(dir.join("beam-shards.svg"), svg)?;
        charts.push("beam-shards.svg".to_string());

        // Distribution (issue 13): BEAM client processes calling `{frequency, Node}` on the
        // course's server on a BEAM node and on a freqalloc node; `compare.sh` runs them only
        // without `--no-dist`, so the chart is drawn when its rows are there.
        let dist_clients = u64s(&meta["dist_clients"], &[1, 16, 64]);
        let per_dist = |side: &str| -> Vec<Option<f64>> {
            dist_clients
                .iter()
                .map(|&c| {
                    results.find(side, "dist/beam_clients", |v| v["clients"] == c)?["pairs_per_sec"]
                        .as_f64()
                })
                .collect()
        };
        let (beam, rust) = (per_dist("beam"), per_dist("rust"));
        if beam.iter().chain(&rust).any(Option::is_some) {
            let xs: Vec<String> = dist_clients.iter().map(u64::to_string).collect();
            let svg = chart(
                "Distribution: pairs/s against BEAM client processes (loopback)",
                "BEAM client processes",
                "pairs/s",
                &xs,
                &[
                    Series {
                        name: "freqalloc node (none)".into(),
                        color: "#d62728",
                        points: rust,
                    },
                    Series {
                        name: "BEAM node (course server)".into(),
                        color: "#1f77b4",
                        points: beam,
                    },
                ],
            );
            std::fs::write(dir.join("beam-dist.svg"), svg)?;
            charts.push("beam-dist.svg".to_string());
        }
    }
    if let Some(path) = markdown_out {
        std::fs::write(&path, markdown(&rows, &meta, &charts))?;
    }
    Ok(())
}
