//! The load generator: threads in the client namespace, bounded by time
//! and by a count of operations, stopping early on an interrupt.
//!
//! - TCP: each thread opens a connection, sends 4 bytes, reads the 4-byte
//!   answer and closes with a reset (SO_LINGER 0), so no TIME_WAIT piles
//!   up; one new connection per operation, spread round-robin over the
//!   targets and over several client addresses. The addresses matter: a
//!   client cycles through its ~32k even ephemeral ports per destination,
//!   and a 4-tuple seen again would find an earlier connection's conntrack
//!   entry (not a new flow any more); with enough addresses no tuple
//!   repeats within a run.
//! - UDP, established flows: each socket is one flow to one Service (the
//!   sockets are spread over the targets); each keeps one datagram in
//!   flight, sends the next one when the answer arrives and gives a
//!   datagram up after 200 ms. After the first exchange every packet
//!   belongs to an established flow: the per-packet cost of established
//!   flows.
//! - UDP, new flows (what a DNS client costs): every exchange is one
//!   datagram and its answer from a socket bound to a (client address,
//!   port) pair never used before in this run's sequence, then closed.
//!   The pairs are taken in order from a sequence shared by all runs of a
//!   cell, so no 5-tuple repeats (32 addresses × 60,000 ports).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{backends::TCP_MESSAGE, cancel, cpu::CpuSnapshot};
use crate::servers::enter_netns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const UDP_GIVE_UP: Duration = Duration::from_millis(200);
const UDP_PAYLOAD: &[u8] = b"lb-bench udp 32 byte payload...."; // small packets
/// Source ports new UDP flows are bound to, from this one on.
const NEW_FLOW_FIRST_PORT: u16 = 2_000;
const NEW_FLOW_PORTS: u64 = 60_000;

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub netns: String,
    pub targets: Arc<Vec<SocketAddr>>,
    /// Client addresses TCP connections are made from, round-robin.
    pub sources: Arc<Vec<Ipv4Addr>>,
    pub duration: Duration,
    pub max_ops: u64,
    pub threads: usize,
    /// New UDP flows: the next (source address, port) pair to use, shared
    /// by the runs of one cell so that no pair comes back.
    pub next_flow: Arc<AtomicU64>,
}

