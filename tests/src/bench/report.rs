//! Results: rows (one per measured quantity), written as CSV, rendered
//! as markdown tables for the terminal and `summary.md`.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use anyhow::Context as _;

use super::{machine::MachineInfo, plan::Plan, stats::Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    PacketCost,
    Traffic,
    ControlPlane,
    NodePort,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::PacketCost => "packet_cost",
            Section::Traffic => "traffic",
            Section::ControlPlane => "control_plane",
            Section::NodePort => "nodeport",
        }
    }
}

/// One measured quantity at one table size.
#[derive(Clone, Debug)]
pub struct Row {
    pub section: Section,
    /// ebpf, iptables, nftables or none.
    pub datapath: String,
    pub case: String,
    pub services: usize,
    pub metric: String,
    pub unit: String,
    pub summary: Summary,
}

/// Which case, of which datapath, at which table size a value belongs to.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub section: Section,
    pub datapath: &'a str,
    pub case: &'a str,
    pub services: usize,
}

impl<'a> At<'a> {
    pub fn new(section: Section, datapath: &'a str, case: &'a str, services: usize) -> Self {
        Self { section, datapath, case, services }
    }
}

pub const CSV_HEADER: &str = "section,datapath,case,services,metric,unit,median,min,max,samples";

/// How a table's rows are labelled and explained.
#[derive(Clone, Debug)]
pub struct CaseInfo {
    pub case: String,
    pub label: String,
    pub how: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Per section: what each case means and how it was measured.
    pub cases: Vec<(Section, CaseInfo)>,
    /// Per section: method notes printed under its table.
    pub notes: Vec<(Section, String)>,
    /// Things that went wrong without stopping the run.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn add(&mut self, at: At<'_>, metric: &str, unit: &str, summary: Summary) {
        self.rows.push(Row {
            section: at.section,
            datapath: at.datapath.to_owned(),
            case: at.case.to_owned(),
            services: at.services,
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            summary,
        });
    }

    pub fn describe(&mut self, section: Section, case: &str, label: &str, how: &str) {
        if !self.cases.iter().any(|(s, c)| *s == section && c.case == case) {
            self.cases
                .push((section, CaseInfo { case: case.to_owned(), label: label.to_owned(), how: how.to_owned() }));
        }
    }

    pub fn note(&mut self, section: Section, text: impl Into<String>) {
        self.notes.push((section, text.into()));
    }

    pub fn warn(&mut self, text: impl Into<String>) {
        self.warnings.push(text.into());
    }

    pub fn find(&self, section: Section, datapath: &str, case: &str, services: usize, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.section == section
                && r.datapath == datapath
                && r.case == case
                && r.services == services
                && r.metric == metric
        })
    }

    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for r in &self.rows {
            let s = r.summary;
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                r.section.name(),
                csv_field(&r.datapath),
                csv_field(&r.case),
                r.services,
                csv_field(&r.metric),
                csv_field(&r.unit),
                s.median,
                s.min,
                s.max,
                s.samples
            );
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }

    /// The whole summary: machine, then one table per section that ran.
    pub fn markdown(&self, machine: &MachineInfo, plan: &Plan) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# lb-bench results ({} run)\n", plan.mode.name());
        let _ = writeln!(out, "- Date: {}", machine.date);
        let _ = writeln!(out, "- Kernel: {} (`uname -r`)", machine.kernel);
        let _ = writeln!(
            out,
            "- CPU: {}, {} cores, {:.0} GiB memory",
            machine.cpu_model, machine.cores, machine.memory_gib
        );
        let _ = writeln!(out, "- {}; {}", machine.iptables, machine.nft);
        let _ = writeln!(
            out,
            "- No IPVS in this kernel: kube-proxy's IPVS mode cannot run here, so there is no IPVS column."
        );
        out.push('\n');
        if self.has(Section::PacketCost) {
            self.packet_cost_markdown(&mut out);
        }
        if self.has(Section::Traffic) {
            self.traffic_markdown(&mut out, Section::Traffic, "Real traffic through network namespaces", "the floor");
        }
        if self.has(Section::NodePort) {
            self.traffic_markdown(
                &mut out,
                Section::NodePort,
                "NodePort from outside: XDP, tc and nftables",
                "nftables",
            );
        }
        if self.has(Section::ControlPlane) {
            self.control_plane_markdown(&mut out);
        }
        if !self.warnings.is_empty() {
            out.push_str("## Warnings\n\n");
            for w in &self.warnings {
                let _ = writeln!(out, "- {w}");
            }
            out.push('\n');
        }
        out
    }

    fn has(&self, section: Section) -> bool {
        self.rows.iter().any(|r| r.section == section)
    }

    fn sizes(&self, section: Section) -> Vec<usize> {
        self.rows
            .iter()
            .filter(|r| r.section == section)
            .map(|r| r.services)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn section_cases(&self, section: Section) -> impl Iterator<Item = &CaseInfo> {
        self.cases.iter().filter(move |(s, _)| *s == section).map(|(_, c)| c)
    }

    fn write_notes(&self, out: &mut String, section: Section) {
        for (_, note) in self.notes.iter().filter(|(s, _)| *s == section) {
            let _ = writeln!(out, "- {note}");
        }
        out.push('\n');
    }

    fn packet_cost_markdown(&self, out: &mut String) {
        let sizes = self.sizes(Section::PacketCost);
        out.push_str("## Per-packet cost (BPF_PROG_TEST_RUN)\n\n");
        out.push_str("ns/packet: median (min–max) over interleaved repetitions; ×N = ratio to the parse-only floor measured the same way.\n\n");
        header(out, "Case", &sizes);
        for info in self.section_cases(Section::PacketCost) {
            let cells = sizes.iter().map(|&n| {
                let ns = self.find(Section::PacketCost, "ebpf", &info.case, n, "ns_per_packet");
                let ratio = self.find(Section::PacketCost, "ebpf", &info.case, n, "ratio_to_parse_only");
                match (ns, ratio) {
                    (Some(ns), Some(r)) => {
                        format!("{} ×{:.2}", range(ns.summary, 1), r.summary.median)
                    }
                    (Some(ns), None) => range(ns.summary, 1),
                    _ => "–".to_owned(),
                }
            });
            row(out, &info.label, cells);
        }
        out.push('\n');
        for info in self.section_cases(Section::PacketCost) {
            let _ = writeln!(out, "- **{}**: {}", info.label, info.how);
        }
        self.write_notes(out, Section::PacketCost);
    }

    /// Rates of real traffic by datapath: `ratio_to_floor` is shown as a
    /// share of `base`.
    fn traffic_markdown(&self, out: &mut String, section: Section, title: &str, base: &str) {
        let sizes = self.sizes(section);
        let datapaths: Vec<String> = {
            let mut seen = Vec::new();
            for r in self.rows.iter().filter(|r| r.section == section) {
                if !seen.contains(&r.datapath) {
                    seen.push(r.datapath.clone());
                }
            }
            seen
        };
        let _ = writeln!(out, "## {title}\n");
        for info in self.section_cases(section) {
            let _ = writeln!(out, "### {}\n", info.label);
            let _ = writeln!(out, "{}\n", info.how);
            header(out, "Datapath", &sizes);
            for dp in &datapaths {
                let cells = sizes.iter().map(|&n| {
                    let find = |metric| self.find(section, dp, &info.case, n, metric);
                    let (rate, cpu, errors) = (find("rate"), find("cpu"), find("errors"));
                    if let Some(seconds) = find("seconds") {
                        let rss = find("peak_rss").map(|m| format!(", agent peak RSS {:.0} MiB", m.summary.median));
                        return format!("{:.2} s{}", seconds.summary.median, rss.unwrap_or_default());
                    }
                    match rate {
                        Some(rate) => {
                            let mut cell = format!(
                                "{}/s ({}–{})",
                                group(rate.summary.median),
                                group(rate.summary.min),
                                group(rate.summary.max)
                            );
                            if let Some(ratio) = find("ratio_to_floor") {
                                let s = &ratio.summary;
                                let _ = write!(cell, ", {:.2}× ({:.2}–{:.2}) {base}", s.median, s.min, s.max);
                            }
                            if let Some(cpu) = cpu {
                                let _ = write!(cell, ", {:.1} µs CPU", cpu.summary.median);
                            }
                            if let (Some(time), Some(runs)) = (find("program_time"), find("program_runs")) {
                                let _ = write!(
                                    cell,
                                    " ({:.2} µs in {:.1} program runs)",
                                    time.summary.median, runs.summary.median
                                );
                            }
                            if let Some(o) = find("others_cpu").filter(|o| o.summary.max >= 0.1) {
                                let _ = write!(cell, ", others {:.1} cores", o.summary.max);
                            }
                            if let Some(e) = errors.filter(|e| e.summary.max > 0.0) {
                                let _ = write!(cell, ", {} failed", group(e.summary.max));
                            }
                            if let (Some(entries), Some(evicted)) =
                                (find("conntrack_entries"), find("conntrack_evicted"))
                            {
                                let _ = write!(
                                    cell,
                                    ", conntrack {} entries, {} evicted",
                                    group(entries.summary.median),
                                    group(evicted.summary.median)
                                );
                            }
                            cell
                        }
                        None => "–".to_owned(),
                    }
                });
                row(out, dp, cells);
            }
            out.push('\n');
        }
        self.write_notes(out, section);
    }

    fn control_plane_markdown(&self, out: &mut String) {
        out.push_str("## Control plane\n\nValue = median of the samples, or the named percentile for `sync_p50` / `sync_p99`.\n\n");
        out.push_str("| Measure (metric) | Services | Value | Range | Samples |\n|---|---:|---:|---:|---:|\n");
        for info in self.section_cases(Section::ControlPlane) {
            for r in self.rows.iter().filter(|r| r.section == Section::ControlPlane && r.case == info.case) {
                let s = r.summary;
                let d = match r.unit.as_str() {
                    "writes" => 0,
                    "MiB" => 1,
                    _ => 2,
                };
                let _ = writeln!(
                    out,
                    "| {} ({}) | {} | {:.*} {} | {:.*}–{:.*} | {} |",
                    info.label,
                    r.metric,
                    group(r.services as f64),
                    d,
                    s.median,
                    r.unit,
                    d,
                    s.min,
                    d,
                    s.max,
                    s.samples
                );
            }
        }
        out.push('\n');
        for info in self.section_cases(Section::ControlPlane) {
            let _ = writeln!(out, "- **{}**: {}", info.label, info.how);
        }
        self.write_notes(out, Section::ControlPlane);
    }
}

