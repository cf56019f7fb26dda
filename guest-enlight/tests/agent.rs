//! The agent binary over stdin/stdout and a pty (no root needed: HELLO/PING and
//! garbage handling), and over a unix socket with real maps (root).

use guest_enlight::protocol::{
    encode_frame, msg, read_frame, Client, ErrorCode, ProtoError, Request, Response,
    DEFAULT_MAX_PAYLOAD, MAGIC,
};
use guest_enlight::{Category, MapSourceKind, RamLayout};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_torpor-guest");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raw_header(version: u8, msg_type: u8, id: u32, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.push(version);
    h.push(msg_type);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    let c = crc32fast::hash(&h);
    h.extend_from_slice(&c.to_le_bytes());
    h
}

/// Garbage, bad frames and good ones, in the order `check_garbage_answers` expects.
fn garbage_input() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"\x00\xffnot a frame TPGA TPGAxxxxxxxxxxxxxxxxxxxxxxxx");
    input.extend_from_slice(&encode_frame(&Request::Ping { nonce: 42 }.to_frame(1)));
    // Version 7 frame: answered with VersionMismatch, same request id.
    input.extend_from_slice(&raw_header(7, msg::PING, 2, 8));
    input.extend_from_slice(&[0u8; 12]);
    // Unknown type.
    input.extend_from_slice(&encode_frame(&guest_enlight::protocol::Frame {
        msg_type: 0x33,
        request_id: 3,
        payload: vec![],
    }));
    // Corrupt payload CRC.
    let mut bad = encode_frame(&Request::Ping { nonce: 1 }.to_frame(4));
    let n = bad.len();
    bad[n - 1] ^= 1;
    input.extend_from_slice(&bad);
    // Hello with a range the agent does not speak, then a good one.
    input.extend_from_slice(&encode_frame(
        &Request::Hello {
            min_version: 5,
            max_version: 9,
            client: "t".into(),
        }
        .to_frame(5),
    ));
    input.extend_from_slice(&encode_frame(
        &Request::Hello {
            min_version: 1,
            max_version: 4,
            client: "t".into(),
        }
        .to_frame(6),
    ));
    // Claimed 4 GiB payload: refused from the header.
    input.extend_from_slice(&raw_header(1, msg::PING, 7, u32::MAX));
    input.extend_from_slice(&encode_frame(&Request::Ping { nonce: 8 }.to_frame(8)));
    input
}

/// The next response frame on `out`: (request id, response).
fn next_answer(out: &mut std::process::ChildStdout) -> (u32, Response) {
    let f = read_frame(out, DEFAULT_MAX_PAYLOAD).expect("response frame");
    (
        f.request_id,
        Response::decode(&f).expect("decodable response"),
    )
}

/// The next answer is frame `id`'s, an ERROR with `code`.
fn expect_error(out: &mut std::process::ChildStdout, id: u32, code: ErrorCode) {
    let (got, r) = next_answer(out);
    assert_eq!(got, id);
    assert!(
        matches!(r, Response::Error { code: c, .. } if c == code),
        "{r:?}"
    );
}

/// The answers to frames 1 to 4, one per frame, in order.
fn check_garbage_answers_1_to_4(out: &mut std::process::ChildStdout) {
    assert_eq!(next_answer(out), (1, Response::Pong { nonce: 42 }));
    expect_error(out, 2, ErrorCode::VersionMismatch);
    expect_error(out, 3, ErrorCode::UnknownType);
    expect_error(out, 4, ErrorCode::BadFrame);
}

/// The answers to frames 5 to 8, then the end of the stream.
fn check_garbage_answers_5_to_8(out: &mut std::process::ChildStdout) {
    expect_error(out, 5, ErrorCode::VersionMismatch);
    let (id, r) = next_answer(out);
    assert_eq!(id, 6);
    match r {
        Response::Hello {
            version, source, ..
        } => {
            assert_eq!(version, 1);
            assert_eq!(source, MapSourceKind::PortableApprox);
        }
        r => panic!("{r:?}"),
    }
    expect_error(out, 7, ErrorCode::BadFrame);
    assert_eq!(next_answer(out), (8, Response::Pong { nonce: 8 }));
    assert!(matches!(
        read_frame(out, DEFAULT_MAX_PAYLOAD),
        Err(ProtoError::Closed)
    ));
}

