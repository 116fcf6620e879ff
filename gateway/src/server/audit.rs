//! The audit log: one JSON line per request, whatever its outcome. Prompts and responses
//! are stored as SHA-256 hashes, never in clear. A line is written, flushed and fsynced
//! before the response leaves, so a crash loses nothing already acknowledged. The file
//! rotates by size: `FILE` is renamed `FILE.000001`, then `FILE.000002`, ... (names sort
//! oldest first; numbering goes on from the highest found at start-up), and rotated files
//! are kept: all of them by default, or the newest `keep`, each deletion logged.
//!
//! Group commit: one writer thread takes every line waiting, writes them, fsyncs once, and
//! then releases all their requests. Requests wait without holding an async worker, and
//! under load one fsync covers many lines.
//!
//! The other sink, `stdout` (`--audit-log stdout`), is for containers: the lines go to
//! standard output (the server's own log goes to standard error), where the container
//! runtime writes them to the node and a log agent ships them. A line is written and
//! flushed into the pipe before its request is answered (a closed pipe fails the request,
//! as a full disk does); what the runtime and the agent do with it afterwards is theirs to
//! keep: the guarantee ends at the pipe.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

type Ack = tokio::sync::oneshot::Sender<std::io::Result<()>>;

pub struct AuditLog {
    lines: mpsc::Sender<(Vec<u8>, Ack)>,
}

pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

struct Writer {
    path: PathBuf,
    max_bytes: u64,
    fsync: bool,
    file: Option<(File, u64)>,
    /// Rotated files to keep (0: all).
    keep: usize,
    /// Numbers of the rotated files on disk, oldest first.
    rotated: Vec<u64>,
}

/// `FILE.000042` for rotation number 42.
fn rotated_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n:06}"));
    PathBuf::from(name)
}

/// The numbers of the rotated files beside `path`, oldest first.
fn rotated_numbers(path: &Path) -> std::io::Result<Vec<u64>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut numbers: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let digits = name.strip_prefix(base)?.strip_prefix('.')?;
            (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())
                .flatten()
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

impl Writer {
    /// Renames the full file to the next number and drops the oldest beyond `keep`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.rotated.last().map_or(1, |n| n + 1);
        std::fs::rename(&self.path, rotated_path(&self.path, next))?;
        self.rotated.push(next);
        while self.keep > 0 && self.rotated.len() > self.keep {
            let old = rotated_path(&self.path, self.rotated.remove(0));
            match std::fs::remove_file(&old) {
                Ok(()) => {
                    tracing::info!(file = %old.display(), keep = self.keep, "audit log: removed the oldest rotated file")
                }
                Err(e) => {
                    tracing::warn!(file = %old.display(), error = %e, "audit log: cannot remove an old rotated file")
                }
            }
        }
        Ok(())
    }

    /// Writes a batch of lines and syncs them once.
    fn write_batch(&mut self, lines: &[Vec<u8>]) -> std::io::Result<()> {
        // The file may have been removed or rotated underneath: reopen by path.
        let gone = match &self.file {
            Some((f, _)) => {
                f.metadata().map(|m| m.nlink() == 0).unwrap_or(true) || !self.path.exists()
            }
            None => true,
        };
        if gone {
            self.file = Some(open_append(&self.path)?);
        }
        for line in lines {
            let (file, len) = self.file.as_mut().expect("opened above");
            if *len > 0 && *len + line.len() as u64 > self.max_bytes {
                if self.fsync {
                    file.sync_data()?;
                }
                self.rotate()?;
                self.file = Some(open_append(&self.path)?);
            }
            let (file, len) = self.file.as_mut().expect("opened above");
            file.write_all(line)?;
            *len += line.len() as u64;
        }
        if self.fsync {
            self.file.as_ref().expect("opened above").0.sync_data()?;
        }
        Ok(())
    }
}

impl AuditLog {
    /// Opens (or creates) the log; `keep`: rotated files to keep (0: all).
    pub fn open(path: PathBuf, max_bytes: u64, fsync: bool, keep: usize) -> std::io::Result<Self> {
        let file = Some(open_append(&path)?);
        let rotated = rotated_numbers(&path)?;
        let mut writer = Writer {
            path,
            max_bytes,
            fsync,
            file,
            keep,
            rotated,
        };
        Self::with_writer(move |lines| writer.write_batch(lines))
    }

    /// Lines on standard output, each batch written and flushed before its requests go on.
    pub fn stdout() -> std::io::Result<Self> {
        Self::with_writer(|lines| {
            let mut out = std::io::stdout().lock();
            for line in lines {
                out.write_all(line)?;
            }
            out.flush()
        })
    }

    fn with_writer(
        mut write_batch: impl FnMut(&[Vec<u8>]) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Ack)>();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (lines, acks): (Vec<Vec<u8>>, Vec<Ack>) =
                        std::iter::once(first).chain(rx.try_iter()).unzip();
                    let result = write_batch(&lines);
                    for ack in acks {
                        // io::Error is not Clone: each waiter gets its kind and message.
                        let _ = ack.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Self { lines: tx })
    }

    /// Appends one record and waits until it is on disk. Errors are returned (and counted
    /// by the caller): an audit line that cannot be written must not be silently dropped.
    pub async fn write(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let (ack, done) = tokio::sync::oneshot::channel();
        self.lines
            .send((line, ack))
            .map_err(|_| std::io::Error::other("the audit writer has stopped"))?;
        done.await
            .map_err(|_| std::io::Error::other("the audit writer has stopped"))?
    }
}

/// SHA-256 of a conversation (role and content of each message), for the audit log.
pub fn conversation_sha256(messages: &[safegate_engine::ChatMessage]) -> String {
    let text: String = messages
        .iter()
        .map(|m| format!("{}\n{}\n", m.role, m.content))
        .collect();
    sha256_hex(&text)
}

/// One audit line: every field any endpoint records, in one type. Texts appear only as
/// SHA-256 hashes. Fields a request did not reach are left out (`key_id` is always there).
#[derive(Debug, Default, serde::Serialize)]
pub struct AuditRecord {
    pub time_ms: u64,
    pub request_id: String,
    pub endpoint: &'static str,
    pub latency_ms: f64,
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How the request ended: the `outcome` label of `safegate_requests_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// The error code (or type) of a failed request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<StageRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<StageRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<FindingRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<String>,
    /// The tools the model's reply called (names only; arguments are never logged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<String>>,
    /// Bytes of the model's reply the client was sent (the checks' own count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<safegate_engine::Usage>,
    /// `/v1/guard/classify`: the verdict; with `/v1/shield/scan`, the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<safegate_policies::Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<safegate_policies::Decision>,
}

/// What one stage of a chat decided.
#[derive(Debug, serde::Serialize)]
pub struct StageRecord {
    pub verdict: Option<safegate_policies::Verdict>,
    pub decision: safegate_policies::Decision,
}

/// A shield finding, without its message.
#[derive(Debug, serde::Serialize)]
pub struct FindingRecord {
    pub rule: String,
    pub cwe: String,
    pub severity: safegate_shield::Severity,
    pub line: usize,
}

impl FindingRecord {
    pub fn list(findings: &[safegate_shield::Finding]) -> Vec<FindingRecord> {
        findings
            .iter()
            .map(|f| FindingRecord {
                rule: f.rule.clone(),
                cwe: f.cwe.clone(),
                severity: f.severity,
                line: f.line,
            })
            .collect()
    }
}
