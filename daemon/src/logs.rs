//! Agent output capture: line splitting, a bounded in-memory ring, a size-capped
//! rotating file, and `tracing`.
//!
//! Each agent has one [`AgentLogs`]. Memory stays bounded no matter what an agent
//! prints: lines are cut at [`MAX_LINE`] bytes, the ring keeps at most
//! [`RING_LINES`] lines and [`RING_BYTES`] bytes, and the file rotates at its cap.
//! Followers (`ironctl agents logs -f`) wait on a `Notify` and read by sequence
//! number, so an agent nobody follows costs no channel buffer.
//!
//! Every line an agent prints passes through its `logs` PII policy
//! ([`AgentLogs::set_pii`]) before it reaches the ring, the file or `tracing`:
//! `redact` rewrites it (label or mask; the token style falls back to labels
//! here, so agent output never mints tokens), `block` replaces the whole line
//! with a notice naming the kinds, `log` keeps it and records the kinds. If the
//! policy cannot be applied the line is withheld (fail closed). Lines are cut at
//! [`MAX_LINE`] before scanning, so an entity straddling such a cut is scanned
//! as two pieces.
//!
//! Before that policy, the values of the secrets the agent was given
//! ([`AgentLogs::mask_secrets`]: at delivery, on rotation, on a channel read)
//! are replaced by `[secret NAME]`, whatever they look like: a database
//! password matches no PII pattern, and the daemon must not write it to the
//! journal. So are the forms a value takes when printed inside something
//! else ([`printed_forms`]): percent-encoded (a password in a database URL),
//! JSON-escaped, base64. Values shorter than [`MIN_MASKED_SECRET`] bytes are
//! left alone (they would mask ordinary words and numbers), and a value cut
//! by the [`MAX_LINE`] split is not recognised.

use crate::secret::SecretString;
use ironcage_shared::AgentName;
use ironcage_shared::protocol::{LogLine, Stream};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

/// Longest line kept; longer output is split into several lines.
pub const MAX_LINE: usize = 8 * 1024;
pub const RING_LINES: usize = 1000;
pub const RING_BYTES: usize = 256 * 1024;
/// Log file size at which it is rotated to `NAME.log.1`.
pub const FILE_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Rotated files kept (`.1` .. `.N`).
pub const FILE_KEEP: usize = 2;
/// Shortest secret value masked out of agent output.
pub const MIN_MASKED_SECRET: usize = 6;
/// Most secret values masked per agent; the oldest go first.
const MAX_MASKED_SECRETS: usize = 256;

/// The secret values masked out of one agent's output, each with its
/// [`printed_forms`]; replaced longest first (so a value that contains
/// another is replaced whole).
#[derive(Default)]
struct SecretValues(Vec<(String, Vec<SecretString>)>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValues({} masked)", self.0.len())
    }
}

impl SecretValues {
    fn add(&mut self, values: impl IntoIterator<Item = (String, SecretString)>) {
        for (name, v) in values {
            if v.expose().len() < MIN_MASKED_SECRET {
                continue;
            }
            self.0.retain(|(_, old)| old[0] != v);
            let forms = printed_forms(v.expose());
            self.0.push((name, forms));
        }
        if self.0.len() > MAX_MASKED_SECRETS {
            let extra = self.0.len() - MAX_MASKED_SECRETS;
            self.0.drain(..extra);
        }
    }

    /// `line` with every known value (in any of its forms) replaced by
    /// `[secret NAME]`.
    fn mask(&self, line: String) -> String {
        let found = |s: &SecretString| line.contains(s.expose());
        if !self.0.iter().any(|(_, forms)| forms.iter().any(found)) {
            return line;
        }
        let mut by_len: Vec<(&str, &SecretString)> = self
            .0
            .iter()
            .flat_map(|(name, forms)| forms.iter().map(move |f| (name.as_str(), f)))
            .collect();
        by_len.sort_by_key(|(_, v)| std::cmp::Reverse(v.expose().len()));
        let mut out = line;
        for (name, v) in by_len {
            if out.contains(v.expose()) {
                out = out.replace(v.expose(), &format!("[secret {name}]"));
            }
        }
        out
    }
}

