//! A NATS JetStream cluster on one machine, as production runs it (three
//! nodes, cluster routes between them): [`crate::Infra`] starts one when
//! [`crate::InfraOptions::nats_nodes`] is above 1.
//!
//! Node `i` (from 1) is the server `nats-i`, named `ticketing-local-i` in the
//! cluster `ticketing-local`, with its own client, monitoring and cluster port
//! on 127.0.0.1 and its own JetStream store (`<data>/nats-i`). Clients get all
//! the client URLs at once ([`client_urls`]), so they fail over to another
//! node when theirs goes away.

use std::path::Path;

use anyhow::Context;

use crate::paths;
use crate::process::ProcessSpec;

/// The ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub client: u16,
    pub monitor: u16,
    pub cluster: u16,
}

/// The process name of node `index` (from 1): `nats-1`, `nats-2`, …
pub fn node_name(index: usize) -> String {
    format!("nats-{index}")
}

/// The name node `index` has in the cluster (what stream info calls the leader).
pub fn server_name(index: usize) -> String {
    format!("ticketing-local-{index}")
}

/// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,…`: every node, for clients.
pub fn client_urls(nodes: &[NodePorts]) -> String {
    nodes
        .iter()
        .map(|node| format!("nats://127.0.0.1:{}", node.client))
        .collect::<Vec<_>>()
        .join(",")
}

/// The process specs of the nodes (same order as `nodes`).
pub fn specs(data_dir: &Path, nodes: &[NodePorts]) -> anyhow::Result<Vec<ProcessSpec>> {
    let program =
        paths::require_installed(&paths::venv_bin("nats-server"), "nats-server (>= 2.10)")?;
    let routes = nodes
        .iter()
        .map(|node| format!("nats://127.0.0.1:{}", node.cluster))
        .collect::<Vec<_>>()
        .join(",");
    nodes
        .iter()
        .enumerate()
        .map(|(i, ports)| {
            let index = i + 1;
            let store = data_dir.join(node_name(index));
            std::fs::create_dir_all(&store)
                .with_context(|| format!("failed to create {}", store.display()))?;
            Ok(ProcessSpec::new(node_name(index), program.clone())
                .args(["-js", "-a", "127.0.0.1", "-p"])
                .arg(ports.client.to_string())
                .arg("-m")
                .arg(ports.monitor.to_string())
                .arg("-sd")
                .arg(store)
                .arg("--server_name")
                .arg(server_name(index))
                .args(["--cluster_name", "ticketing-local", "--cluster"])
                .arg(format!("nats://127.0.0.1:{}", ports.cluster))
                .arg("--routes")
                .arg(&routes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_every_node() {
        let nodes = [
            NodePorts {
                client: 1,
                monitor: 2,
                cluster: 3,
            },
            NodePorts {
                client: 4,
                monitor: 5,
                cluster: 6,
            },
        ];
        assert_eq!(client_urls(&nodes), "nats://127.0.0.1:1,nats://127.0.0.1:4");
        assert_eq!(
            (node_name(2), server_name(2)),
            ("nats-2".to_owned(), "ticketing-local-2".to_owned())
        );
    }
}
