//! Files and folders dropped on a VM window, copied into its drop folder (the share the
//! guest mounts as `vireo`).
//!
//! Nothing already there is overwritten: a name in use becomes `name (1).ext`, `name
//! (2).ext`, ..., and each copy is created exclusively (`create_new`, `create_dir`), so a
//! file appearing meanwhile is not overwritten either. Folders are copied whole with
//! their structure. A dropped path that is a symlink is followed (the user chose it);
//! symlinks *inside* a dropped folder are recreated as symlinks, never followed, so a
//! link to `/` does not copy the host. Other special files (sockets, FIFOs, devices) are
//! skipped and counted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bytes read and written per step: progress is reported after each.
const CHUNK: usize = 1 << 20;
/// Highest `(n)` tried before giving up on a name.
const MAX_SUFFIX: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} has no file name")]
    NoName(PathBuf),
    #[error("no free name for {0} in the drop folder")]
    NoFreeName(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How far a drop has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
}

/// What a finished drop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Where each dropped path went, in order.
    pub placed: Vec<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    /// Sockets, FIFOs and devices left out.
    pub skipped: u64,
}

/// The name `name` takes in `dir`: itself if free, else `stem (n).ext` with the lowest
/// free `n` (`.bashrc` → `.bashrc (1)`, `a.tar.gz` → `a.tar (1).gz`).
pub fn free_name(dir: &Path, name: &str) -> Option<PathBuf> {
    (0..=MAX_SUFFIX)
        .map(|n| dir.join(numbered(name, n)))
        .find(|p| p.symlink_metadata().is_err())
}

/// `name` with ` (n)` before its extension; `n == 0` is the name itself.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    // A leading dot starts a hidden name, not an extension.
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => format!("{} ({n}){}", &name[..i], &name[i..]),
        None => format!("{name} ({n})"),
    }
}

/// Sizes to copy: (bytes, files) beneath `path`, symlinks not followed below the top.
pub fn measure(path: &Path) -> (u64, u64) {
    let Ok(meta) = fs::metadata(path) else {
        return (0, 0);
    };
    if meta.is_file() {
        return (meta.len(), 1);
    }
    if !meta.is_dir() {
        return (0, 0);
    }
    let mut total = (0, 0);
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total.0 += meta.len();
                total.1 += 1;
            }
        }
    }
    total
}

/// Copies each of `sources` into `dest` (created if missing), calling `progress` as
/// bytes move. Stops at the first error; what was copied before it stays.
pub fn copy_into(
    dest: &Path,
    sources: &[PathBuf],
    mut progress: impl FnMut(Progress),
) -> Result<Copied, CopyError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut state = Progress::default();
    for source in sources {
        let (bytes, files) = measure(source);
        state.bytes_total += bytes;
        state.files_total += files;
    }
    progress(state);
    let mut copier = Copier {
        progress: &mut progress,
        state,
        copied: Copied::default(),
    };
    for source in sources {
        let placed = copier.top(dest, source)?;
        copier.copied.placed.push(placed);
    }
    copier.copied.files = copier.state.files_done;
    copier.copied.bytes = copier.state.bytes_done;
    Ok(copier.copied)
}

struct Copier<'p, P: FnMut(Progress)> {
    progress: &'p mut P,
    state: Progress,
    copied: Copied,
}

