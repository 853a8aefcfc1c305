//! A fresh directory for one test, named after it and this process, removed when dropped.

use std::path::PathBuf;

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/vireo-<name>-<pid>-<n>`, empty. The count keeps two directories made
    /// one after another under the same name apart: a VM stopped in the first may
    /// still be tidying its runtime files while the second starts (the app bench's
    /// idle rows lost an engine's pid file that way).
    pub fn new(name: &str) -> TempDir {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vireo-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
