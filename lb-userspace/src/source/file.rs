//! Standalone source: a file of Kubernetes objects, re-read when it changes.

use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use super::objects::{self, Objects};

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    /// A file replaced by rename has a new inode even within one mtime tick.
    inode: u64,
}

/// A file source that yields the objects each time the file changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    last: Option<Stamp>,
    poll: Duration,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>, poll: Duration) -> Self {
        Self { path: path.into(), last: None, poll }
    }

    fn stamp(&self) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(&self.path)?;
        Ok(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
    }

    /// Waits until the file differs from the last version read, then reads
    /// and parses it. Editors that replace the file (rename over it) are
    /// seen too: only the path is watched. A file that cannot be read or
    /// parsed is reported as an error; the caller keeps what it had.
    pub async fn next(&mut self) -> anyhow::Result<Objects> {
        loop {
            match self.stamp() {
                Ok(stamp) if Some(stamp) != self.last => {
                    // No await between reading and recording the stamp: if
                    // the caller drops this future, the change is not lost.
                    let text = std::fs::read_to_string(&self.path);
                    self.last = Some(stamp);
                    return Ok(objects::parse(&text?)?);
                }
                Ok(_) => {}
                Err(e) if self.last.is_some() => {
                    // Gone for a moment (being replaced): keep waiting.
                    tracing::debug!(path = %self.path.display(), error = %e, "source file unavailable");
                }
                Err(e) => {
                    // Not there yet: report, but pace the caller's retries.
                    tokio::time::sleep(self.poll).await;
                    return Err(anyhow::anyhow!("cannot read {}: {e}", self.path.display()));
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
