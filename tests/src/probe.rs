//! What a client in a namespace sees of a Service: which pods answer its
//! new connections, whether a connection is refused or gets no answer, a
//! UDP exchange; and [`eventually`], which retries a check while the
//! agents catch up with a change, as Kubernetes' own cases poll.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use crate::servers::{self, in_netns};

/// How long a change may take to reach traffic before a check fails. Far
/// above what it takes (milliseconds), far below Kubernetes' own bounds.
pub const PROPAGATION: Duration = Duration::from_secs(15);

/// How long to wait for an answer that should not come: a dropped SYN.
pub const NO_ANSWER: Duration = Duration::from_millis(500);

/// Retries `check` every 20 ms until it succeeds, and returns its value;
/// after `timeout`, panics with `what` and the last failure.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!("{what}: still failing after {timeout:?}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What one new TCP connection got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The body of the answer to `GET /`: the pod's name.
    Answered(String),
    /// Connection refused: a reset or ICMP port unreachable.
    Refused,
    /// No answer within the connect timeout.
    NoAnswer,
    /// Anything else (host unreachable, a broken exchange...).
    Failed(String),
}

/// One new connection from `netns` to `addr` with a `GET /`, waiting at
/// most `connect_timeout` for the handshake.
pub fn connect(netns: &str, addr: SocketAddr, connect_timeout: Duration) -> Outcome {
    let attempt = in_netns(netns, move || {
        Ok(TcpStream::connect_timeout(&addr, connect_timeout).and_then(|conn| {
            conn.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(conn)
        }))
    });
    match attempt {
        Err(e) => Outcome::Failed(format!("{e:#}")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Outcome::NoAnswer,
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Ok(Ok(mut conn)) => match servers::http_request(&mut conn, true) {
            Ok(body) => Outcome::Answered(body),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        },
    }
}

/// The status code of one `GET path` from `netns` to `addr`.
pub fn http_status(netns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut conn = servers::connect(netns, addr)??;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    let status = std::str::from_utf8(&head[9..12])?;
    Ok(status.parse()?)
}

/// The pod that answers one new connection from `netns` to `addr`.
pub fn answer(netns: &str, addr: SocketAddr) -> anyhow::Result<String> {
    match connect(netns, addr, Duration::from_secs(3)) {
        Outcome::Answered(pod) => Ok(pod),
        other => anyhow::bail!("{addr} from {netns}: {other:?}"),
    }
}

/// `requests` new connections from `netns` to `addr`: how many each pod
/// answered. Fails on the first connection no pod answered.
pub fn answers(netns: &str, addr: SocketAddr, requests: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..requests {
        *seen.entry(answer(netns, addr)?).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Waits until `requests` new connections from `netns` to `addr` are all
/// answered, by exactly the pods `expected`.
pub fn eventually_answered_by(netns: &str, addr: SocketAddr, expected: &[String], requests: usize) {
    let expected: BTreeSet<String> = expected.iter().cloned().collect();
    eventually(PROPAGATION, &format!("{addr} from {netns} answered by {expected:?}"), || {
        let seen: BTreeSet<String> = answers(netns, addr, requests)?.into_keys().collect();
        anyhow::ensure!(seen == expected, "answered by {seen:?}");
        Ok(())
    });
}

/// Waits until a new connection from `netns` to `addr` is refused.
pub fn eventually_refused(netns: &str, addr: SocketAddr) {
    eventually(PROPAGATION, &format!("{addr} from {netns} refused"), || match connect(netns, addr, NO_ANSWER) {
        Outcome::Refused => Ok(()),
        other => anyhow::bail!("{other:?}"),
    });
}

/// One datagram from a fresh socket in `netns` to `addr`: the pod that
/// echoed it (the echo is `<pod>: <datagram>`) and where the answer came
/// from.
/// Waits at most a second for the answer.
pub fn udp_answer(netns: &str, addr: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    let (reply, from) = in_netns(netns, move || {
        let socket = UdpSocket::bind(crate::servers::any_port_of_family(addr))?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.send_to(b"hostname", addr)?;
        let mut buf = [0u8; 256];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })?;
    let pod = reply.strip_suffix(": hostname").ok_or_else(|| anyhow::anyhow!("unexpected echo {reply:?}"))?;
    Ok((pod.to_owned(), from))
}

/// A UDP client bound to one source port for its whole life, as
/// `nc -u -p PORT` in Kubernetes' conntrack cases: every datagram belongs
/// to the same flow.
#[derive(Debug)]
pub struct FixedPortUdpClient {
    socket: UdpSocket,
    target: SocketAddr,
}

impl FixedPortUdpClient {
    pub fn bind(netns: &str, port: u16, target: SocketAddr) -> anyhow::Result<Self> {
        let socket = in_netns(netns, move || Ok(UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Self { socket, target })
    }

    /// Sends one datagram; the pod that echoed it, or an error when none
    /// did within 200 ms.
    pub fn ask(&self) -> anyhow::Result<String> {
        self.socket.send_to(b"hostname", self.target)?;
        let mut buf = [0u8; 256];
        let (n, from) = self.socket.recv_from(&mut buf)?;
        anyhow::ensure!(from == self.target, "answer from {from}, not the Service {}", self.target);
        let reply = String::from_utf8_lossy(&buf[..n]);
        let pod = reply.strip_suffix(": hostname").ok_or_else(|| anyhow::anyhow!("unexpected echo {reply:?}"))?;
        Ok(pod.to_owned())
    }
}
