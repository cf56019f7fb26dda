//! The test and benchmark children (`torpor-testchild`, `torpor-kindchild`,
//! `torpor-bench-child`) speak a line protocol on stdin/stdout and greet with `HELLO ...`:
//! [`serve`] is the child's side, [`LineChild`] the parent's.

use anyhow::{ensure, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The child's side: prints `HELLO <pid>`, then answers each line read from stdin with what
/// `answer` returns for it (one line, flushed), until `answer` returns `None` (`EXIT`) or
/// stdin closes.
pub fn serve(mut answer: impl FnMut(&str) -> Option<String>) {
    let mut out = std::io::stdout();
    writeln!(out, "HELLO {}", std::process::id()).ok();
    out.flush().ok();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some(reply) = answer(&line) else { break };
        writeln!(out, "{reply}").ok();
        out.flush().ok();
    }
}

/// `path` created (or truncated) for reading and writing; an error names the path.
pub fn fresh_file(path: &str) -> Result<std::fs::File, String> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))
}

/// A started child whose `HELLO` line has been read.
pub struct LineChild {
    pub proc: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub pid: i32,
}

impl LineChild {
    /// Starts `exe` with piped stdin/stdout and waits for its `HELLO` line (a child that does
    /// not greet is killed and reaped).
    pub fn spawn(exe: &Path) -> Result<LineChild> {
        let mut proc = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", exe.display()))?;
        let stdin = proc.stdin.take().context("child stdin")?;
        let mut stdout = BufReader::new(proc.stdout.take().context("child stdout")?);
        let pid = proc.id() as i32;
        let mut l = String::new();
        let greeted = stdout
            .read_line(&mut l)
            .context("read from child")
            .and_then(|_| {
                ensure!(l.starts_with("HELLO"), "child said {l:?}");
                Ok(())
            });
        if let Err(e) = greeted {
            let _ = proc.kill();
            let _ = proc.wait();
            return Err(e);
        }
        Ok(LineChild {
            proc,
            stdin,
            stdout,
            pid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_child_that_does_not_greet() {
        // `true` exits at once: no HELLO line.
        let e = LineChild::spawn(Path::new("/bin/true")).err().unwrap();
        assert!(e.to_string().contains("child said"), "{e}");
        assert!(LineChild::spawn(Path::new("/nonexistent/child")).is_err());
    }
}
