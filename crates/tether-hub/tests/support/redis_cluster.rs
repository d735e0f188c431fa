//! A 3-master Redis Cluster of the test's own on free ports (no replicas, no persistence),
//! for the `redis+cluster://` broker's tests. Needs `redis-server` and `redis-cli` 7.0+
//! (sharded pub/sub); nothing is installed, everything is started here and killed on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl RedisCluster {
    /// Starts three masters and joins them (`redis-cli --cluster create`), returning once
    /// every node reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "tether-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let mut cluster = Self {
            ports,
            dir,
            children: Vec::new(),
        };
        for port in cluster.ports.clone() {
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&node_dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            cluster.children.push(child);
        }
        for port in cluster.ports.clone() {
            let answers = eventually(Duration::from_secs(10), || async move {
                cli(port, &["PING"]).is_some_and(|out| out.trim() == "PONG")
            })
            .await;
            assert!(answers, "cluster node {port} did not start");
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in cluster.ports.clone() {
            let ok = eventually(Duration::from_secs(20), || async move {
                cli(port, &["CLUSTER", "INFO"]).is_some_and(|out| out.contains("cluster_state:ok"))
            })
            .await;
            assert!(ok, "cluster node {port} never reported cluster_state:ok");
        }
        cluster
    }

    /// The broker URL naming every master.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", nodes.join(","))
    }

    /// Runs `redis-cli -c` (following MOVED) against the first node; stdout on success.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &self.ports[0].to_string()])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// `redis-cli -p PORT ARGS…` against one node; stdout on success.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