impl<P: FnMut(Progress)> Copier<'_, P> {
    /// A dropped path: followed if a symlink, placed under a free name.
    fn top(&mut self, dest: &Path, source: &Path) -> Result<PathBuf, CopyError> {
        // A name that is not UTF-8 is copied under its lossy form.
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| CopyError::NoName(source.to_owned()))?;
        let meta = fs::metadata(source).map_err(io_err(source))?;
        for n in 0..=MAX_SUFFIX {
            let target = dest.join(numbered(&name, n));
            let made = if meta.is_dir() {
                self.dir(source, &target, &meta)
            } else if meta.is_file() {
                self.file(source, &target, &meta)
            } else {
                self.copied.skipped += 1;
                return Ok(target);
            };
            match made {
                Ok(result) => return result.map(|()| target),
                Err(Taken) => continue,
            }
        }
        Err(CopyError::NoFreeName(source.to_owned()))
    }

    /// Copies a directory to `target`, which must not exist yet (else `Taken`).
    fn dir(&mut self, source: &Path, target: &Path, meta: &fs::Metadata) -> Made {
        match fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(Taken),
            Err(e) => return Ok(Err(io_err(target)(e))),
        }
        Ok(self.contents(source, target, meta))
    }

    fn contents(
        &mut self,
        source: &Path,
        target: &Path,
        meta: &fs::Metadata,
    ) -> Result<(), CopyError> {
        let entries = fs::read_dir(source).map_err(io_err(source))?;
        for entry in entries {
            let entry = entry.map_err(io_err(source))?;
            let from = entry.path();
            let to = target.join(entry.file_name());
            let meta = from.symlink_metadata().map_err(io_err(&from))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let link = fs::read_link(&from).map_err(io_err(&from))?;
                std::os::unix::fs::symlink(link, &to).map_err(io_err(&to))?;
            } else if kind.is_dir() {
                fs::create_dir(&to).map_err(io_err(&to))?;
                self.contents(&from, &to, &meta)?;
            } else if kind.is_file() {
                match self.file(&from, &to, &meta) {
                    Ok(result) => result?,
                    // A fresh directory of ours holds nothing but what we put there.
                    Err(Taken) => {
                        return Err(io_err(&to)(io::ErrorKind::AlreadyExists.into()));
                    }
                }
            } else {
                self.copied.skipped += 1;
            }
        }
        // Last, so a read-only folder can still be filled.
        fs::set_permissions(target, meta.permissions()).map_err(io_err(target))
    }

    /// Copies a file to `target`, created exclusively (else `Taken`).
    fn file(&mut self, source: &Path, target: &Path, meta: &fs::Metadata) -> Made {
        let mut input = match File::open(source) {
            Ok(f) => f,
            Err(e) => return Ok(Err(io_err(source)(e))),
        };
        let mut output = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.permissions().mode() | 0o200)
            .open(target)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(Taken),
            Err(e) => return Ok(Err(io_err(target)(e))),
        };
        Ok(self
            .pump(&mut input, &mut output, source, target)
            .and_then(|()| {
                self.state.files_done += 1;
                (self.progress)(self.state);
                fs::set_permissions(target, meta.permissions()).map_err(io_err(target))
            }))
    }

    fn pump(
        &mut self,
        input: &mut File,
        output: &mut File,
        source: &Path,
        target: &Path,
    ) -> Result<(), CopyError> {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(source)(e)),
            };
            output.write_all(&buf[..n]).map_err(io_err(target))?;
            self.state.bytes_done += n as u64;
            (self.progress)(self.state);
        }
    }
}

/// The name was in use: try the next one.
struct Taken;

