//! The router's configuration on a real HAProxy (no torpord, no etcd): with a per-server
//! `maxconn`, a backlog waits in HAProxy's backend queue, and a server put in service later
//! takes the queued requests at once, while the busy server still holds its own.
//! Run by `make fleet-test` (`fleet/tests/run-fleet-tests.sh`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use torpor_fleet::haproxy::Admin;

/// A test server: answers HAProxy's health checks (`GET /`) at once and `GET /work` with its
/// name, holding each `/work` while `hold` is set; counts the `/work` requests it received.
struct Server {
    addr: SocketAddr,
    hold: Arc<AtomicBool>,
    work: Arc<AtomicUsize>,
}

impl Server {
    fn start(name: &'static str, hold: bool) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = Server {
            addr: l.local_addr().unwrap(),
            hold: Arc::new(AtomicBool::new(hold)),
            work: Arc::new(AtomicUsize::new(0)),
        };
        let (hold, work) = (s.hold.clone(), s.work.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (hold, work) = (hold.clone(), work.clone());
                std::thread::spawn(move || answer(c, name, &hold, &work));
            }
        });
        s
    }
}

fn answer(mut c: TcpStream, name: &str, hold: &AtomicBool, work: &AtomicUsize) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    if req.starts_with(b"GET /work") {
        work.fetch_add(1, Ordering::SeqCst);
        while hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = write!(
        c,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
}

/// `GET /work` through the router; the answering server's name.
fn get_work(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    c.write_all(b"GET /work HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// The backend's queue (`show stat`'s qcur on its BACKEND line).
async fn queued(hap: &Haproxy, backend: &str) -> u64 {
    hap.stat(backend, "BACKEND", "qcur").await
}

/// Server `a` (maxconn 1) holds one request; four more wait in the backend's queue; server `b`
/// (maxconn 1) is added and enabled: it answers all four while `a` still holds its one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts HAProxy; run by make fleet-test"]
async fn a_server_enabled_later_takes_the_queued_requests() {
    let tmp = TempDir::new("router-queue");
    let hap = Haproxy::start(&tmp.0, &["web"]).await;
    let api = hap.api();
    let (a, b) = (Server::start("a", true), Server::start("b", false));
    api.add_server("web", "a", a.addr, (100, 1)).await.unwrap();
    api.set_admin("web", "a", Admin::Ready).await.unwrap();
    hap.wait_admin("web", "a", Admin::Ready).await;
    let port = hap.frontend("web");
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get_work(port)))
        .collect();
    wait_eq("4 requests queued", || queued(&hap, "web"), 4).await;
    // HAProxy counts the fifth as sent to `a` before `a`'s thread has read it: wait for that
    // (under load it was 0 at this point once, CI 2026-12-03); `a`'s maxconn of 1 keeps it at 1.
    wait_eq(
        "a holds exactly one",
        || async { a.work.load(Ordering::SeqCst) },
        1,
    )
    .await;
    api.add_server("web", "b", b.addr, (100, 1)).await.unwrap();
    api.set_admin("web", "b", Admin::Ready).await.unwrap();
    wait_eq(
        "b answered the queue",
        || async { b.work.load(Ordering::SeqCst) },
        4,
    )
    .await;
    assert_eq!(queued(&hap, "web").await, 0);
    assert_eq!(a.work.load(Ordering::SeqCst), 1, "a still holds its one");
    a.hold.store(false, Ordering::SeqCst);
    let mut by: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    by.sort();
    assert_eq!(by, ["a", "b", "b", "b", "b"]);
}
