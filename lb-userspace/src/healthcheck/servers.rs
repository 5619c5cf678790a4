//! The health check listeners, reconciled with [`Desired`] after each
//! sync: new ports are opened, removed ones closed (their connections
//! with them), and a changed count or owner is taken in place, without
//! closing the listener, so a load balancer's probes never meet a closed
//! port while a Service merely changes. A port that cannot be opened is
//! reported and tried again at the next reconcile; it never stops the
//! other Services' servers.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use hyper::StatusCode;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    desired::{Desired, Listener},
    reply,
};
use crate::{
    health::ProxyHealth,
    metrics::SyncMetrics,
    serve::{self, Reply},
    translate::ServiceRef,
};

/// A Service whose health check port could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failure {
    pub service: ServiceRef,
    pub port: u16,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (namespace, name) = &self.service;
        write!(f, "cannot serve the health check of {namespace}/{name} on port {}: {}", self.port, self.reason)
    }
}

/// One open port: what it reports (shared with its handler) and the
/// tasks serving it, one per listen address.
#[derive(Debug)]
struct Open {
    listener: Arc<Mutex<Listener>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // Dropping a serving task drops its listening socket and its
        // connections' tasks.
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    open: BTreeMap<u16, Open>,
    /// Failing now; only new ones are returned, so a port that stays taken
    /// is reported once, not at every retry.
    failing: BTreeSet<Failure>,
}

/// The running health check servers.
#[derive(Debug)]
pub struct ServiceHealthServers {
    /// Where each port listens; the node's addresses follow it as they
    /// change (`node_addresses_changed`).
    addresses: Mutex<HealthCheckAddresses>,
    proxy_health: Arc<ProxyHealth>,
    metrics: Arc<SyncMetrics>,
    state: Mutex<State>,
}

/// Where Services' health check ports listen (kube-proxy's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckAddresses {
    /// Every address of both families, now and later: one socket on
    /// [::] that takes IPv4 too (0.0.0.0 where the node has no IPv6).
    Any,
    /// The node's addresses `--nodeport-addresses` selects, as they change.
    Node(Vec<IpAddr>),
}

impl ServiceHealthServers {
    pub fn new(addresses: HealthCheckAddresses, proxy_health: Arc<ProxyHealth>, metrics: Arc<SyncMetrics>) -> Self {
        if addresses == HealthCheckAddresses::Node(Vec::new()) {
            warn_listening_nowhere();
        }
        Self { addresses: Mutex::new(addresses), proxy_health, metrics, state: Mutex::default() }
    }