/// `value` as printed by itself and inside other text: percent-encoded (as
/// in a URL's password, RFC 3986 unreserved characters kept), JSON-escaped
/// (inside a JSON string), and base64 in the standard and URL-safe
/// alphabets (unpadded, so it also matches the padded form). The value
/// first; forms equal to one already listed are left out.
fn printed_forms(value: &str) -> Vec<SecretString> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use std::fmt::Write as _;
    let mut percent = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            percent.push(char::from(b));
        } else {
            let _ = write!(percent, "%{b:02X}");
        }
    }
    let quoted = zeroize::Zeroizing::new(serde_json::to_string(value).unwrap_or_default());
    let json = quoted
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(value)
        .to_owned();
    let mut forms: Vec<SecretString> = Vec::with_capacity(5);
    for f in [
        value.to_owned(),
        percent,
        json,
        STANDARD_NO_PAD.encode(value),
        URL_SAFE_NO_PAD.encode(value),
    ] {
        let f = SecretString::new(f);
        if !forms.contains(&f) {
            forms.push(f);
        }
    }
    forms
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// Sequence number of the next line pushed.
    next_seq: u64,
}

#[derive(Debug)]
struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    fn write_line(&mut self, line: &LogLine) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size >= FILE_MAX_BYTES {
            self.rotate()?;
        }
        let tag = match line.stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        let text = format!("{} {tag} {}\n", line.at_ms, line.line);
        if let Some(f) = self.file.as_mut() {
            f.write_all(text.as_bytes())?;
        }
        self.size += text.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        for i in (1..FILE_KEEP).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        self.file = Some(f);
        Ok(())
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// One agent's captured output.
#[derive(Debug)]
pub struct AgentLogs {
    agent: AgentName,
    ring: Mutex<Ring>,
    file: Mutex<RotatingFile>,
    notify: Notify,
    /// The agent's `logs` PII policy (`None`: lines pass unchanged).
    pii: RwLock<Option<Arc<LogPolicy>>>,
    /// Secret values the agent was given, masked before the PII policy.
    secrets: RwLock<SecretValues>,
}

/// The `logs` direction of an agent's PII settings, ready to apply.
#[derive(Debug)]
pub struct LogPolicy {
    scanner: Option<Arc<ironcage_shared::pii::Scanner>>,
    policy: ironcage_shared::pii::Policy,
    mask: bool,
}

impl LogPolicy {
    /// From an agent's PII settings; `None` when its logs policy allows all.
    pub fn from_spec(spec: &crate::config::PiiSpec) -> Option<LogPolicy> {
        let policy = spec.policies.logs.clone();
        if policy.strictest_possible() == ironcage_shared::pii::Action::Allow {
            return None;
        }
        let scanner = match spec.build_scanner() {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::error!(
                    "PII scanner for agent logs cannot be built ({e}); lines will be withheld"
                );
                None
            }
        };
        Some(LogPolicy {
            scanner,
            policy,
            mask: spec.style == crate::config::PiiStyle::Mask,
        })
    }

    /// The line to store, or a notice replacing it.
    pub fn apply(&self, agent: &AgentName, line: String) -> String {
        use ironcage_shared::pii::{Action, RedactStyle};
        let Some(scanner) = &self.scanner else {
            return "[ironcaged] line withheld: the PII policy (logs) could not be applied"
                .to_owned();
        };
        let findings = scanner.scan(&line);
        if findings.is_empty() {
            return line;
        }
        let style = if self.mask {
            RedactStyle::Mask
        } else {
            RedactStyle::Label
        };
        let outcome = match self.policy.apply(&line, &findings, style) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(agent = %agent, "PII policy (logs) failed on a line: {e}");
                return "[ironcaged] line withheld: the PII policy (logs) could not be applied"
                    .to_owned();
            }
        };
        let kinds = |want: fn(Action) -> bool| {
            let mut names: Vec<&str> = Vec::new();
            for c in outcome.counts.iter().filter(|c| want(c.action)) {
                if !names.contains(&c.kind.name()) {
                    names.push(c.kind.name());
                }
            }
            names.join(", ")
        };
        let noted = kinds(|a| a >= Action::Log);
        if !noted.is_empty() {
            tracing::info!(target: "pii", agent = %agent, direction = "logs", action = %outcome.action, kinds = %noted, "PII found in agent output");
        }
        match outcome.action {
            Action::Block => format!(
                "[ironcaged] line withheld by the PII policy (logs): it contained {}",
                kinds(|a| a == Action::Block)
            ),
            Action::Redact => outcome.text.unwrap_or_default(),
            Action::Allow | Action::Log => line,
        }
    }
}

