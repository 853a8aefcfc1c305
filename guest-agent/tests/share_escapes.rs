//! The real host side (`vireo-agent host share`) against a hostile guest: this test plays
//! the agent and sends the requests a compromised guest could, straight on the wire.
//! Nothing outside the shared root may be reached, read, created, renamed to, or changed,
//! and a read-only share refuses every write whatever the guest's kernel would have done.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vireo_guest_agent::protocol::fs::{
    open_flags, FsKind, FsMountResult, FsOp, FsReply, FsRequest, FsSetAttr, FS_ROOT,
};
use vireo_guest_agent::protocol::{
    decode_payload, encode_message, Capabilities, FrameDecoder, FsShares, FsSharesReply, Hello,
    Message, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};

/// A fake agent holding the host side's connection.
struct Guest {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u32,
    /// Share name → id, from the host's announcement.
    shares: Vec<(String, u32)>,
}

impl Guest {
    fn accept(listener: &UnixListener) -> Self {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut guest = Self {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
            shares: Vec::new(),
        };
        let (id, hello) = guest.next_message();
        assert!(matches!(hello, Message::Hello(_)));
        let ours = Message::Hello(Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            capabilities: Capabilities::SHARED_FOLDERS,
            software: "hostile guest".into(),
        });
        guest.send(id, &ours);
        let (id, shares) = guest.next_message();
        let Message::FsShares(shares) = shares else {
            panic!("expected the share list, got {shares:?}");
        };
        guest.mounted(id, shares);
        guest
    }

    /// Answers an announcement as an agent that mounted everything.
    fn mounted(&mut self, id: u32, shares: FsShares) {
        let results = shares
            .shares
            .iter()
            .map(|s| FsMountResult {
                name: s.name.clone(),
                result: Ok(format!("/nowhere/{}", s.name)),
            })
            .collect();
        self.shares = shares
            .shares
            .iter()
            .map(|s| (s.name.clone(), s.id))
            .collect();
        self.send(id, &Message::FsSharesReply(FsSharesReply { results }));
    }

    fn send(&mut self, id: u32, message: &Message) {
        self.stream
            .write_all(&encode_message(id, message).unwrap())
            .unwrap();
    }

    fn next_message(&mut self) -> (u32, Message) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if let Some(payload) = self.decoder.next_frame().unwrap() {
                let env = decode_payload(&payload).unwrap();
                return (env.id, env.message);
            }
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "the host side closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    fn share(&self, name: &str) -> u32 {
        self.shares.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn call(&mut self, share: &str, op: FsOp) -> FsReply {
        let share = self.share(share);
        let id = self.next_id;
        self.next_id += 1;
        self.send(id, &Message::FsRequest(FsRequest { share, op }));
        loop {
            match self.next_message() {
                (got, Message::FsReply(reply)) if got == id => return reply,
                // Change notifications for what we did: not answers.
                (_, Message::FsInvalidate(_)) => {}
                (other, Message::FsShares(shares)) => self.mounted(other, shares),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn errno(&mut self, share: &str, op: FsOp) -> i32 {
        match self.call(share, op.clone()) {
            FsReply::Errno(e) => e,
            other => panic!("{op:?} was not refused: {other:?}"),
        }
    }

    fn lookup(&mut self, share: &str, parent: u64, name: &str) -> FsReply {
        self.call(
            share,
            FsOp::Lookup {
                parent,
                name: name.into(),
            },
        )
    }

    fn node(&mut self, share: &str, parent: u64, name: &str) -> u64 {
        match self.lookup(share, parent, name) {
            FsReply::Entry(a) => a.node,
            other => panic!("lookup {name}: {other:?}"),
        }
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn escape_attempts_and_writes_to_a_read_only_share_are_refused() {
    let scratch = Scratch::new("escape");
    let share = scratch.path("share");
    let outside = scratch.path("outside");
    let ro = scratch.path("ro");
    for d in [&share, &outside, &ro] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    std::fs::write(share.join("file"), "inside").unwrap();
    std::fs::write(ro.join("keep"), "read-only").unwrap();
    std::fs::create_dir(share.join("dir")).unwrap();
    use std::os::unix::fs::symlink;
    symlink(&outside, share.join("abs")).unwrap();
    symlink("../outside", share.join("rel")).unwrap();
    symlink("dir/../../outside/secret", share.join("deep")).unwrap();
    symlink("/proc/self/root", share.join("proc")).unwrap();

    let socket = scratch.path("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let _host = HostProc::start(
        &socket,
        &[
            format!("s={}", share.display()),
            format!("ro={},ro", ro.display()),
        ],
    );
    let mut g = Guest::accept(&listener);
    let (enoent, einval, enotdir, eloop, erofs) = (
        libc::ENOENT,
        libc::EINVAL,
        libc::ENOTDIR,
        libc::ELOOP,
        libc::EROFS,
    );

    // Names that are paths: `..`, absolute, with slashes, empty, NUL.
    for name in [
        "..",
        ".",
        "../outside",
        "/etc/passwd",
        "dir/../../outside",
        "",
        "a\0b",
    ] {
        let op = FsOp::Lookup {
            parent: FS_ROOT,
            name: name.into(),
        };
        assert_eq!(g.errno("s", op), einval, "lookup {name:?}");
    }
    // Symlinks leading out (absolute, relative, through `..`, magic): the host never
    // follows one; they are leaves the guest resolves in its own tree.
    for link in ["abs", "rel", "deep", "proc"] {
        let FsReply::Entry(attr) = g.lookup("s", FS_ROOT, link) else {
            panic!("lookup {link}");
        };
        assert_eq!(attr.kind, FsKind::Symlink);
        let node = attr.node;
        let lookup = FsOp::Lookup {
            parent: node,
            name: "secret".into(),
        };
        assert_eq!(g.errno("s", lookup), enotdir, "{link}/secret");
        assert_eq!(
            g.errno("s", FsOp::OpenDir { node }),
            enotdir,
            "opendir {link}"
        );
        let open = FsOp::Open {
            node,
            flags: open_flags::READ,
        };
        assert_eq!(g.errno("s", open), eloop, "open {link}");
        let create = FsOp::Create {
            parent: node,
            name: "planted".into(),
            mode: 0o644,
            flags: open_flags::WRITE,
        };
        assert_eq!(g.errno("s", create), enotdir, "create in {link}");
        let chmod = FsOp::SetAttr {
            node,
            handle: None,
            set: FsSetAttr {
                mode: Some(0o777),
                ..FsSetAttr::default()
            },
        };
        assert_eq!(g.errno("s", chmod), libc::EPERM, "chmod {link}");
        // Creating over the link does not write through it.
        let create = FsOp::Create {
            parent: FS_ROOT,
            name: link.into(),
            mode: 0o644,
            flags: open_flags::WRITE | open_flags::TRUNCATE,
        };
        assert_eq!(g.errno("s", create), eloop, "create over {link}");
    }
    // Rename out of the root or onto a forged directory.
    let file = g.node("s", FS_ROOT, "file");
    let rename = |name: &str, new_parent: u64, new_name: &str| FsOp::Rename {
        parent: FS_ROOT,
        name: name.into(),
        new_parent,
        new_name: new_name.into(),
        flags: 0,
    };
    assert_eq!(g.errno("s", rename("file", FS_ROOT, "../moved")), einval);
    assert_eq!(g.errno("s", rename("file", FS_ROOT, "/tmp/moved")), einval);
    assert_eq!(g.errno("s", rename("file", 0xdead, "moved")), enoent);
    assert_eq!(g.errno("s", rename("file", file, "moved")), enotdir);
    // Into a symlinked directory: the link is no directory to the host.
    let abs = g.node("s", FS_ROOT, "abs");
    assert_eq!(g.errno("s", rename("file", abs, "moved")), enotdir);
    // A symlink the guest makes is stored, never followed by the host.
    let planted = FsOp::Symlink {
        parent: FS_ROOT,
        name: "planted".into(),
        target: "/etc/shadow".into(),
    };
    let FsReply::Entry(link) = g.call("s", planted) else {
        panic!("symlink")
    };
    let open = FsOp::Open {
        node: link.node,
        flags: open_flags::READ,
    };
    assert_eq!(g.errno("s", open), eloop);
    // Forged ids.
    assert_eq!(g.errno("s", FsOp::GetAttr { node: 0x1234_5678 }), enoent);
    let read = FsOp::Read {
        handle: 99,
        offset: 0,
        len: 10,
    };
    assert_eq!(g.errno("s", read), libc::EBADF);
    let unknown_share = FsRequest {
        share: 77,
        op: FsOp::StatFs,
    };
    g.send(5000, &Message::FsRequest(unknown_share));
    assert!(
        matches!(g.next_message(), (5000, Message::FsReply(FsReply::Errno(e))) if e == libc::ENODEV)
    );
    g.next_id = 5001;
    // Oversized write and unknown flags.
    let FsReply::Opened { handle } = g.call(
        "s",
        FsOp::Open {
            node: file,
            flags: open_flags::READ | open_flags::WRITE,
        },
    ) else {
        panic!("open file")
    };
    let big = FsOp::Write {
        handle,
        offset: 0,
        data: vec![0; (1 << 20) + 1],
    };
    assert_eq!(g.errno("s", big), einval);
    let odd = FsOp::Open {
        node: file,
        flags: 1 << 20,
    };
    assert_eq!(g.errno("s", odd), einval);
    let odd_rename = FsOp::Rename {
        parent: FS_ROOT,
        name: "file".into(),
        new_parent: FS_ROOT,
        new_name: "f2".into(),
        flags: 4, // RENAME_WHITEOUT
    };
    assert_eq!(g.errno("s", odd_rename), einval);

    // Check-then-use race: the host swaps a directory and a symlink to the outside
    // (as a second guest process renaming would) while the guest looks through it.
    std::fs::create_dir(share.join("swap")).unwrap();
    symlink(&outside, share.join("swap-link")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, share) = (Arc::clone(&stop), share.clone());
        std::thread::spawn(move || {
            let (a, b) = (share.join("swap"), share.join("swap-link"));
            let mut swaps = 0u32;
            while !stop.load(Ordering::SeqCst) {
                // rename(2) is atomic: `swap` is always one or the other.
                let tmp = share.join("swap-tmp");
                std::fs::rename(&a, &tmp).unwrap();
                std::fs::rename(&b, &a).unwrap();
                std::fs::rename(&tmp, &b).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut leaks = 0;
    for _ in 0..2000 {
        let FsReply::Entry(attr) = g.lookup("s", FS_ROOT, "swap") else {
            continue;
        };
        if let FsReply::Entry(_) = g.lookup("s", attr.node, "secret") {
            leaks += 1;
        }
        let create = FsOp::Create {
            parent: attr.node,
            name: "planted".into(),
            mode: 0o644,
            flags: open_flags::WRITE,
        };
        if let FsReply::Created { handle, .. } = g.call("s", create) {
            g.call("s", FsOp::Release { handle });
            let unlink = FsOp::Unlink {
                parent: attr.node,
                name: "planted".into(),
            };
            g.call("s", unlink);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    eprintln!("{swaps} swaps raced 2000 lookups");
    assert!(swaps > 10, "the race did not happen");
    assert_eq!(leaks, 0, "a lookup went through a symlink to the outside");

    // Read-only share: the host refuses every write whatever the guest sends.
    let keep = g.node("ro", FS_ROOT, "keep");
    let ro_writes = [
        FsOp::Open {
            node: keep,
            flags: open_flags::WRITE,
        },
        FsOp::Create {
            parent: FS_ROOT,
            name: "new".into(),
            mode: 0o644,
            flags: open_flags::WRITE,
        },
        FsOp::Mkdir {
            parent: FS_ROOT,
            name: "d".into(),
            mode: 0o755,
        },
        FsOp::Unlink {
            parent: FS_ROOT,
            name: "keep".into(),
        },
        FsOp::Rename {
            parent: FS_ROOT,
            name: "keep".into(),
            new_parent: FS_ROOT,
            new_name: "k2".into(),
            flags: 0,
        },
        FsOp::Symlink {
            parent: FS_ROOT,
            name: "l".into(),
            target: "keep".into(),
        },
        FsOp::SetAttr {
            node: keep,
            handle: None,
            set: FsSetAttr {
                size: Some(0),
                ..FsSetAttr::default()
            },
        },
    ];
    for op in ro_writes {
        assert_eq!(g.errno("ro", op.clone()), erofs, "{op:?}");
    }
    // A read handle cannot write either.
    let FsReply::Opened { handle } = g.call(
        "ro",
        FsOp::Open {
            node: keep,
            flags: open_flags::READ,
        },
    ) else {
        panic!("open keep")
    };
    let write = FsOp::Write {
        handle,
        offset: 0,
        data: b"x".to_vec(),
    };
    assert_eq!(g.errno("ro", write), erofs);

    // Nothing outside changed; nothing left in the read-only share changed.
    assert_eq!(listing(&outside), vec!["secret"]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "host secret"
    );
    assert_eq!(listing(&ro), vec!["keep"]);
    assert_eq!(
        std::fs::read_to_string(ro.join("keep")).unwrap(),
        "read-only"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("file")).unwrap(),
        "inside"
    );
}