/// `Err(Taken)`, or the outcome of the copy under that name.
type Made = Result<Result<(), CopyError>, Taken>;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-drop-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_in_use_get_a_number_before_the_extension() {
        assert_eq!(numbered("report.pdf", 0), "report.pdf");
        assert_eq!(numbered("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
        assert_eq!(numbered("Photos", 3), "Photos (3)");
        let dir = temp("names");
        assert_eq!(free_name(&dir, "x.txt"), Some(dir.join("x.txt")));
        fs::write(dir.join("x.txt"), "a").unwrap();
        fs::write(dir.join("x (1).txt"), "b").unwrap();
        assert_eq!(free_name(&dir, "x.txt"), Some(dir.join("x (2).txt")));
        // A dangling symlink holds its name too.
        std::os::unix::fs::symlink("/nonexistent", dir.join("y")).unwrap();
        assert_eq!(free_name(&dir, "y"), Some(dir.join("y (1)")));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drops_never_overwrite_and_keep_folders_whole() {
        let root = temp("copy");
        let (src, dest) = (root.join("src"), root.join("shared"));
        fs::create_dir_all(src.join("tree/sub/deeper")).unwrap();
        fs::write(src.join("notes.txt"), "new notes").unwrap();
        fs::write(src.join("tree/a.bin"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        fs::write(src.join("tree/sub/deeper/b.txt"), "deep").unwrap();
        fs::set_permissions(
            src.join("tree/sub/deeper/b.txt"),
            fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        // Inside the folder: a link out of it, copied as a link, not followed.
        std::os::unix::fs::symlink("/etc", src.join("tree/etc-link")).unwrap();
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("notes.txt"), "old notes").unwrap();
        fs::create_dir(dest.join("tree")).unwrap();

        let mut seen = Vec::new();
        let copied = copy_into(&dest, &[src.join("notes.txt"), src.join("tree")], |p| {
            seen.push(p)
        })
        .unwrap();
        assert_eq!(
            copied.placed,
            vec![dest.join("notes (1).txt"), dest.join("tree (1)")]
        );
        assert_eq!(
            fs::read_to_string(dest.join("notes.txt")).unwrap(),
            "old notes"
        );
        assert_eq!(
            fs::read_to_string(dest.join("notes (1).txt")).unwrap(),
            "new notes"
        );
        assert_eq!(fs::read_dir(dest.join("tree")).unwrap().count(), 0);
        assert_eq!(
            fs::read(dest.join("tree (1)/a.bin")).unwrap(),
            vec![7u8; 3 * CHUNK + 5]
        );
        let deep = dest.join("tree (1)/sub/deeper/b.txt");
        assert_eq!(fs::read_to_string(&deep).unwrap(), "deep");
        assert_eq!(
            fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
            0o751
        );
        let link = dest.join("tree (1)/etc-link");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("/etc"));
        assert_eq!((copied.files, copied.skipped), (3, 0));
        let total = 9 + 3 * CHUNK as u64 + 5 + 4;
        assert_eq!(copied.bytes, total);
        // Progress: first the totals, then monotonic, ending complete; a large file
        // reports several times on its way.
        let last = *seen.last().unwrap();
        assert_eq!(seen[0].bytes_done, 0);
        assert_eq!((last.bytes_done, last.bytes_total), (total, total));
        assert_eq!((last.files_done, last.files_total), (3, 3));
        assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
        assert!(seen.len() >= 6, "{} reports", seen.len());

        // Dropping the same again takes the next numbers.
        let again = copy_into(&dest, &[src.join("notes.txt")], |_| {}).unwrap();
        assert_eq!(again.placed, vec![dest.join("notes (2).txt")]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_dropped_symlink_is_followed_and_specials_are_skipped() {
        let root = temp("special");
        let dest = root.join("shared");
        fs::write(root.join("real.txt"), "real").unwrap();
        std::os::unix::fs::symlink(root.join("real.txt"), root.join("link.txt")).unwrap();
        fs::create_dir(root.join("dir")).unwrap();
        nix::unistd::mkfifo(&root.join("dir/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let copied = copy_into(&dest, &[root.join("link.txt"), root.join("dir")], |_| {}).unwrap();
        let placed = dest.join("link.txt");
        assert!(placed.symlink_metadata().unwrap().is_file());
        assert_eq!(fs::read_to_string(placed).unwrap(), "real");
        assert_eq!(copied.skipped, 1);
        assert!(!dest.join("dir/fifo").exists());
        let missing = copy_into(&dest, &[root.join("gone")], |_| {}).unwrap_err();
        assert!(missing.to_string().contains("gone"), "{missing}");
        fs::remove_dir_all(root).unwrap();
    }
}