/// What a run did.
#[derive(Clone, Copy, Debug)]
pub struct LoadResult {
    /// Completed exchanges (connections, or UDP request/answer pairs).
    pub ops: u64,
    /// Failed connections, or UDP datagrams given up.
    pub errors: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
    /// CPU time other processes on the machine used during the run.
    pub others_cpu: Duration,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// Short TCP connections.
pub fn tcp_connections(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    run(spec, |thread, spec, counters, deadline| {
        let (targets, sources) = (&spec.targets, &spec.sources);
        let mut next = thread;
        while Instant::now() < deadline && counters.ops.load(Ordering::Relaxed) < spec.max_ops && !cancel::cancelled() {
            let target = targets[next % targets.len()];
            let source = sources[(next / targets.len()) % sources.len()];
            next += spec.threads;
            match one_connection(source, target) {
                Ok(()) => counters.ops.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        Ok(())
    })
}

/// UDP request/answer exchanges over many flows.
pub fn udp_exchanges(spec: &LoadSpec, sockets_per_thread: usize) -> anyhow::Result<LoadResult> {
    run(spec, move |thread, spec, counters, deadline| udp_worker(thread, sockets_per_thread, spec, counters, deadline))
}

/// UDP exchanges, each a new flow: one datagram and its answer from a
/// fresh (source address, port), the socket closed after.
pub fn udp_new_flows(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    run(spec, |_, spec, counters, deadline| {
        let mut buf = [0u8; 2_048];
        while Instant::now() < deadline && counters.ops.load(Ordering::Relaxed) < spec.max_ops && !cancel::cancelled() {
            let i = spec.next_flow.fetch_add(1, Ordering::Relaxed);
            let sources = spec.sources.len() as u64;
            let port = NEW_FLOW_FIRST_PORT + ((i / sources) % NEW_FLOW_PORTS) as u16;
            let source = SocketAddrV4::new(spec.sources[(i % sources) as usize], port);
            let target = spec.targets[(i % spec.targets.len() as u64) as usize];
            match one_udp_flow(source, target, &mut buf) {
                Ok(()) => counters.ops.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        Ok(())
    })
}

fn one_udp_flow(source: SocketAddrV4, target: SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let socket = UdpSocket::bind(source)?;
    socket.set_read_timeout(Some(UDP_GIVE_UP))?;
    socket.send_to(UDP_PAYLOAD, target)?;
    socket.recv_from(buf)?;
    Ok(())
}

/// Starts the threads in the client namespace, lines them up on a barrier,
/// then measures wall time and CPU time from the release to the last exit.
fn run<F>(spec: &LoadSpec, work: F) -> anyhow::Result<LoadResult>
where
    F: Fn(usize, &LoadSpec, &Counters, Instant) -> anyhow::Result<()> + Send + Sync + 'static,
{
    let counters = Arc::new(Counters::default());
    let barrier = Arc::new(Barrier::new(spec.threads + 1));
    let work = Arc::new(work);
    let threads: Vec<_> = (0..spec.threads)
        .map(|thread| {
            let (spec, counters, barrier, work) = (spec.clone(), counters.clone(), barrier.clone(), work.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let entered = enter_netns(&spec.netns);
                barrier.wait();
                entered?;
                let deadline = Instant::now() + spec.duration;
                work(thread, &spec, &counters, deadline)
            })
        })
        .collect();
    let cpu_before = CpuSnapshot::now();
    let started = Instant::now();
    barrier.wait();
    let mut failure = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a load generator thread panicked")),
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = CpuSnapshot::now();
    if let Some(e) = failure {
        return Err(e);
    }
    cancel::check()?;
    Ok(LoadResult {
        ops: counters.ops.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed,
        cpu: cpu_after.since(&cpu_before),
        others_cpu: cpu_after.others_since(&cpu_before),
    })
}

fn one_connection(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<()> {
    let mut conn = connect_from(source, target)?;
    conn.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    conn.write_all(&[0x42; TCP_MESSAGE])?;
    let mut answer = [0u8; TCP_MESSAGE];
    conn.read_exact(&mut answer)?;
    reset_on_close(&conn);
    Ok(())
}

fn check(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Connects from `source` (port chosen by the kernel at connect time,
/// per 4-tuple: IP_BIND_ADDRESS_NO_PORT), with a timeout.
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(target) = target else {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "IPv4 only"));
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let one: libc::c_int = 1;
    // SAFETY: plain socket calls on a descriptor owned by `fd` from the
    // moment it exists; every pointer is to a live, correctly sized value.
    unsafe {
        let fd = OwnedFd::from_raw_fd(check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        ))?);
        let raw = fd.as_raw_fd();
        let option = (&raw const one).cast();
        let one_len = size_of::<libc::c_int>() as libc::socklen_t;
        check(libc::setsockopt(raw, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, option, one_len))?;
        let local = sockaddr(SocketAddrV4::new(source, 0));
        check(libc::bind(raw, (&raw const local).cast(), len))?;
        let remote = sockaddr(target);
        if libc::connect(raw, (&raw const remote).cast(), len) < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(error);
            }
            let mut pollfd = libc::pollfd { fd: raw, events: libc::POLLOUT, revents: 0 };
            let timeout_ms = CONNECT_TIMEOUT.as_millis() as libc::c_int;
            if check(libc::poll(&raw mut pollfd, 1, timeout_ms))? == 0 {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "connect timed out"));
            }
            let mut so_error: libc::c_int = 0;
            let mut so_len = one_len;
            check(libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut so_error).cast(),
                &raw mut so_len,
            ))?;
            if so_error != 0 {
                return Err(std::io::Error::from_raw_os_error(so_error));
            }
        }
        let stream = TcpStream::from(fd);
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

/// SO_LINGER with a zero timeout: close() sends RST and skips TIME_WAIT.
fn reset_on_close(conn: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One datagram in flight per socket.
struct Flow {
    socket: UdpSocket,
    sent_at: Option<Instant>,
    target: SocketAddr,
}

fn udp_worker(
    thread: usize,
    sockets: usize,
    spec: &LoadSpec,
    counters: &Counters,
    deadline: Instant,
) -> anyhow::Result<()> {
    let targets = &spec.targets;
    let all_flows = spec.threads * sockets;
    let mut flows = (0..sockets)
        .map(|i| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_nonblocking(true)?;
            // Flow k of all threads' flows takes the k-th share of the targets.
            let k = thread * sockets + i;
            Ok(Flow { socket, sent_at: None, target: targets[k * targets.len() / all_flows] })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut fds: Vec<libc::pollfd> =
        flows.iter().map(|f| libc::pollfd { fd: f.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buf = [0u8; 2_048];
    while Instant::now() < deadline && counters.ops.load(Ordering::Relaxed) < spec.max_ops && !cancel::cancelled() {
        for flow in flows.iter_mut().filter(|f| f.sent_at.is_none()) {
            match flow.socket.send_to(UDP_PAYLOAD, flow.target) {
                Ok(_) => {
                    flow.sent_at = Some(Instant::now());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // SAFETY: `fds` is a valid array of pollfd for its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        let now = Instant::now();
        for (flow, fd) in flows.iter_mut().zip(&fds) {
            if fd.revents & libc::POLLIN != 0 {
                while flow.socket.recv_from(&mut buf).is_ok() {
                    if flow.sent_at.take().is_some() {
                        counters.ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if flow.sent_at.is_some_and(|t| now.duration_since(t) > UDP_GIVE_UP) {
                flow.sent_at = None;
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