    /// The node's selected addresses changed. Listening on the node's
    /// addresses, every open port is closed, to be opened on the new ones
    /// by the next `reconcile` (which the sync the change triggers runs).
    /// No-op on 0.0.0.0, or when they are the same.
    pub fn node_addresses_changed(&self, addresses: &[IpAddr]) {
        let mut guard = self.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        let HealthCheckAddresses::Node(current) = &mut *guard else {
            return;
        };
        if *current == addresses {
            return;
        }
        if addresses.is_empty() {
            warn_listening_nowhere();
        }
        *current = addresses.to_vec();
        drop(guard);
        let mut state = self.state();
        info!(ports = state.open.len(), "node addresses changed: reopening health checks on the new ones");
        state.open.clear();
        state.failing.clear();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether some port failed to open (the next sync tries again).
    pub fn has_failures(&self) -> bool {
        !self.state().failing.is_empty()
    }

    /// Ports open now.
    pub fn ports(&self) -> Vec<u16> {
        self.state().open.keys().copied().collect()
    }

    /// Makes the open ports match `desired`; returns the failures not
    /// returned before (a port taken by another Service's check included).
    /// Must run inside the agent's runtime (it spawns the servers).
    pub fn reconcile(&self, desired: &Desired) -> Vec<Failure> {
        let mut state = self.state();
        state.open.retain(|port, open| {
            let keep = desired.listeners.contains_key(port);
            if !keep {
                info!(port, service = %service_name(&lock(&open.listener).service), "closing health check");
            }
            keep
        });
        let mut failing = BTreeSet::new();
        for (&port, wanted) in &desired.listeners {
            if let Some(open) = state.open.get(&port) {
                *lock(&open.listener) = wanted.clone();
                continue;
            }
            match self.open(port, wanted.clone()) {
                Ok(open) => {
                    info!(port, service = %service_name(&wanted.service), "serving health check");
                    state.open.insert(port, open);
                }
                Err(reason) => {
                    self.metrics.health_check_listen_failed();
                    failing.insert(Failure { service: wanted.service.clone(), port, reason });
                }
            }
        }
        for (service, port, owner) in &desired.conflicts {
            let reason = format!("port already the health check of {}", service_name(owner));
            failing.insert(Failure { service: service.clone(), port: *port, reason });
        }
        self.metrics.health_check_servers(state.open.len());
        let fresh = failing.difference(&state.failing).cloned().collect();
        state.failing = failing;
        fresh
    }

    /// Listens on every address, or on none: a port open on only some
    /// addresses would pass some probes and not others.
    fn open(&self, port: u16, listener: Listener) -> Result<Open, String> {
        let addresses = match &*self.addresses.lock().unwrap_or_else(PoisonError::into_inner) {
            HealthCheckAddresses::Any => None,
            HealthCheckAddresses::Node(addresses) => Some(addresses.clone()),
        };
        let sockets = match addresses {
            None => vec![bind_any(port).map_err(|e| format!("listen on port {port}: {e}"))?],
            Some(addresses) => addresses
                .into_iter()
                .map(|address| {
                    let addr = SocketAddr::new(address, port);
                    bind(addr).map_err(|e| format!("listen on {addr}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let listener = Arc::new(Mutex::new(listener));
        let tasks = sockets.into_iter().map(|socket| tokio::spawn(self.serve(socket, listener.clone()))).collect();
        Ok(Open { listener, tasks })
    }

    fn serve(
        &self,
        socket: tokio::net::TcpListener,
        listener: Arc<Mutex<Listener>>,
    ) -> impl Future<Output = ()> + use<> {
        let proxy_health = self.proxy_health.clone();
        serve::serve(socket, move |_path| {
            let Listener { service, local_endpoints } = lock(&listener).clone();
            let healthy = proxy_health.livez(SystemTime::now()).healthy;
            tokio::spawn(async move { to_reply(&reply::answer(&service, local_endpoints, healthy)) })
        })
    }
}

fn warn_listening_nowhere() {
    warn!("--nodeport-addresses selects no address: Services' health check ports listen nowhere");
}

fn to_reply(answer: &reply::Answer) -> Reply {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut reply = Reply::new(status, "application/json", answer.body.clone());
    reply.headers.push(("X-Load-Balancing-Endpoint-Weight", answer.weight.clone()));
    reply
}

/// A listening socket the runtime serves (std's bind sets SO_REUSEADDR,
/// so a port closed a moment ago can be opened again at once).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket)
}

/// `port` on every address of both families: [::] with IPV6_V6ONLY off,
/// whatever `net.ipv6.bindv6only` says, so IPv4 probes reach it too. A
/// node without IPv6 gets 0.0.0.0.
fn bind_any(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = match Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) {
        Ok(socket) => socket,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)));
        }
        Err(e) => return Err(e),
    };
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn lock(listener: &Mutex<Listener>) -> MutexGuard<'_, Listener> {
    listener.lock().unwrap_or_else(PoisonError::into_inner)
}

