//! Real servers and clients inside namespaces. A thread enters a network
//! namespace with setns(2) (only that thread moves), then uses ordinary
//! sockets: the kernel sees real TCP and UDP between real hosts.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

/// Moves the calling thread into `/run/netns/NAME` (the agent's own
/// namespace entry, which moves only the calling thread).
pub use lb_userspace::netns::enter as enter_netns;

/// Runs `f` on a thread inside namespace `netns` and returns its result.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let name = netns.to_owned();
    let handle = std::thread::spawn(move || {
        enter_netns(&name)?;
        f()
    });
    handle.join().map_err(|_| anyhow::anyhow!("thread in {netns} panicked"))?
}

/// Listens on `addr` inside `netns` and accepts one connection, on a
/// thread of its own: it reads until the client shuts down its side, then
/// answers with the number of bytes it received, in decimal.
pub fn byte_counter(netns: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = in_netns(netns, move || Ok(TcpListener::bind(addr)?))?;
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else { return };
        let mut received = Vec::new();
        if conn.read_to_end(&mut received).is_ok() {
            let _ = conn.write_all(received.len().to_string().as_bytes());
        }
    });
    Ok(())
}

/// Opens a TCP connection from inside `netns` (3 s to connect, 3 s read
/// timeout). The outer result is about entering the namespace; the inner
/// one is the connection attempt, so callers can check how it failed.
pub fn connect(netns: &str, addr: SocketAddr) -> anyhow::Result<std::io::Result<TcpStream>> {
    in_netns(netns, move || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3)).and_then(|conn| {
            conn.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(conn)
        }))
    })
}

/// Servers that stop (and close their sockets) when dropped.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn new() -> Self {
        Self { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new() }
    }

    /// An HTTP/1.1 server on `addr` in `netns` that answers every request
    /// with `name` (keep-alive supported: one connection, many requests),
    /// except `GET /client`, answered with the client address it saw, and
    /// `GET /address`, answered with the address the client connected to.
    pub fn http(&mut self, netns: &str, addr: SocketAddr, name: &str) -> anyhow::Result<()> {
        self.threads.push(spawn_http(netns, addr, name, self.stop.clone())?);
        Ok(())
    }

    /// A UDP server on `addr` in `netns` that answers each datagram with
    /// `name: <datagram>`.
    pub fn udp_echo(&mut self, netns: &str, addr: SocketAddr, name: &str) -> anyhow::Result<()> {
        self.threads.push(spawn_udp_echo(netns, addr, name, self.stop.clone())?);
        Ok(())
    }
}

/// Bound on `addr` in `netns` when this returns; echoes until `stop` is set.
fn spawn_udp_echo(netns: &str, addr: SocketAddr, name: &str, stop: Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
    let socket = in_netns(netns, move || Ok(UdpSocket::bind(addr)?))?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let name = name.to_owned();
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let reply = [name.as_bytes(), b": ", &buf[..n]].concat();
                let _ = socket.send_to(&reply, peer);
            }
        }
    }))
}

/// Listens on `addr` in `netns` (listening when this returns) and serves
/// HTTP until `stop` is set.
fn spawn_http(netns: &str, addr: SocketAddr, name: &str, stop: Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
    let listener = in_netns(netns, move || Ok(TcpListener::bind(addr)?))?;
    listener.set_nonblocking(true)?;
    let name = name.to_owned();
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let name = name.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || serve_http(conn, &name, &stop));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }))
}

/// One server that stops on its own, as a pod's does: dropping it closes
/// its socket (an HTTP server's open connections within 100 ms, a UDP
/// echo server's socket within 20 ms, after which the kernel answers
/// datagrams to it with port unreachable).
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// An HTTP server as [`Servers::http`], listening on `addr` in `netns`
    /// by the time it returns.
    pub fn http(netns: &str, addr: SocketAddr, name: &str) -> anyhow::Result<Self> {
        Self::spawn(|stop| spawn_http(netns, addr, name, stop))
    }

    /// A UDP echo server as [`Servers::udp_echo`], bound on `addr` in
    /// `netns` by the time it returns.
    pub fn udp_echo(netns: &str, addr: SocketAddr, name: &str) -> anyhow::Result<Self> {
        Self::spawn(|stop| spawn_udp_echo(netns, addr, name, stop))
    }

    fn spawn(start: impl FnOnce(Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = start(stop.clone())?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_http(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => return,
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            let close = request.contains("connection: close");
            // `GET /client`: the address this server saw the request from,
            // which tells a test whether the client's address was kept.
            // `GET /address`: the address the request was sent to, which
            // tells apart endpoints that are addresses of one pod.
            let body = if request.starts_with("get /client ") {
                conn.peer_addr().map_or_else(|_| "unknown".to_owned(), |peer| peer.ip().to_string())
            } else if request.starts_with("get /address ") {
                conn.local_addr().map_or_else(|_| "unknown".to_owned(), |local| local.ip().to_string())
            } else {
                name.to_owned()
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
                body.len(),
                if close { "close" } else { "keep-alive" }
            );
            if conn.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
    }
}

/// Sends one HTTP request for `/` on a connection and returns the body.
pub fn http_request(conn: &mut TcpStream, close: bool) -> anyhow::Result<String> {
    http_request_path(conn, "/", close)
}

/// Sends one HTTP request for `path` on a connection and returns the body.
pub fn http_request_path(conn: &mut TcpStream, path: &str, close: bool) -> anyhow::Result<String> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(conn, "GET {path} HTTP/1.1\r\nHost: service\r\nConnection: {connection}\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf)?;
        anyhow::ensure!(n > 0, "connection closed before a full response");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse()))
                .context("no content-length")??;
            if body.len() >= len {
                return Ok(body[..len].to_owned());
            }
        }
    }
}

/// One short HTTP request (new connection) from inside `netns`.
pub fn http_get(netns: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let mut conn = connect(netns, addr)??;
    http_request(&mut conn, true)
}

/// An ephemeral port on the unspecified address of `target`'s family:
/// where a client socket binds to reach `target`.
pub fn any_port_of_family(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// One UDP exchange from inside `netns`: returns the reply and its source.
pub fn udp_exchange(netns: &str, addr: SocketAddr, payload: &[u8]) -> anyhow::Result<(String, SocketAddr)> {
    let payload = payload.to_vec();
    in_netns(netns, move || {
        let socket = UdpSocket::bind(crate::servers::any_port_of_family(addr))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(&payload, addr)?;
        let mut buf = [0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

/// A UDP socket in `netns` connected to `addr`: one flow, whose
/// datagrams `ping` exchanges.
pub fn connected_udp(netns: &str, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    in_netns(netns, move || {
        let socket = UdpSocket::bind(any_port_of_family(addr))?;
        socket.connect(addr)?;
        Ok(socket)
    })
}

/// Sends "ping" on `socket` (from `connected_udp`) and waits up to
/// `timeout` for the answer.
pub fn ping(socket: &UdpSocket, timeout: Duration) -> std::io::Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"ping")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
