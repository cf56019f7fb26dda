//! A three-member etcd cluster (Debian's etcd-server) on loopback: distinct client and peer
//! ports, a data directory per member; members are killed (-9) and restarted one at a time.

use super::{unused_port, wait_for, Proc, HANG};
use etcd_client::Client;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Member {
    pub name: String,
    pub url: String,
    pub peer_url: String,
    pub proc: Option<Proc>,
}

pub struct Cluster {
    dir: PathBuf,
    pub members: Vec<Member>,
}

impl Cluster {
    /// `n` members, started together; returns when each answers a (quorum) read.
    pub async fn start(dir: &Path, n: usize) -> Cluster {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                url: format!("http://127.0.0.1:{}", unused_port()),
                peer_url: format!("http://127.0.0.1:{}", unused_port()),
                proc: None,
            })
            .collect();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            members,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_member(i).await;
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let m = &self.members[i];
        let data = self.dir.join(format!("etcd-{}", m.name));
        let proc = Proc::spawn(
            &self.dir,
            &format!("etcd-{}", m.name),
            Command::new("etcd")
                .arg(format!("--name={}", m.name))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={}", m.url))
                .arg(format!("--advertise-client-urls={}", m.url))
                .arg(format!("--listen-peer-urls={}", m.peer_url))
                .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=torpor-fleet-test"),
        );
        self.members[i].proc = Some(proc);
    }

    /// Wait until member `i` answers a read (which needs a quorum and a leader).
    pub async fn wait_member(&self, i: usize) {
        let url = self.members[i].url.clone();
        wait_for(&format!("etcd member {i} to answer"), HANG, || {
            let url = url.clone();
            async move {
                match torpor_fleet::agent::connect(&[url]).await {
                    Ok(mut c) => c.get("/", None).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Every member's client URL, comma-separated (the fleet's `--etcd`).
    pub fn endpoints(&self) -> String {
        let urls: Vec<&str> = self.members.iter().map(|m| m.url.as_str()).collect();
        urls.join(",")
    }

    /// A client balanced over every member.
    pub async fn client(&self) -> Client {
        let urls: Vec<String> = self.members.iter().map(|m| m.url.clone()).collect();
        torpor_fleet::agent::connect(&urls).await.unwrap()
    }

    /// The index of the raft leader, asked of a live member.
    pub async fn leader(&self) -> usize {
        let mut ids = vec![];
        let mut leader = None;
        for m in &self.members {
            let mut c = torpor_fleet::agent::connect(std::slice::from_ref(&m.url))
                .await
                .unwrap();
            let s = c.status().await.unwrap();
            ids.push(s.header().unwrap().member_id());
            leader = Some(s.leader());
        }
        let l = leader.unwrap();
        ids.iter().position(|id| *id == l).unwrap()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Start member `i` again (same name, ports and data directory); returns once it answers.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_member(i).await;
    }

    /// The client port of member `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.members[i]
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// Whether process `pid` has an established TCP connection to 127.0.0.1:`port` (its socket
/// inodes, from /proc/PID/fd, found in /proc/net/tcp).
pub fn connected_to(pid: i32, port: u16) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local, remote, state (01: established), ..., inode (field 9).
        f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.iter().any(|i| i == f[9])
    })
}
