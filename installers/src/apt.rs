//! Fetching Debian packages with `apt-get download` and unpacking them with
//! `dpkg-deb -x` into a cache directory. Nothing is installed on the host.
//!
//! Cache layout (under `<workspace>/target/vireo-image-cache/` by default):
//! - `debs/<package>_<version>_<arch>.deb`: the downloaded packages;
//! - `trees/<deb file stem>/`: each package unpacked, renamed into place only once
//!   complete, so an interrupted run never leaves a half-unpacked tree behind.
//!
//! A package already in `debs/` is never fetched again.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(
        "`{tool}` was not found; the guest image builder needs Debian's package tools \
         (apt-get install {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "`apt-get download {spec}` failed: {stderr}\n\
         Run `apt-get update` (as root) and try again; if the version is no longer in the \
         archive, bump the pinned kernel (vireo_installers::KERNEL)"
    )]
    DownloadFailed { spec: String, stderr: String },
    #[error("`{command}` failed: {stderr}")]
    CommandFailed { command: String, stderr: String },
    #[error("`apt-get download {spec}` reported success but left no {pattern} file")]
    NoDebFile { spec: String, pattern: String },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AptError + 'a {
    move |source| AptError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A package to fetch: its name and, optionally, an exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSpec<'a> {
    pub name: &'a str,
    /// `None` takes apt's candidate version.
    pub version: Option<&'a str>,
}

