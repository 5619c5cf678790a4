//! Servers running in the cluster's pods, each answering with its pod's
//! name, started and stopped pod by pod as a test's Pods come and go.

use std::{collections::BTreeMap, net::SocketAddr};

use super::{Cluster, pod_name};
use crate::servers::Server;

/// Each pod's servers, held for their Drop, which stops them.
#[derive(Debug, Default)]
pub(super) struct PodServers {
    running: BTreeMap<(usize, usize), Vec<Server>>,
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
            Server::http(self.pod_netns(node, pod), SocketAddr::from(([0, 0, 0, 0], port)), &pod_name(node, pod))?;
        self.servers.running.entry((node, pod)).or_default().push(server);
        Ok(())
    }

    /// Starts a UDP echo server in a pod on `port`, answering each
    /// datagram with `<pod name>: <datagram>`.
    pub fn serve_udp_echo(&mut self, node: usize, pod: usize, port: u16) -> anyhow::Result<()> {
        let server =
            Server::udp_echo(self.pod_netns(node, pod), SocketAddr::from(([0, 0, 0, 0], port)), &pod_name(node, pod))?;
        self.servers.running.entry((node, pod)).or_default().push(server);
        Ok(())
    }

    /// Stops every server of a pod, as when its containers exit.
    pub fn stop_pod(&mut self, node: usize, pod: usize) {
        self.servers.running.remove(&(node, pod));
    }
}
