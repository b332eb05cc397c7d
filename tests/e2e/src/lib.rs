//! Test harness: runs the real `ironcaged` and `ironctl` binaries against a
//! temporary state directory and socket, and waits on conditions (never on
//! fixed sleeps) with generous upper bounds.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any condition to become true. Generous: CI machines are slow.
pub const WAIT: Duration = Duration::from_secs(60);

/// Directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Polls `cond` until it returns `Some`, failing the test after [`WAIT`].
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // kill(pid, 0) succeeds for zombies too; check /proc state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// A daemon on a private temp dir.
#[derive(Debug)]
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub child: Option<Child>,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Writes `config` (TOML; `{dir}` is replaced by the temp dir) and prepares paths.
    pub fn new(config: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("ironcage-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let d = Daemon {
            config: dir.path().join("ironcaged.toml"),
            socket: dir.path().join("run/ironcaged.sock"),
            state_dir: dir.path().join("state"),
            dir,
            child: None,
            stderr_lines: Default::default(),
        };
        d.write_config(config);
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, config: &str) {
        let text = config.replace("{dir}", &self.dir.path().display().to_string());
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("ironcaged"));
        c.arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM");
        c
    }

    /// Starts the daemon and waits until it is ready (see [`Daemon::start_with`]).
    pub fn start(&mut self) {
        self.start_with(|_| {});
    }

    /// Like [`Daemon::start`], with `tweak` applied to the command first. Waits
    /// until the daemon answers `daemon ping` and has logged `ironcaged ready`
    /// (its readiness point, where it tells systemd `READY=1`).
    pub fn start_with(&mut self, tweak: impl FnOnce(&mut Command)) {
        // Lines of a previous run on this Daemon do not count.
        self.stderr_lines = Default::default();
        let mut c = self.command();
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        tweak(&mut c);
        let mut child = c.spawn().expect("spawn ironcaged");
        let stderr = child.stderr.take().expect("stderr");
        let lines = self.stderr_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ironcaged] {line}");
                lines.lock().expect("lines").push(line);
            }
        });
        self.child = Some(child);
        let pid = self.pid();
        wait_for("the daemon to answer ping", || {
            assert!(
                pid_alive(pid as i32),
                "ironcaged exited during start; its stderr is above"
            );
            self.ctl(&["daemon", "ping"]).status.success().then_some(())
        });
        wait_for("the daemon to log that it is ready", || {
            assert!(
                pid_alive(pid as i32),
                "ironcaged exited during start; its stderr is above"
            );
            self.stderr_contains("ironcaged ready").then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon started").id()
    }

    /// Runs `ironctl --socket S ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("ironctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ironctl")
    }

    /// Runs ironctl with `--json` and parses stdout; panics on failure.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(&a);
        assert!(
            out.status.success(),
            "ironctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ironctl {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn agents(&self) -> Vec<serde_json::Value> {
        self.ctl_json(&["agents", "list"])
            .as_array()
            .expect("array")
            .clone()
    }

    pub fn agent(&self, name: &str) -> serde_json::Value {
        self.ctl_json(&["agents", "status", name])
    }

    /// Waits until agent `name` is in `state`; returns its status.
    pub fn wait_state(&self, name: &str, state: &str) -> serde_json::Value {
        wait_for(&format!("agent {name} to be {state}"), || {
            let a = self.agent(name);
            (a["state"] == state).then_some(a)
        })
    }

    /// Sends `sig` to the daemon and waits for it to exit; returns its status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal daemon");
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon started");
        wait_for("the daemon to exit", || child.try_wait().expect("try_wait"))
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr_lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Daemon {
    /// Runs ironctl and asserts it succeeded; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ironctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs ironctl as another user (`uid`/`gid`, no supplementary groups).
    /// Needs root.
    pub fn ctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        Command::new(bin("ironctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run ironctl as another user")
    }

    /// Waits until `name` is running and returns its pid.
    pub fn wait_running(&self, name: &str) -> i32 {
        let a = self.wait_state(name, "running");
        a["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("running agent {name} has no pid: {a}")) as i32
    }

    /// Waits until `cond` holds for agent `name`'s status; returns the status.
    pub fn wait_agent(
        &self,
        name: &str,
        what: &str,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(&format!("agent {name}: {what}"), || {
            let a = self.agent(name);
            cond(&a).then_some(a)
        })
    }

    /// The last `n` captured lines of agent `name` (stdout and stderr), as text.
    pub fn logs(&self, name: &str, n: u32) -> Vec<String> {
        let n = n.to_string();
        self.ctl_ok(&["agents", "logs", name, "-n", &n])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until agent `name`'s log has a line containing `needle`; returns all lines.
    pub fn wait_log(&self, name: &str, needle: &str) -> Vec<String> {
        wait_for(&format!("agent {name} to log {needle:?}"), || {
            let lines = self.logs(name, 1000);
            lines.iter().any(|l| l.contains(needle)).then_some(lines)
        })
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr_lines.lock().expect("lines").join("\n")
    }

    /// Waits until the daemon's stderr has a line containing `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        wait_for(&format!("the daemon to log {needle:?}"), || {
            self.stderr_contains(needle).then_some(())
        });
    }

    /// Sends `sig` to the daemon without waiting.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal daemon");
    }
}

/// `[[agent]]` TOML for an `sh -c SCRIPT` agent, plus `extra` lines (`key = value`).
pub fn sh_agent(name: &str, script: &str, extra: &str) -> String {
    assert!(
        !script.contains("'''"),
        "script must not contain three single quotes"
    );
    format!("\n[[agent]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", '''{script}''']\n{extra}\n")
}

/// `(ppid, pgrp)` of `pid`, from `/proc/PID/stat`, if it exists and is not a zombie.
pub fn proc_stat(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.rsplit(')').next()?.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_stat(*p).is_some_and(|(_, g)| g == pgid))
        .collect()
}

/// Live (non-zombie) direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_stat(*p).is_some_and(|(pp, _)| pp == pid))
        .collect()
}

/// Waits until none of `pids` is alive (zombies count as gone).
pub fn wait_gone(what: &str, pids: &[i32]) {
    wait_for(&format!("{what} ({pids:?}) to be gone"), || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    });
}

/// Runs `cmd` to completion with captured output, failing the test if it takes
/// longer than [`WAIT`] (it is killed first).
pub fn run_bounded(cmd: &mut Command) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// True when the tests run as root (needed to switch users).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw control-socket connection for protocol-level tests.
#[derive(Debug)]
pub struct RawClient {
    pub stream: std::os::unix::net::UnixStream,
}

impl RawClient {
    pub fn connect(socket: &Path) -> RawClient {
        let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        RawClient { stream }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, req: &ironcage_shared::protocol::Request) {
        ironcage_shared::framing::write_message_sync(&mut self.stream, req).expect("send");
    }

    /// The next response, or `None` if the daemon closed the connection.
    pub fn recv(&mut self) -> Option<ironcage_shared::protocol::Response> {
        match ironcage_shared::framing::read_frame_sync(&mut self.stream) {
            Ok(Some(p)) => Some(ironcage_shared::framing::decode(&p).expect("decode response")),
            Ok(None) => None,
            Err(ironcage_shared::framing::FrameError::Io(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                None
            }
            Err(e) => panic!("bad frame from daemon: {e}"),
        }
    }

    pub fn hello(&mut self) -> ironcage_shared::protocol::Response {
        use ironcage_shared::protocol::*;
        self.send(&Request::Hello(HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            client: "e2e".into(),
        }));
        self.recv().expect("hello response")
    }
}
