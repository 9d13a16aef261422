//! Test doubles for shardline's ports (hand-written, in memory), fault injection, and
//! fixture loading. A dev-dependency only: never linked into a deployed function.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use shardline_core::StoreError;
use shardline_core::ports::{Quarantine, QuarantineEntry};

/// The repository root (where `events/` and `template.yaml` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Reads a file under `events/`, panicking with its path when it is missing.
pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = repo_root().join("events").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A fault to inject: fail the next `n` calls with a transient error.
#[derive(Debug, Default)]
pub struct Faults {
    transient: AtomicU32,
}

impl Faults {
    /// Makes the next `n` calls fail with a transient error.
    pub fn fail_next(&self, n: u32) {
        self.transient.store(n, Ordering::SeqCst);
    }

    /// Consumes one injected failure, if any.
    pub fn check(&self, what: &str) -> Result<(), StoreError> {
        let left = self.transient.load(Ordering::SeqCst);
        if left > 0 {
            self.transient.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::transient(format!("injected fault in {what}")));
        }
        Ok(())
    }
}

/// An in-memory quarantine.
#[derive(Debug, Default)]
pub struct MemQuarantine {
    entries: Mutex<Vec<QuarantineEntry>>,
    /// Injected faults.
    pub faults: Faults,
}

impl MemQuarantine {
    /// Everything quarantined so far.
    pub fn entries(&self) -> Vec<QuarantineEntry> {
        self.entries.lock().expect("quarantine lock").clone()
    }
}

impl Quarantine for MemQuarantine {
    async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        self.faults.check("quarantine")?;
        self.entries
            .lock()
            .expect("quarantine lock")
            .extend_from_slice(entries);
        Ok(())
    }
}