fn service_name((namespace, name): &ServiceRef) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::Ipv4Addr,
        time::Duration,
    };

    use super::*;

    fn servers() -> ServiceHealthServers {
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        ServiceHealthServers::new(
            HealthCheckAddresses::Node(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            health,
            Arc::default(),
        )
    }

    fn desired(entries: &[(u16, &str, usize)]) -> Desired {
        let listeners = entries
            .iter()
            .map(|&(port, name, local_endpoints)| {
                (port, Listener { service: ("default".to_owned(), name.to_owned()), local_endpoints })
            })
            .collect();
        Desired { listeners, conflicts: Vec::new() }
    }

    /// A free port on the loopback address, found by letting the kernel pick.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
    }

    /// One request on a keep-alive connection: (status line, body).
    async fn get(conn: std::net::TcpStream) -> (std::net::TcpStream, String) {
        tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            conn.write_all(b"GET /any/path HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            (conn, text)
        })
        .await
        .unwrap()
    }

    fn connect(port: u16) -> std::net::TcpStream {
        let conn = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        conn
    }

    #[tokio::test]
    async fn a_count_changes_in_place_and_a_removed_port_closes() {
        let servers = servers();
        let port = free_port();
        assert!(servers.reconcile(&desired(&[(port, "web", 1)])).is_empty());
        let (conn, first) = get(connect(port)).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("x-load-balancing-endpoint-weight: 1"), "{first}");

        servers.reconcile(&desired(&[(port, "web", 0)]));
        let (_conn, second) = get(conn).await;
        assert!(second.starts_with("HTTP/1.1 503"), "same connection, new count: {second}");

        servers.reconcile(&desired(&[]));
        assert!(servers.ports().is_empty());
        let mut refused = false;
        for _ in 0..100 {
            // Yields to the runtime, which drops the aborted server.
            tokio::time::sleep(Duration::from_millis(10)).await;
            if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the port closes");
    }

    /// Whether `addr` comes to accept connections (`listening`) or to
    /// refuse them within a second: the runtime drops an aborted server
    /// only once it runs again.
    async fn becomes(addr: SocketAddr, listening: bool) -> bool {
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() == listening {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn ports_move_with_the_nodes_addresses() {
        let (old, new) = (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let servers = servers();
        let port = free_port();
        let wanted = desired(&[(port, "web", 1)]);
        assert!(servers.reconcile(&wanted).is_empty());
        assert!(becomes(SocketAddr::new(old, port), true).await);

        servers.node_addresses_changed(&[new]);
        assert!(servers.reconcile(&wanted).is_empty(), "reopened on the new address");
        assert!(becomes(SocketAddr::new(new, port), true).await, "the new address serves");
        assert!(becomes(SocketAddr::new(old, port), false).await, "the old one no longer does");
        let (_, reply) = get(std::net::TcpStream::connect((new, port)).unwrap()).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test]
    async fn on_every_address_ports_stay_put_when_the_node_changes() {
        let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
        let servers = ServiceHealthServers::new(HealthCheckAddresses::Any, health, Arc::default());
        let port = free_port();
        let wanted = desired(&[(port, "web", 1)]);
        servers.reconcile(&wanted);
        servers.node_addresses_changed(&[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
        assert_eq!(servers.ports(), [port], "[::] covers every address: nothing to reopen");
        assert!(becomes(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), true).await);
        // Both families' probes reach the one socket.
        assert!(becomes(SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port), true).await);
    }

    #[tokio::test]
    async fn a_proxy_behind_on_its_syncs_fails_every_check() {
        let health = Arc::new(ProxyHealth::new(Duration::ZERO));
        let servers = ServiceHealthServers::new(
            HealthCheckAddresses::Node(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            health.clone(),
            Arc::default(),
        );
        let port = free_port();
        servers.reconcile(&desired(&[(port, "web", 2)]));
        let (_, healthy) = get(connect(port)).await;
        assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");

        // A change has waited longer than the health timeout.
        health.queued(SystemTime::UNIX_EPOCH);
        let (_, lagging) = get(connect(port)).await;
        assert!(lagging.starts_with("HTTP/1.1 503"), "{lagging}");
        assert!(lagging.contains("\"serviceProxyHealthy\": false"), "{lagging}");
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_once_and_retried_while_others_serve() {
        let servers = servers();
        let blocker = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (taken, free) = (blocker.local_addr().unwrap().port(), free_port());
        let wanted = desired(&[(taken, "blocked", 1), (free, "fine", 1)]);
        let failures = servers.reconcile(&wanted);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!((failures[0].service.1.as_str(), failures[0].port), ("blocked", taken));
        assert_eq!(servers.ports(), [free], "the other Service is served");
        assert!(servers.has_failures());
        assert!(servers.reconcile(&wanted).is_empty(), "still failing: not reported again");

        drop(blocker);
        assert!(servers.reconcile(&wanted).is_empty());
        assert!(!servers.has_failures());
        let mut expected = vec![taken, free];
        expected.sort_unstable();
        assert_eq!(servers.ports(), expected, "retried and opened");
    }
}
