//! Servers running in the cluster's pods, each answering with its pod's
//! name, started and stopped pod by pod as a test's Pods come and go.

use std::{collections::BTreeMap, net::SocketAddr};

use super::{Cluster, pod_name};
use crate::servers::{HttpServer, UdpEchoServer};

#[derive(Debug)]
enum Running {
    // Held for their Drop, which stops them.
    Http(#[allow(dead_code, reason = "held to keep the server running")] HttpServer),
    Udp(#[allow(dead_code, reason = "held to keep the server running")] UdpEchoServer),
}

#[derive(Debug, Default)]
pub(super) struct PodServers {
    running: BTreeMap<(usize, usize), Vec<Running>>,
}

impl Cluster {
    /// The network namespace of pod `pod` of node `node` (both 1-based).
    pub fn pod_netns(&self, node: usize, pod: usize) -> &str {
        &self.nodes[node - 1].pods[pod - 1]
    }

    /// Starts an HTTP server in a pod on `port` of every address it has,
    /// answering `GET /client` with the client address it saw and any
    /// other path with the pod's name ([`pod_name`]).
    pub fn serve_http(&mut self, node: usize, pod: usize, port: u16) -> anyhow::Result<()> {
        let server =
            HttpServer::start(self.pod_netns(node, pod), SocketAddr::from(([0, 0, 0, 0], port)), &pod_name(node, pod))?;
        self.servers.running.entry((node, pod)).or_default().push(Running::Http(server));
        Ok(())
    }

    /// Starts a UDP echo server in a pod on `port`, answering each
    /// datagram with `<pod name>: <datagram>`.
    pub fn serve_udp_echo(&mut self, node: usize, pod: usize, port: u16) -> anyhow::Result<()> {
        let server = UdpEchoServer::start(
            self.pod_netns(node, pod),
            SocketAddr::from(([0, 0, 0, 0], port)),
            &pod_name(node, pod),
        )?;
        self.servers.running.entry((node, pod)).or_default().push(Running::Udp(server));
        Ok(())
    }

    /// Stops every server of a pod, as when its containers exit.
    pub fn stop_pod(&mut self, node: usize, pod: usize) {
        self.servers.running.remove(&(node, pod));
    }
}
