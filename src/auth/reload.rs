//! Files that are re-read when they change: the TLS certificate and key,
//! and the principals file.
//!
//! A background task reads the files every [`POLL_EVERY`] and compares
//! their bytes with the last read. Polling the contents, rather than
//! watching inotify events, follows Kubernetes' Secret mounts, whose files
//! are symlinks swapped atomically to a new directory (an inotify watch on
//! the old file sees nothing), and costs two or three small reads a second.
//! A version that cannot be used is logged once, and the last good one is
//! kept until the files change again.

use std::{
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock, Weak},
    time::Duration,
};

use tracing::{info, warn};

/// How often the files are read.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// A value that a reload replaces while readers hold the old one.
#[derive(Debug)]
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self {
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The value now: a clone of an `Arc`, under a read lock held for
    /// that clone only.
    pub fn get(&self) -> Arc<T> {
        // A writer that panicked left a whole value behind: the lock only
        // guards a pointer swap.
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, value: T) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

/// What one read of the files found: each file's bytes, or why it could
/// not be read (compared as a kind, so the same failure is logged once).
type Contents = Vec<Result<Vec<u8>, std::io::ErrorKind>>;

/// Keeps `current` up to date with `files`, starting from `initial` (the
/// contents `current` was made from), until `current` is dropped.
/// `build` turns the files' contents into the new value, or says why it
/// cannot; `what` names them in the log ("TLS certificate").
pub fn follow<T, F>(
    what: &'static str,
    files: Vec<PathBuf>,
    initial: Vec<Vec<u8>>,
    current: &Arc<Current<T>>,
    build: F,
) where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + 'static,
{
    let current: Weak<Current<T>> = Arc::downgrade(current);
    let mut last: Contents = initial.into_iter().map(Ok).collect();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(current) = current.upgrade() else {
                return;
            };
            let mut contents = Contents::with_capacity(files.len());
            for file in &files {
                contents.push(tokio::fs::read(file).await.map_err(|error| error.kind()));
            }
            if contents == last {
                continue;
            }
            let files_text = files
                .iter()
                .map(|file| file.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match read_all(&files, &contents).and_then(|bytes| build(&bytes)) {
                Ok(value) => {
                    current.set(value);
                    info!(files = %files_text, "{what} reloaded");
                }
                Err(reason) => warn!(
                    files = %files_text,
                    reason = %reason,
                    "{what} changed but cannot be used; keeping the last good one"
                ),
            }
            last = contents;
        }
    });
}

fn read_all(files: &[PathBuf], contents: &Contents) -> Result<Vec<Vec<u8>>, String> {
    files
        .iter()
        .zip(contents)
        .map(|(file, content)| match content {
            Ok(bytes) => Ok(bytes.clone()),
            Err(kind) => Err(format!("cannot read {}: {kind}", file.display())),
        })
        .collect()
}
