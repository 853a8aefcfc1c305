//! The host's shared-folder request handler under a hostile guest: arbitrary sequences
//! of file-system operations (postcard-encoded `FsOp`s, as they arrive in a request) on
//! a fresh share each run, next to a folder outside it and a symlink leading there.
//! Nothing may panic, and nothing outside the share may change, whatever the sequence.

#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_guest_agent::host::share::{ShareConfig, ShareServer};
use vireo_guest_agent::protocol::fs::FsOp;

/// Operations per run: enough for lookup → open → write → rename chains.
const MAX_OPS: usize = 32;

struct Dirs {
    share: PathBuf,
    outside: PathBuf,
}

fn dirs() -> &'static Dirs {
    static DIRS: OnceLock<Dirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("vireo-share-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host secret").unwrap();
        std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o644)).unwrap();
        Dirs {
            share: base.join("share"),
            outside,
        }
    })
}

/// A share with a file, a directory and symlinks leading out (absolute and relative).
fn fresh_share(share: &Path, outside: &Path) {
    let _ = std::fs::remove_dir_all(share);
    std::fs::create_dir_all(share.join("d")).unwrap();
    std::fs::write(share.join("f"), "file").unwrap();
    std::os::unix::fs::symlink(outside, share.join("a")).unwrap();
    std::os::unix::fs::symlink("../outside", share.join("r")).unwrap();
}

fn outside_is_untouched(outside: &Path) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "something appeared outside the share");
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"host secret"
    );
    let meta = std::fs::metadata(outside.join("secret")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
}

fuzz_target!(|data: &[u8]| {
    let dirs = dirs();
    fresh_share(&dirs.share, &dirs.outside);
    let config = ShareConfig {
        name: "fuzz".into(),
        path: dirs.share.clone(),
        read_only: data.first().is_some_and(|b| b & 1 == 1),
    };
    let server = ShareServer::open(1, config).unwrap();
    let mut rest = data.get(1..).unwrap_or_default();
    for _ in 0..MAX_OPS {
        let Ok((op, tail)) = postcard::take_from_bytes::<FsOp>(rest) else {
            break;
        };
        rest = tail;
        let _ = server.handle(op);
    }
    outside_is_untouched(&dirs.outside);
});
