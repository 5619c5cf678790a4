//! A client for the socket-level tests: it runs where the test started
//! it (network namespace and cgroup are chosen by the test before it
//! execs, see `lb_tests::host`) and prints one line per exchange, so the
//! test sees what an application would see.
//!
//! Modes:
//! - `tcp ADDR`: connect, print `peer <getpeername>`, send an HTTP GET,
//!   print `body <first line of the body>`.
//! - `udp ADDR`: one unconnected datagram (`sendto`), print
//!   `reply <payload> from <recvfrom's source>`.
//! - `udp-connected ADDR`: connect a UDP socket, print `peer <getpeername>`,
//!   then for each line read on stdin send it and print `reply <payload>`,
//!   reconnecting to ADDR when the socket reports an error (as DNS
//!   resolvers do; see docs/semantics.md on removed backends).
//!
//! Any failure prints `error <io::ErrorKind> <raw errno>` and exits 1.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn fail(e: &std::io::Error) -> ! {
    println!("error {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0));
    std::process::exit(1)
}

fn tcp(addr: SocketAddr) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    println!("peer {}", conn.peer_addr()?);
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").lines().next().unwrap_or("");
    println!("body {body}");
    Ok(())
}

fn udp(addr: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(lb_tests::servers::any_port_of_family(addr))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send_to(b"ping", addr)?;
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf)?;
    println!("reply {} from {from}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn connected(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(lb_tests::servers::any_port_of_family(addr))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.connect(addr)?;
    Ok(sock)
}

fn exchange(sock: &UdpSocket, payload: &[u8]) -> std::io::Result<String> {
    sock.send(payload)?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn udp_connected(addr: SocketAddr) -> std::io::Result<()> {
    let mut sock = connected(addr)?;
    println!("peer {}", sock.peer_addr()?);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match exchange(&sock, line.as_bytes()) {
            Ok(reply) => reply,
            // A socket whose backend went away is aborted by the agent:
            // reconnect (the new connect picks a live backend) and retry once.
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut => {
                sock = connected(addr)?;
                exchange(&sock, line.as_bytes())?
            }
            Err(e) => return Err(e),
        };
        println!("reply {reply}");
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr] = args.as_slice() else {
        eprintln!("usage: lb-sock-client tcp|udp|udp-connected ADDR");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is IP:PORT");
    let result = match mode.as_str() {
        "tcp" => tcp(addr),
        "udp" => udp(addr),
        "udp-connected" => udp_connected(addr),
        other => panic!("unknown mode {other}"),
    };
    if let Err(e) = result {
        fail(&e);
    }
}
