//! The endpoints: servers in the backend namespaces, one kind per run.
//!
//! - TCP: a listener on 0.0.0.0:PORT in each backend namespace, served by
//!   a few threads; each connection gets a 4-byte answer to its 4-byte
//!   request and is closed.
//! - UDP: one socket per pod address rather than one on 0.0.0.0: a reply
//!   must leave from the address the request was sent to, or neither
//!   conntrack nor the datapath's reverse NAT would see it as a reply
//!   (an unbound reply takes the interface's primary address).
//!
//! Servers stop, and close their sockets, when dropped.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::servers::in_netns;

/// Request and answer size of the TCP exchange.
pub const TCP_MESSAGE: usize = 4;
/// Accepting threads per backend namespace.
const TCP_THREADS_PER_NAMESPACE: usize = 2;
/// Large enough that bursts of SYNs never overflow it.
const LISTEN_BACKLOG: i32 = 4_096;

/// A backend namespace and the pod addresses it holds.
#[derive(Clone, Debug)]
pub struct BackendHost {
    pub netns: String,
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Debug)]
pub struct BackendServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    listeners: Vec<TcpListener>,
}

impl BackendServers {
    pub fn tcp(hosts: &[BackendHost], port: u16) -> anyhow::Result<Self> {
        let mut servers = Self::empty();
        for host in hosts {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let listener = in_netns(&host.netns, move || Ok(TcpListener::bind(addr)?))?;
            // Listening again only raises the backlog std chose.
            // SAFETY: a valid listening socket.
            unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
            for _ in 0..TCP_THREADS_PER_NAMESPACE {
                let listener = listener.try_clone()?;
                let stop = servers.stop.clone();
                servers.threads.push(std::thread::spawn(move || accept_loop(&listener, &stop)));
            }
            servers.listeners.push(listener);
        }
        Ok(servers)
    }

    pub fn udp(hosts: &[BackendHost], port: u16) -> anyhow::Result<Self> {
        let mut servers = Self::empty();
        for host in hosts {
            let addresses = host.addresses.clone();
            let sockets = in_netns(&host.netns, move || {
                addresses
                    .into_iter()
                    .map(|ip| {
                        let socket = UdpSocket::bind((ip, port))?;
                        socket.set_nonblocking(true)?;
                        Ok(socket)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })?;
            let stop = servers.stop.clone();
            servers.threads.push(std::thread::spawn(move || udp_echo_loop(&sockets, &stop)));
        }
        Ok(servers)
    }

    fn empty() -> Self {
        Self { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new(), listeners: Vec::new() }
    }
}

impl Drop for BackendServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for listener in &self.listeners {
            // Wakes the threads blocked in accept (it then fails with EINVAL).
            // SAFETY: a valid socket owned by `listener`.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => serve(conn),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if stop.load(Ordering::Relaxed) => return,
            // Transient (e.g. ECONNABORTED): keep accepting.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut request = [0u8; TCP_MESSAGE];
    if conn.read_exact(&mut request).is_ok() {
        let _ = conn.write_all(&request);
    }
}

/// Echoes datagrams on all of a namespace's sockets until stopped.
fn udp_echo_loop(sockets: &[UdpSocket], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> =
        sockets.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buf = [0u8; 2_048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready <= 0 {
            continue;
        }
        for (fd, socket) in fds.iter().zip(sockets) {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    }
}
