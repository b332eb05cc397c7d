//! Budget alerts: a `tracing::warn!` and, when `[budget] alert_command` is set,
//! that command run with the alert as one JSON object (one line) on stdin:
//!
//! ```json
//! {"kind":"budget_alert","agent":"researcher","threshold_percent":80,
//!  "limit_micros":5000000,"spent_micros":4010000,"period":"day",
//!  "period_start":1709164800,"at":1709200000,
//!  "message":"agent researcher has spent 80% of its day budget ($4.01 of $5.00)"}
//! ```
//!
//! (`period_start` and `at` are Unix seconds.) Commands run one at a time, in
//! the order the alerts fired, on a tokio task, never on the actor thread, in its own process group with a clean environment
//! (`PATH` only: the daemon's environment may hold provider keys), and is killed
//! with its whole group after [`COMMAND_TIMEOUT`]. A failing command is logged;
//! the ledger never waits for it.

use super::period;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::BudgetPeriod;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// How long an alert command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of an alert command's stderr kept for the log.
const STDERR_KEEP: usize = 2048;

const ALERT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One crossed threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Alert {
    pub agent: AgentName,
    pub threshold_percent: u32,
    pub limit: Micros,
    pub spent: Micros,
    pub period: BudgetPeriod,
    pub period_start: u64,
    pub at_s: u64,
}

impl Alert {
    pub fn message(&self) -> String {
        format!(
            "agent {} has spent {}% of its {} budget ({} of {})",
            self.agent,
            self.threshold_percent,
            self.period.as_str(),
            self.spent,
            self.limit
        )
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "kind": "budget_alert",
            "agent": self.agent.as_str(),
            "threshold_percent": self.threshold_percent,
            "limit_micros": self.limit.0,
            "spent_micros": self.spent.0,
            "period": self.period.as_str(),
            "period_start": self.period_start,
            "at": self.at_s,
            "message": self.message(),
        })
        .to_string()
    }
}

/// Counts alert commands in flight so shutdown and tests can wait for them.
#[derive(Debug, Default)]
pub(super) struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

impl Inflight {
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One alert command to run.
struct Job {
    argv: Vec<String>,
    line: String,
    agent: AgentName,
    /// Decrements the in-flight count even if the job is dropped unrun.
    _done: DoneGuard,
}

/// Runs alert commands one at a time, in the order the alerts fired (so a
/// burst of thresholds reaches the operator's script in order, and a slow
/// script cannot pile up processes).
#[derive(Debug)]
pub(super) struct AlertQueue {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    inflight: Arc<Inflight>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl AlertQueue {
    /// Starts the queue's task on the current tokio runtime (in the daemon, the
    /// multi-thread runtime under the actix System, so off the actor thread).
    pub fn start(inflight: Arc<Inflight>) -> Self {
        let tx = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
                rt.spawn(async move {
                    while let Some(job) = rx.recv().await {
                        if let Err(e) = run(&job.argv, job.line.as_bytes(), COMMAND_TIMEOUT).await {
                            tracing::warn!(agent = %job.agent, command = ?job.argv[0], "budget alert command failed: {e}");
                        }
                    }
                });
                Some(tx)
            }
            Err(_) => None,
        };
        AlertQueue { tx, inflight }
    }

    /// Logs `alert` and queues `command` for it, if any. Returns at once.
    pub fn dispatch(&self, alert: &Alert, command: Option<&[String]>) {
        tracing::warn!(
            agent = %alert.agent,
            threshold_percent = alert.threshold_percent,
            spent_micros = alert.spent.0,
            limit_micros = alert.limit.0,
            period = alert.period.as_str(),
            period_start = %period::rfc3339(alert.period_start),
            "budget alert: {}",
            alert.message()
        );
        let Some(argv) = command.filter(|a| !a.is_empty()) else {
            return;
        };
        let Some(tx) = &self.tx else {
            tracing::error!("budget alert command not run: no async runtime");
            return;
        };
        self.inflight.count.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            argv: argv.to_vec(),
            line: alert.json() + "\n",
            agent: alert.agent.clone(),
            _done: DoneGuard(self.inflight.clone()),
        };
        // If the task is gone (runtime shutting down) the job drops, and its guard
        // keeps the count right.
        let _ = tx.send(job);
    }
}

/// Decrements the in-flight count when dropped.
struct DoneGuard(Arc<Inflight>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.done();
    }
}

async fn run(argv: &[String], input: &[u8], timeout: Duration) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", ALERT_PATH)
        .env("IRONCAGE_ALERT", "budget")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(s) = stdin.as_mut() {
            // A command that exits without reading its input is not an error.
            let _ = s.write_all(input).await;
        }
        drop(stdin.take());
        let mut kept = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let mut buf = [0u8; 1024];
            while let Ok(n) = e.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEEP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        (child.wait().await, kept)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), err)) => Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&err).trim()
        )),
        Ok((Err(e), _)) => Err(format!("cannot wait for it: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!(
                "still running after {} s; killed",
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            agent: AgentName::new("researcher").unwrap(),
            threshold_percent: 80,
            limit: Micros(5_000_000),
            spent: Micros(4_010_000),
            period: BudgetPeriod::Day,
            period_start: 1_709_164_800,
            at_s: 1_709_200_000,
        }
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_str(&alert().json()).unwrap();
        assert_eq!(v["kind"], "budget_alert");
        assert_eq!(v["agent"], "researcher");
        assert_eq!(v["threshold_percent"], 80);
        assert_eq!(v["limit_micros"], 5_000_000);
        assert_eq!(v["spent_micros"], 4_010_000);
        assert_eq!(v["period"], "day");
        assert_eq!(v["period_start"], 1_709_164_800u64);
        assert_eq!(v["at"], 1_709_200_000u64);
        assert_eq!(
            v["message"],
            "agent researcher has spent 80% of its day budget ($4.01 of $5.00)"
        );
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_the_timeout() {
        let argv: Vec<String> = ["sh", "-c", "sleep 30 & wait"].map(String::from).to_vec();
        let e = run(&argv, b"{}\n", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("killed"), "{e}");
    }

    #[tokio::test]
    async fn failures_report_status_and_stderr() {
        let argv: Vec<String> = ["sh", "-c", "echo nope >&2; exit 3"]
            .map(String::from)
            .to_vec();
        let e = run(&argv, b"{}\n", COMMAND_TIMEOUT).await.unwrap_err();
        assert!(e.contains("3") && e.contains("nope"), "{e}");
        let e = run(&["/nonexistent/notify".to_owned()], b"", COMMAND_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
        let env: Vec<String> = [
            "sh",
            "-c",
            "test -z \"$HOME\" && test \"$IRONCAGE_ALERT\" = budget",
        ]
        .map(String::from)
        .to_vec();
        run(&env, b"", COMMAND_TIMEOUT)
            .await
            .expect("clean environment");
    }
}
