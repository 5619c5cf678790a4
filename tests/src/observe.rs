//! Reading what the agent exposes: its HTTP endpoints (metrics, health),
//! fetched from inside the namespace it runs in, and `lbctl` run against
//! its pinned maps.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{agent, servers};

/// kube-proxy's default ports, which the agent uses too.
pub const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10249);
pub const HEALTH: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10256);

/// `GET path` over HTTP/1.1 from inside `netns`: (status, body).
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_owned();
    let response = servers::in_netns(netns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text)
    })?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of HTTP headers")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    // hyper may send a small body chunked.
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(body) } else { body.to_owned() }))
}

/// One HTTP response: status, headers (names in lower case), body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` on an open connection, kept open for the next request; the
/// response must carry a Content-Length (as the agent's do).
pub fn request(conn: &mut TcpStream, path: &str) -> anyhow::Result<Response> {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n")?;
    let mut received = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = conn.read(&mut buf)?;
        anyhow::ensure!(n > 0, "connection closed before a full response");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).context("no status")?.parse()?;
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers.get("content-length").context("no content-length")?.parse()?;
        if body.len() >= length {
            return Ok(Response { status, headers, body: body[..length].to_owned() });
        }
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out += &rest[..n];
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Samples of the Prometheus text format: `name{labels}` → value, with
/// labels as written. Comments and blank lines are skipped.
pub fn parse_metrics(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        // The value follows the last space (label values here contain none).
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value in {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(|| format!("bad value in {line:?}"))?,
        };
        samples.insert(series.to_owned(), value);
    }
    Ok(samples)
}

/// Scrapes `/metrics` from the agent in `netns`.
pub fn scrape(netns: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let (status, body) = http_get(netns, METRICS, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    parse_metrics(&body)
}

/// Runs `lbctl` with `args` against the maps pinned in `pin_dir`; its stdout.
pub fn lbctl(pin_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent::binary("lbctl")?).arg("--pin-dir").arg(pin_dir).args(args).output()?;
    if !out.status.success() {
        bail!("lbctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{reason=\"new_flow\"} 42\nb_bucket{le=\"+Inf\"} 3\nc 1.5e3\n";
        let samples = parse_metrics(text).unwrap();
        assert_eq!(samples["a_total{reason=\"new_flow\"}"], 42.0);
        assert_eq!(samples["b_bucket{le=\"+Inf\"}"], 3.0);
        assert_eq!(samples["c"], 1500.0);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