#[test]
fn stdio_agent_survives_garbage() {
    let mut child = Kill(
        Command::new(BIN)
            .args(["serve", "--stdio", "--window", "1s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let input = garbage_input();
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(&input).unwrap();
    drop(stdin); // EOF: the agent exits after answering
    let mut out = child.0.stdout.take().unwrap();
    check_garbage_answers_1_to_4(&mut out);
    check_garbage_answers_5_to_8(&mut out);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "agent exit: {status:?}");
}

#[test]
fn pty_device_agent_answers() {
    use nix::pty::openpty;
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = openpty(None, None).expect("openpty");
    let mut t = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
    let slave_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .unwrap();
    let _child = Kill(
        Command::new(BIN)
            .args(["serve", "--window", "1s", "--device"])
            .arg(&slave_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let master = std::fs::File::from(pty.master);
    let mut c = Client::new(master);
    assert_eq!(c.ping(99).unwrap(), 99);
    match c.hello("pty test").unwrap() {
        Response::Hello {
            version: 1,
            page_size,
            ..
        } => assert_eq!(page_size as u64, guest_enlight::layout::page_size()),
        r => panic!("{r:?}"),
    }
    assert_eq!(c.ping(100).unwrap(), 100);
    drop(pty.slave);
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The agent's free-page bitmap: the local layout, and a free count between local builds
/// taken on both sides of it.
fn check_free_bitmap(c: &mut Client<UnixStream>, local_layout: &RamLayout) {
    let free = c.free_bitmap().unwrap();
    assert_eq!(free.layout, *local_layout);
    assert!(free.info.approximate && free.info.source == MapSourceKind::PortableApprox);
    assert!(free.info.build_us > 0 && free.info.generated_unix_ms > 0);
    let local_free = || {
        guest_enlight::portable::build_free_bitmap(local_layout, Default::default())
            .unwrap()
            .count_free()
    };
    let before = local_free();
    let free = c.free_bitmap().unwrap();
    let after = local_free();
    assert_eq!(free.layout, *local_layout);
    let remote_free = free.runs.histogram()[1];
    eprintln!("free pages: agent {remote_free}, local {before} before / {after} after it");
    // Free memory moves with everything else running: the agent's count is compared with local
    // builds on both sides of it.
    let (lo, hi) = (before.min(after), before.max(after));
    assert!(
        remote_free as f64 >= lo as f64 * 0.8 && (remote_free as f64) < hi.max(1) as f64 * 1.25,
        "agent free {remote_free} vs local {before} / {after}"
    );
}

/// The agent's priority map: the local layout, every page counted, kernel pages as local.
fn check_priority_map(c: &mut Client<UnixStream>, local_layout: &RamLayout) {
    let prio = c.priority_map(1000).unwrap();
    assert_eq!(prio.layout, *local_layout);
    assert!(prio.info.approximate);
    assert!(prio.info.window_ms >= 900, "window {}", prio.info.window_ms);
    let h = prio.runs.histogram();
    let mut tracker = guest_enlight::portable::ActivityTracker::new(Duration::from_secs(1));
    let (local_prio, _) = guest_enlight::portable::build_priority_map(
        local_layout,
        &mut tracker,
        Duration::from_secs(1),
        &Default::default(),
    )
    .unwrap();
    let lc = local_prio.counts();
    for c in Category::ALL {
        eprintln!(
            "{:<17} agent {:>9} local {:>9}",
            c.name(),
            h[c as usize],
            lc[c as usize]
        );
    }
    assert_eq!(h.iter().sum::<u64>(), local_layout.total_pages());
    // Kernel (reserved) pages barely move; the rest of a live system does.
    let (a, b) = (
        h[Category::Kernel as usize] as f64,
        lc[Category::Kernel as usize] as f64,
    );
    assert!(
        a > 0.0 && (a - b).abs() / b < 0.05,
        "Kernel pages agent {a} local {b}"
    );
    assert!(h[9..].iter().all(|&n| n == 0));
}

#[test]
#[ignore = "root: needs /proc/iomem addresses, /proc/kpageflags and PFNs in pagemap"]
fn unix_socket_agent_serves_real_maps() {
    assert!(is_root(), "run as root (tests/run-root-tests.sh)");
    let sock = std::env::temp_dir().join(format!("torpor-guest-test-{}.sock", std::process::id()));
    let _child = Kill(
        Command::new(BIN)
            .args(["serve", "--window", "1s", "--unix"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let t0 = Instant::now();
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut c = Client::new(stream);
    assert!(matches!(
        c.hello("root test").unwrap(),
        Response::Hello { version: 1, .. }
    ));
    let (page_size, layout) = c.layout().unwrap();
    assert_eq!(page_size as u64, guest_enlight::layout::page_size());
    let local_layout = RamLayout::from_proc().unwrap();
    assert_eq!(layout, local_layout);

    check_free_bitmap(&mut c, &local_layout);
    check_priority_map(&mut c, &local_layout);
    let _ = std::fs::remove_file(&sock);
}
