//! The audit log: one JSON line per request, whatever its outcome. Prompts and responses
//! are stored as SHA-256 hashes, never in clear. Each line is written, flushed and fsynced
//! before the response leaves, so a crash loses nothing already acknowledged; the file
//! rotates by size (`FILE` -> `FILE.1`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    fsync: bool,
    file: Mutex<Option<(File, u64)>>,
}

pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditLog {
    pub fn open(path: PathBuf, max_bytes: u64, fsync: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes,
            fsync,
            file: Mutex::new(Some((file, len))),
        })
    }

    /// Appends one record. Errors are returned (and counted by the caller): an audit line
    /// that cannot be written must not be silently dropped.
    pub fn write(&self, record: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // The file may have been removed or rotated underneath: reopen by path.
        let reopen = match guard.as_ref() {
            Some((f, _)) => {
                f.metadata().map(|m| m.nlink() == 0).unwrap_or(true) || !self.path.exists()
            }
            None => true,
        };
        if reopen {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let len = f.metadata()?.len();
            *guard = Some((f, len));
        }
        let (file, len) = guard.as_mut().expect("opened above");
        if *len > 0 && *len + line.len() as u64 > self.max_bytes {
            let rotated = self.path.with_extension(format!(
                "{}1",
                self.path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(|e| format!("{e}."))
                    .unwrap_or_default()
            ));
            std::fs::rename(&self.path, rotated)?;
            *file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            *len = 0;
        }
        file.write_all(&line)?;
        if self.fsync {
            file.sync_data()?;
        }
        *len += line.len() as u64;
        Ok(())
    }
}

use std::os::unix::fs::MetadataExt;
