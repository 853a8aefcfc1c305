//! Where Vireo keeps things (DESIGN.md "On disk"): VM directories under the XDG data dir
//! (`$XDG_DATA_HOME/vireo/vms/<id>/`), sockets and locks under the XDG runtime dir
//! (`$XDG_RUNTIME_DIR/vireo/<id>/`, mode 0700).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("neither XDG_DATA_HOME nor HOME is set: cannot tell where to keep VMs")]
    NoDataHome,
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} belongs to another user or others can enter it: remove it and try again")]
    Unsafe { path: PathBuf },
}

/// The two roots, resolved once from the environment.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `$XDG_DATA_HOME/vireo` (default `~/.local/share/vireo`).
    pub data: PathBuf,
    /// `$XDG_RUNTIME_DIR/vireo` (default `/tmp/vireo-<uid>`).
    pub runtime: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Result<Dirs, Error> {
        let data_home = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME").ok_or(Error::NoDataHome)?)
                .join(".local/share"),
        };
        let runtime = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d).join("vireo"),
            None => std::env::temp_dir().join(format!("vireo-{}", nix::unistd::getuid())),
        };
        Ok(Dirs {
            data: data_home.join("vireo"),
            runtime,
        })
    }

    /// The library: one directory per VM.
    pub fn vms(&self) -> PathBuf {
        self.data.join("vms")
    }

    /// Guest images the app built (the demo Linux).
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }

    /// Disks kept when their VM was deleted without them.
    pub fn kept_disks(&self) -> PathBuf {
        self.data.join("kept-disks")
    }

    /// `<runtime>/<id>`, created 0700 (and its parent) if missing.
    pub fn vm_runtime(&self, id: &str) -> Result<PathBuf, Error> {
        private_dir(&self.runtime)?;
        let dir = self.runtime.join(id);
        private_dir(&dir)?;
        Ok(dir)
    }
}

/// Creates `dir` with mode 0700, or checks that the existing one is ours and closed to
/// others: sockets in it accept whoever can reach them.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    let create = |source| Error::Create {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(create)?;
    let meta = std::fs::metadata(dir).map_err(create)?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::Unsafe {
            path: dir.to_owned(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(create)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700_even_if_they_existed_open() {
        let base = std::env::temp_dir().join(format!("vireo-paths-{}", std::process::id()));
        let dir = base.join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
