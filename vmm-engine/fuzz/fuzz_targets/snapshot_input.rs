//! A snapshot file is read from disk and a migration stream from a socket: both are
//! untrusted. The first input byte picks which parser gets the rest: the snapshot file
//! reader (header, checksums, lengths, the machine state's JSON, then the fit check
//! against a VM) or a destination's migration receiver (pages into a small guest
//! memory, then the state). Either refuses with an error or accepts; nothing panics,
//! and no page lands outside guest memory.
#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_vmm::boot::BootSource;
use vireo_vmm::config::VmConfig;
use vireo_vmm::snapshot::{file, migrate};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The source's bytes; what the destination answers goes nowhere.
struct Replay(Cursor<Vec<u8>>);

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl migrate::Stream for Replay {
    fn set_timeout(&self, _timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

fn snapshot_path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("vireo-fuzz-{}.snap", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let config = VmConfig::new(BootSource {
        kernel: "/nonexistent".into(),
        initrd: None,
        cmdline: String::new(),
    });
    if which & 1 == 0 {
        std::fs::write(snapshot_path(), rest).unwrap();
        if let Ok(snapshot) = file::read(snapshot_path()) {
            let _ = snapshot.state.check_fits(&config);
        }
    } else {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut stream = Replay(Cursor::new(rest.to_vec()));
        if let Ok(state) = migrate::receive(&mut stream, &mem) {
            let _ = state.check_fits(&config);
        }
    }
});
