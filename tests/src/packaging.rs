//! Vireo's Debian packages for the tests: built once per process with
//! `installers/build-debs.sh`, checked with lintian.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use crate::repo_root;

/// Held by each packaging test for its whole run: they share `target/debian`, and
/// building the host package writes the agent package there again (it carries it), so
/// one test's build must not rewrite a file another test's lintian is reading.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds `which` (`host` or `agent`) into `target/debian` once per process and returns
/// the package's path.
pub fn build_deb(which: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, deb)) = built.iter().find(|(w, _)| w == which) {
        return deb.clone();
    }
    let out = Command::new(repo_root().join("installers/build-debs.sh"))
        .arg(which)
        .current_dir(repo_root())
        .output()
        .expect("installers/build-debs.sh runs");
    assert!(
        out.status.success(),
        "build-debs.sh {which} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build-debs.sh names the package"),
    );
    assert!(deb.is_file(), "{} was not written", deb.display());
    built.push((which.to_owned(), deb.clone()));
    deb
}

/// What lintian said about a package, by severity.
#[derive(Debug, Default)]
pub struct Lintian {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Runs lintian on `deb` (tags only, no explanations).
pub fn lintian(deb: &Path) -> Lintian {
    let out = Command::new("lintian")
        .arg(deb)
        .output()
        .expect("lintian runs (installers/setup-host.sh installs it)");
    let mut found = Lintian::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("E: ") {
            found.errors.push(line.to_owned());
        } else if line.starts_with("W: ") {
            found.warnings.push(line.to_owned());
        }
    }
    // Lintian exits 2 when it could not check the package at all; 1 is "found errors".
    assert_ne!(
        out.status.code(),
        Some(2),
        "lintian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found
}

/// A field of a package's control file.
pub fn control_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg(field)
        .output()
        .expect("dpkg-deb runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The paths a package installs (`dpkg-deb --contents`), without the leading `.`.
pub fn contents(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .expect("dpkg-deb runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}