fn header(out: &mut String, first: &str, sizes: &[usize]) {
    let _ = write!(out, "| {first} |");
    for &n in sizes {
        let _ = write!(out, " {} {} |", group(n as f64), if n == 1 { "Service" } else { "Services" });
    }
    out.push_str("\n|---|");
    for _ in sizes {
        out.push_str("---:|");
    }
    out.push('\n');
}

fn row(out: &mut String, label: &str, cells: impl Iterator<Item = String>) {
    let _ = write!(out, "| {label} |");
    for cell in cells {
        let _ = write!(out, " {cell} |");
    }
    out.push('\n');
}

/// "median (min–max)" with `decimals` decimals.
fn range(s: Summary, decimals: usize) -> String {
    format!("{:.*} ({:.*}–{:.*})", decimals, s.median, decimals, s.min, decimals, s.max)
}

/// A number rounded and grouped by thousands: 12345.6 → "12,346".
pub fn group(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < -0.5 { format!("-{out}") } else { out }
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0.4), "0");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(1_000.0), "1,000");
        assert_eq!(group(1_234_567.4), "1,234,567");
    }

    #[test]
    fn csv_has_the_header_and_one_line_per_row() {
        let mut report = Report::default();
        let s = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        report.add(At::new(Section::PacketCost, "ebpf", "conntrack_hit", 1_000), "ns_per_packet", "ns", s);
        let path = std::env::temp_dir().join(format!("lb-bench-report-{}.csv", std::process::id()));
        report.write_csv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, [CSV_HEADER, "packet_cost,ebpf,conntrack_hit,1000,ns_per_packet,ns,2,1,3,3"]);
    }
}
