//! Mixed client traffic through Services, counted exchange by exchange:
//! a stream of new TCP connections (one HTTP request each), one keep-alive
//! connection asked again and again, and a UDP exchange at a fixed pace.
//! Any failure is recorded with what went wrong and when.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::servers::{self, enter_netns};

/// What to send, and how often.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub http: SocketAddr,
    pub udp: SocketAddr,
    /// New TCP connections per second.
    pub connections_per_second: u32,
    pub udp_interval: Duration,
    pub keepalive_interval: Duration,
}

/// Counts of one kind of exchange.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub ok: usize,
    /// What failed, with the time since the load started.
    pub failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, started: Instant, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => self.failures.push(format!("{:.3}s: {e:#}", started.elapsed().as_secs_f64())),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub connections: Tally,
    pub udp: Tally,
    pub keepalive: Tally,
    pub elapsed: Duration,
}

/// Client threads in one namespace, running until `finish`.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    connections: JoinHandle<Tally>,
    udp: JoinHandle<Tally>,
    keepalive: JoinHandle<Tally>,
}

fn paced(
    netns: &str,
    stop: &Arc<AtomicBool>,
    started: Instant,
    interval: Duration,
    mut exchange: impl FnMut() -> anyhow::Result<()> + Send + 'static,
) -> JoinHandle<Tally> {
    let (netns, stop) = (netns.to_owned(), stop.clone());
    std::thread::spawn(move || {
        let mut tally = Tally::default();
        if let Err(e) = enter_netns(&netns) {
            tally.failures.push(format!("entering {netns}: {e:#}"));
            return tally;
        }
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tally.record(started, exchange());
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        tally
    })
}

impl Load {
    /// Starts the clients inside `netns`. The keep-alive connection is
    /// opened first; its backend must answer every later request.
    pub fn start(netns: &str, spec: LoadSpec) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let connect_interval = Duration::from_secs(1) / spec.connections_per_second;
        let connections = paced(netns, &stop, started, connect_interval, move || {
            let body = servers::http_request(&mut connect_here(spec.http)?, true)?;
            anyhow::ensure!(body.starts_with("backend-"), "unexpected answer {body:?}");
            Ok(())
        });
        let udp = paced(netns, &stop, started, spec.udp_interval, move || udp_exchange_here(spec.udp));
        let mut conn = servers::connect(netns, spec.http)??;
        let pinned = servers::http_request(&mut conn, false)?;
        let keepalive = paced(netns, &stop, started, spec.keepalive_interval, move || {
            let body = servers::http_request(&mut conn, false)?;
            anyhow::ensure!(body == pinned, "keep-alive connection moved from {pinned} to {body}");
            Ok(())
        });
        Ok(Self { stop, started, connections, udp, keepalive })
    }

    /// Stops the clients and returns what they saw.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let join = |h: JoinHandle<Tally>| {
            h.join().unwrap_or_else(|_| Tally { ok: 0, failures: vec!["client thread panicked".into()] })
        };
        LoadReport {
            connections: join(self.connections),
            udp: join(self.udp),
            keepalive: join(self.keepalive),
            elapsed: self.started.elapsed(),
        }
    }
}

/// One UDP exchange from a fresh socket (a new flow each time), from the
/// calling thread's namespace; the reply must come from the Service.
fn udp_exchange_here(addr: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(b"ping", addr)?;
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf)?;
    anyhow::ensure!(from == addr, "reply from {from}, not from the Service {addr}");
    anyhow::ensure!(buf[..n].ends_with(b"ping"), "unexpected reply {:?}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

/// Opens a TCP connection from the calling thread's namespace.
pub fn connect_here(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(conn)
}
