//! `torpor-bench-netchild PORT MIB [CHILD]`: the bench child (`torpor-bench-child`) as a TCP
//! server, so torpord can run it as an app (torpord gives its apps no stdin/stdout pipe).
//!
//! The process torpord spawns *becomes* the child: it forks a small front process, then execs
//! `torpor-bench-child` with its stdin/stdout on pipes to that front. So the pid torpord knows
//! (and records working sets for) is the one holding the memory; the front shares its cgroups.
//! The front has the child allocate and fill MIB MiB (`ALLOC`), then listens on 127.0.0.1:PORT;
//! each line a client sends (`TOUCH`, `NULL`, `VERIFY`, ... — the child's line protocol) is
//! passed to the child and its one-line answer sent back. Connections are served one at a time
//! (a readiness probe that connects and closes is harmless). Either process ending ends the
//! other (EOF on the pipes; the front also has PR_SET_PDEATHSIG).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: torpor-bench-netchild PORT MIB [CHILD]";
    let (Some(port), Some(mib)) = (
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
        args.get(2).and_then(|p| p.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let child = match args.get(3) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map(|e| e.with_file_name("torpor-bench-child"))
            .unwrap_or_default(),
    };
    if let Err(e) = run(port, mib, &child) {
        eprintln!("torpor-bench-netchild: {e}");
        std::process::exit(1);
    }
}

fn run(port: u16, mib: u64, child: &std::path::Path) -> Result<(), String> {
    let (to_child_r, to_child_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (from_child_r, from_child_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let parent = nix::unistd::getpid();
    // SAFETY: single-threaded here; the forked process only runs ordinary Rust (no locks held
    // across the fork: nothing else ran yet).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(to_child_r);
            drop(from_child_w);
            // SAFETY: prctl(PR_SET_PDEATHSIG) on ourselves.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            if nix::unistd::getppid() != parent {
                std::process::exit(0);
            }
            let code = match front(port, mib, to_child_w, from_child_r) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("torpor-bench-netchild (front): {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(to_child_w);
            drop(from_child_r);
            // Become the child, stdin/stdout on the pipes to the front.
            let err = Command::new(child)
                .stdin(File::from(to_child_r))
                .stdout(File::from(from_child_w))
                .exec();
            Err(format!("exec {}: {err}", child.display()))
        }
    }
}

fn front(port: u16, mib: u64, to_child: OwnedFd, from_child: OwnedFd) -> Result<(), String> {
    let mut to_child = File::from(to_child);
    let mut from_child = BufReader::new(File::from(from_child));
    let mut line = String::new();
    from_child
        .read_line(&mut line)
        .map_err(|e| format!("child hello: {e}"))?;
    if !line.starts_with("HELLO ") {
        return Err(format!("child said {line:?}"));
    }
    let mut ask = |cmd: &str, line: &mut String| -> Result<(), String> {
        writeln!(to_child, "{cmd}")
            .and_then(|_| to_child.flush())
            .map_err(|e| format!("to child: {e}"))?;
        line.clear();
        match from_child.read_line(line) {
            Ok(0) => Err("the child exited".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("from child: {e}")),
        }
    };
    ask(&format!("ALLOC {mib}"), &mut line)?;
    if !line.starts_with("READY ") {
        return Err(format!("ALLOC {mib}: child said {:?}", line.trim()));
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    eprintln!(
        "torpor-bench-netchild: child pid {} holds {mib} MiB ({}); front pid {} listening on 127.0.0.1:{port} (fd {})",
        nix::unistd::getppid(),
        line.trim(),
        std::process::id(),
        listener.as_raw_fd()
    );
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(mut w) = conn.try_clone() else {
            continue;
        };
        let mut r = BufReader::new(conn);
        let mut req = String::new();
        loop {
            req.clear();
            match r.read_line(&mut req) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let cmd = req.trim();
            if cmd.is_empty() {
                continue;
            }
            if cmd == "EXIT" {
                // The child's EXIT would end it; clients do not own it.
                let _ = writeln!(w, "ERR EXIT is not passed on");
                continue;
            }
            ask(cmd, &mut line)?;
            if w.write_all(line.as_bytes())
                .and_then(|_| w.flush())
                .is_err()
            {
                break;
            }
        }
    }
    Ok(())
}