impl AgentLogs {
    pub fn new(agent: AgentName, log_dir: &Path) -> Arc<Self> {
        let path = log_dir.join(format!("{agent}.log"));
        Arc::new(AgentLogs {
            agent,
            ring: Mutex::new(Ring::default()),
            file: Mutex::new(RotatingFile {
                path,
                file: None,
                size: 0,
            }),
            notify: Notify::new(),
            pii: RwLock::new(None),
            secrets: RwLock::new(SecretValues::default()),
        })
    }

    /// Masks these secret values (with their secrets' names) out of every
    /// line captured from now on. Values stay masked for the life of the
    /// daemon: a rotated-out value may still be in the agent's memory or
    /// environment.
    pub fn mask_secrets(&self, values: impl IntoIterator<Item = (String, SecretString)>) {
        self.secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(values);
    }

    /// Sets the `logs` PII policy applied to every captured line from now on.
    pub fn set_pii(&self, spec: &crate::config::PiiSpec) {
        let p = LogPolicy::from_spec(spec).map(Arc::new);
        *self.pii.write().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Records one line: ring, file, tracing; wakes followers.
    pub fn push(&self, stream: Stream, line: String) {
        let line = LogLine {
            at_ms: crate::util::unix_ms(),
            stream,
            line,
        };
        tracing::info!(target: "agent", agent = %self.agent, stream = ?stream, "{}", line.line);
        if let Err(e) = self.file.lock().expect("log file lock").write_line(&line) {
            tracing::warn!(agent = %self.agent, "cannot write the agent's log file: {e}");
        }
        let mut r = self.ring.lock().expect("log ring lock");
        r.bytes += line.line.len();
        r.lines.push_back(line);
        r.next_seq += 1;
        while r.lines.len() > RING_LINES || (r.bytes > RING_BYTES && r.lines.len() > 1) {
            if let Some(old) = r.lines.pop_front() {
                r.bytes -= old.line.len();
            }
        }
        drop(r);
        self.notify.notify_waiters();
    }

    /// The last `n` lines and the sequence number to follow from.
    pub fn tail(&self, n: usize) -> (Vec<LogLine>, u64) {
        let r = self.ring.lock().expect("log ring lock");
        let skip = r.lines.len().saturating_sub(n);
        (r.lines.iter().skip(skip).cloned().collect(), r.next_seq)
    }

    /// Lines from sequence `seq` on (those still in the ring) and the next seq.
    pub fn since(&self, seq: u64) -> (Vec<LogLine>, u64) {
        let r = self.ring.lock().expect("log ring lock");
        let first = r.next_seq - r.lines.len() as u64;
        let skip = seq.saturating_sub(first) as usize;
        (r.lines.iter().skip(skip).cloned().collect(), r.next_seq)
    }

    /// Waits until a line newer than `seq` exists.
    pub async fn wait_newer(&self, seq: u64) {
        loop {
            let notified = self.notify.notified();
            if self.ring.lock().expect("log ring lock").next_seq > seq {
                return;
            }
            notified.await;
        }
    }

    /// Reads `reader` to EOF, splitting it into lines pushed to these logs.
    pub async fn capture<R: AsyncRead + Unpin>(self: Arc<Self>, mut reader: R, stream: Stream) {
        let mut buf = vec![0u8; 4096];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            while let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
                pending.extend_from_slice(&chunk[..pos]);
                self.emit(stream, &mut pending);
                chunk = &chunk[pos + 1..];
            }
            pending.extend_from_slice(chunk);
            while pending.len() >= MAX_LINE {
                let rest = pending.split_off(MAX_LINE);
                self.emit(stream, &mut pending);
                pending = rest;
            }
        }
        if !pending.is_empty() {
            self.emit(stream, &mut pending);
        }
    }

    fn emit(&self, stream: Stream, pending: &mut Vec<u8>) {
        if pending.last() == Some(&b'\r') {
            pending.pop();
        }
        let line = String::from_utf8_lossy(pending).into_owned();
        pending.clear();
        let line = self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .mask(line);
        let policy = self.pii.read().unwrap_or_else(|e| e.into_inner()).clone();
        let line = match policy {
            Some(p) => p.apply(&self.agent, line),
            None => line,
        };
        self.push(stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_caps_length_and_bounds_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(AgentName::new("a").unwrap(), dir.path());
        let mut input = Vec::new();
        for i in 0..(RING_LINES + 10) {
            input.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
        input.extend_from_slice(&vec![b'x'; MAX_LINE * 2 + 5]);
        logs.clone().capture(&input[..], Stream::Stdout).await;
        let (tail, next) = logs.tail(3);
        assert_eq!(next, (RING_LINES + 10 + 3) as u64);
        assert_eq!(tail[0].line.len(), MAX_LINE);
        assert_eq!(tail[2].line, "xxxxx");
        let (all, _) = logs.tail(usize::MAX);
        assert!(all.len() <= RING_LINES);
        let (since, _) = logs.since(next - 1);
        assert_eq!(since.len(), 1);
        let file = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(file.contains(" out line 0\n"));
        assert!(!file.contains('\r'));
    }

    #[tokio::test]
    async fn follower_wakes_on_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(AgentName::new("a").unwrap(), dir.path());
        let (_, seq) = logs.tail(0);
        let l2 = logs.clone();
        let waiter = tokio::spawn(async move {
            l2.wait_newer(seq).await;
            l2.since(seq).0
        });
        logs.push(Stream::Stderr, "hello".into());
        let got = waiter.await.unwrap();
        assert_eq!(got[0].line, "hello");
        assert_eq!(got[0].stream, Stream::Stderr);
    }

    #[tokio::test]
    async fn lines_pass_the_logs_policy_before_they_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(AgentName::new("a").unwrap(), dir.path());
        let mut spec = crate::config::PiiSpec::default();
        spec.policies.logs =
            ironcage_shared::pii::Policy::parse("email=redact, secrets=block").unwrap();
        logs.set_pii(&spec);
        let key = "AKIAZ7Q4RT2WX9YB3N5K";
        let input = format!("mail jane.doe@example.com\nkey {key} here\nplain 127.0.0.1 line\n");
        logs.clone().capture(input.as_bytes(), Stream::Stdout).await;
        let (lines, _) = logs.tail(10);
        let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(texts[0], "mail [EMAIL]");
        assert_eq!(
            texts[1],
            "[ironcaged] line withheld by the PII policy (logs): it contained aws_access_key"
        );
        assert_eq!(texts[2], "plain 127.0.0.1 line");
        let file = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(!file.contains("jane") && !file.contains(key), "{file}");
        // Allow-all: no policy, lines unchanged.
        spec.policies.logs = ironcage_shared::pii::Policy::allow_all();
        logs.set_pii(&spec);
        logs.clone()
            .capture(&b"mail jane@example.com\n"[..], Stream::Stdout)
            .await;
        assert_eq!(logs.tail(1).0[0].line, "mail jane@example.com");
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile {
            path: path.clone(),
            file: None,
            size: FILE_MAX_BYTES,
        };
        std::fs::write(&path, "old").unwrap();
        let line = LogLine {
            at_ms: 1,
            stream: Stream::Stdout,
            line: "new".into(),
        };
        f.file = Some(OpenOptions::new().append(true).open(&path).unwrap());
        for _ in 0..4 {
            f.size = FILE_MAX_BYTES;
            f.write_line(&line).unwrap();
        }
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, FILE_KEEP).exists());
        assert!(!rotated(&path, FILE_KEEP + 1).exists());
    }

    #[tokio::test]
    async fn a_secret_printed_inside_a_url_json_or_base64_is_masked_too() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(AgentName::new("a").unwrap(), dir.path());
        let password = "p@ss:w/rd\"1 x";
        logs.mask_secrets([("db_password".to_owned(), SecretString::new(password.into()))]);
        let input = [
            "dsn postgres://app:p%40ss%3Aw%2Frd%221%20x@db:5432/app",
            r#"config {"password":"p@ss:w/rd\"1 x","host":"db"}"#,
            "basic cEBzczp3L3JkIjEgeA== and url-safe cEBzczp3L3JkIjEgeA",
            "raw p@ss:w/rd\"1 x",
        ]
        .join("\n")
            + "\n";
        logs.clone().capture(input.as_bytes(), Stream::Stdout).await;
        let texts: Vec<String> = logs.tail(4).0.into_iter().map(|l| l.line).collect();
        assert_eq!(
            texts,
            [
                "dsn postgres://app:[secret db_password]@db:5432/app",
                r#"config {"password":"[secret db_password]","host":"db"}"#,
                "basic [secret db_password]== and url-safe [secret db_password]",
                "raw [secret db_password]",
            ]
        );
        let file = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(
            !file.contains("p%40ss") && !file.contains("cEBzc"),
            "{file}"
        );
    }

    #[tokio::test]
    async fn granted_secret_values_are_masked_before_any_sink() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AgentLogs::new(AgentName::new("a").unwrap(), dir.path());
        let password = "hunter2-Correct-Horse";
        let token = "hunter2";
        logs.mask_secrets([
            ("db_password".to_owned(), SecretString::new(password.into())),
            // Contained in the password: the longer one wins.
            ("short_token".to_owned(), SecretString::new(token.into())),
            // Too short to mask without hiding ordinary text.
            ("pin".to_owned(), SecretString::new("1234".into())),
        ]);
        let input = format!(
            "connecting with {password} twice {password}\ntoken={token} pin 1234\nnothing here\n"
        );
        logs.clone().capture(input.as_bytes(), Stream::Stderr).await;
        let texts: Vec<String> = logs.tail(3).0.into_iter().map(|l| l.line).collect();
        assert_eq!(
            texts,
            [
                "connecting with [secret db_password] twice [secret db_password]",
                "token=[secret short_token] pin 1234",
                "nothing here",
            ]
        );
        let file = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(!file.contains(token), "{file}");
        // Masked before the PII policy: a granted key that also matches a
        // pattern shows by its name instead of blocking the whole line.
        let mut spec = crate::config::PiiSpec::default();
        spec.policies.logs = ironcage_shared::pii::Policy::parse("secrets=block").unwrap();
        logs.set_pii(&spec);
        logs.mask_secrets([(
            "aws_key".to_owned(),
            SecretString::new("AKIAIOSFODNN7EXAMPLE".into()),
        )]);
        logs.clone()
            .capture(&b"using AKIAIOSFODNN7EXAMPLE now\n"[..], Stream::Stdout)
            .await;
        assert_eq!(logs.tail(1).0[0].line, "using [secret aws_key] now");
        // A rotated-in value is added; the old one stays masked.
        logs.mask_secrets([(
            "db_password".to_owned(),
            SecretString::new("n3w-Pa55word".into()),
        )]);
        logs.clone()
            .capture(
                &b"old hunter2-Correct-Horse new n3w-Pa55word\n"[..],
                Stream::Stdout,
            )
            .await;
        assert_eq!(
            logs.tail(1).0[0].line,
            "old [secret db_password] new [secret db_password]"
        );
        assert_eq!(
            format!("{:?}", logs.secrets.read().unwrap()),
            "SecretValues(4 masked)"
        );
    }
}