impl PackageSpec<'_> {
    fn apt_arg(&self) -> String {
        match self.version {
            Some(v) => format!("{}={v}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// Whether `file_name` is this package's .deb. apt names downloads
    /// `<name>_<version with ':' as %3a>_<arch>.deb`.
    fn matches(&self, file_name: &str) -> bool {
        let Some(rest) = file_name
            .strip_prefix(self.name)
            .and_then(|r| r.strip_prefix('_'))
        else {
            return false;
        };
        let Some(rest) = rest.strip_suffix(".deb") else {
            return false;
        };
        match self.version {
            Some(v) => rest
                .strip_prefix(&v.replace(':', "%3a"))
                .is_some_and(|arch| arch.starts_with('_')),
            None => true,
        }
    }
}

/// The package cache: downloaded .deb files and their unpacked trees.
#[derive(Debug, Clone)]
pub struct PackageCache {
    root: PathBuf,
}

/// A package as fetched and unpacked.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub deb: PathBuf,
    /// The unpacked file system tree (`boot/`, `lib/`, `bin/`...).
    pub tree: PathBuf,
    /// False if the .deb was already in the cache.
    pub downloaded: bool,
    /// False if the tree was already unpacked.
    pub unpacked: bool,
}

impl PackageCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PackageCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cached .deb of `spec`, if any.
    pub fn cached_deb(&self, spec: PackageSpec<'_>) -> Option<PathBuf> {
        let entries = fs::read_dir(self.root.join("debs")).ok()?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| spec.matches(n)))
            .map(|e| e.path())
            .collect();
        // Several cached versions of an unpinned package: take the newest file name,
        // which is good enough to be deterministic.
        found.sort();
        found.pop()
    }

    /// The .deb of `spec`, downloaded unless cached.
    pub fn fetch(&self, spec: PackageSpec<'_>) -> Result<(PathBuf, bool), AptError> {
        if let Some(deb) = self.cached_deb(spec) {
            return Ok((deb, false));
        }
        let debs = self.root.join("debs");
        // Download into a scratch directory and move the file into place when complete.
        let partial = self
            .root
            .join(format!("debs.partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(io_err("cannot create", &partial))?;
        fs::create_dir_all(&debs).map_err(io_err("cannot create", &debs))?;
        let spec_arg = spec.apt_arg();
        let out = Command::new("apt-get")
            .args(["download", "-q", &spec_arg])
            .current_dir(&partial)
            .output()
            .map_err(|source| AptError::MissingTool {
                tool: "apt-get",
                package: "apt",
                source,
            })?;
        if !out.status.success() {
            return Err(AptError::DownloadFailed {
                spec: spec_arg,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let deb = fs::read_dir(&partial)
            .map_err(io_err("cannot read", &partial))?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_str().is_some_and(|n| spec.matches(n)))
            .ok_or_else(|| AptError::NoDebFile {
                spec: spec_arg.clone(),
                pattern: format!("{}_*.deb", spec.name),
            })?;
        let dest = debs.join(deb.file_name());
        fs::rename(deb.path(), &dest).map_err(io_err("cannot move download to", &dest))?;
        let _ = fs::remove_dir_all(&partial);
        Ok((dest, true))
    }

    /// Fetches `spec` and unpacks it with `dpkg-deb -x`, unless already unpacked.
    /// `post_unpack` runs on the fresh tree before it is moved into place (e.g. `depmod`).
    pub fn fetch_unpacked(
        &self,
        spec: PackageSpec<'_>,
        post_unpack: impl FnOnce(&Path) -> Result<(), AptError>,
    ) -> Result<Unpacked, AptError> {
        let (deb, downloaded) = self.fetch(spec)?;
        let stem = deb
            .file_stem()
            .and_then(OsStr::to_str)
            .unwrap_or(spec.name)
            .to_owned();
        let tree = self.root.join("trees").join(&stem);
        if tree.is_dir() {
            return Ok(Unpacked {
                deb,
                tree,
                downloaded,
                unpacked: false,
            });
        }
        let partial = self
            .root
            .join("trees")
            .join(format!("{stem}.partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(io_err("cannot create", &partial))?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
            "dpkg-deb",
            "dpkg",
        )?;
        post_unpack(&partial)?;
        if let Err(e) = fs::rename(&partial, &tree) {
            // Another build unpacked the same package meanwhile: keep theirs.
            let _ = fs::remove_dir_all(&partial);
            if !tree.is_dir() {
                return Err(io_err("cannot move unpacked tree to", &tree)(e));
            }
        }
        Ok(Unpacked {
            deb,
            tree,
            downloaded,
            unpacked: true,
        })
    }
}

/// Runs a host tool, mapping "not found" to a message naming the Debian package.
pub(crate) fn run(
    cmd: &mut Command,
    tool: &'static str,
    package: &'static str,
) -> Result<Vec<u8>, AptError> {
    let out = cmd.output().map_err(|source| AptError::MissingTool {
        tool,
        package,
        source,
    })?;
    if !out.status.success() {
        return Err(AptError::CommandFailed {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_names() {
        let pinned = PackageSpec {
            name: "linux-image-6.1.0-56-amd64",
            version: Some("6.1.192-2"),
        };
        assert!(pinned.matches("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"));
        assert!(!pinned.matches("linux-image-6.1.0-56-amd64_6.1.192-3_amd64.deb"));
        assert!(!pinned.matches("linux-image-6.1.0-56-amd64-dbg_6.1.192-2_amd64.deb"));
        let epoch = PackageSpec {
            name: "busybox-static",
            version: Some("1:1.35.0-4+deb12u1+b1"),
        };
        assert!(epoch.matches("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"));
        let any = PackageSpec {
            name: "busybox-static",
            version: None,
        };
        assert!(any.matches("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"));
        assert!(!any.matches("busybox_1%3a1.35.0-4+deb12u1+b1_amd64.deb"));
        assert!(!any.matches("busybox-static_1.0_amd64.deb.partial"));
        assert_eq!(pinned.apt_arg(), "linux-image-6.1.0-56-amd64=6.1.192-2");
        assert_eq!(any.apt_arg(), "busybox-static");
    }

    #[test]
    fn missing_package_is_a_clear_error() {
        if Command::new("apt-get").arg("--version").output().is_err() {
            println!("skipped: apt-get not available");
            return;
        }
        let root = std::env::temp_dir().join(format!("vireo-apt-test-{}", std::process::id()));
        let cache = PackageCache::new(&root);
        let err = cache
            .fetch(PackageSpec {
                name: "vireo-no-such-package",
                version: None,
            })
            .unwrap_err();
        let _ = fs::remove_dir_all(&root);
        assert!(matches!(err, AptError::DownloadFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("apt-get update"));
    }
}
