//! Paced load of new TCP connections from inside a namespace: each one
//! connects, sends one HTTP request, reads the reply and closes, as a
//! short-lived client would. Every failure is kept, with when it happened.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::servers::{enter_netns, http_request};

/// Connect and read timeouts of each connection.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub connections: usize,
    /// (seconds since the load started, what failed).
    pub failures: Vec<(f64, String)>,
    /// Connections answered, by the name of the backend that answered.
    pub answered_by: BTreeMap<String, usize>,
    pub elapsed: Duration,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.connections += other.connections;
        self.failures.extend(other.failures);
        for (name, n) in other.answered_by {
            *self.answered_by.entry(name).or_default() += n;
        }
    }
}

/// `per_second` new connections a second to `target`, spread over
/// `workers` threads so one slow connection does not hold the others up.
pub struct ConnectionLoad {
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<JoinHandle<anyhow::Result<Tally>>>,
}

impl ConnectionLoad {
    pub fn start(netns: &str, target: SocketAddr, per_second: u32, workers: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let interval = Duration::from_secs(1) / per_second;
        let workers = (0..workers)
            .map(|w| {
                let (netns, stop) = (netns.to_owned(), stop.clone());
                std::thread::spawn(move || {
                    enter_netns(&netns)?;
                    let mut tally = Tally::default();
                    let mut next = started + interval * w;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += interval * workers;
                        tally.connections += 1;
                        match one_connection(target) {
                            Ok(name) => *tally.answered_by.entry(name).or_default() += 1,
                            Err(e) => tally.failures.push((started.elapsed().as_secs_f64(), format!("{e:#}"))),
                        }
                    }
                    Ok(tally)
                })
            })
            .collect();
        Self { stop, started, workers }
    }

    /// Stops the load (connections in flight finish) and adds up.
    pub fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            total.merge(worker.join().map_err(|_| anyhow::anyhow!("load worker panicked"))??);
        }
        total.elapsed = self.started.elapsed();
        total.failures.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(total)
    }
}

fn one_connection(target: SocketAddr) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect_timeout(&target, TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    http_request(&mut conn, true)
}
