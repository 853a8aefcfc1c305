//! Shared folders for real on this host: the `vireo-agent` binary mounts through FUSE
//! (`/dev/fuse`), the real host side serves a scratch folder over a Unix socket, and
//! shell commands work on the mount as a guest user's programs would.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vireo_guest_agent::host::{AgentClient, ClientConfig, Endpoint, ShareConfig};

#[test]
fn every_operation_from_the_shell() {
    if !require_fuse("every_operation_from_the_shell") {
        return;
    }
    let rig = Rig::start("ops", &[("docs", false)]);
    let host = rig.host_dir("docs");
    let m = rig.mount("docs");
    std::fs::write(host.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir(host.join("sub")).unwrap();
    std::fs::write(host.join("sub/inner"), "x").unwrap();

    // lookup, getattr, readdir, open/read.
    assert_eq!(sh_ok(&m, "cat hello.txt"), "hello from the host\n");
    assert_eq!(sh_ok(&m, "ls -1"), "hello.txt\nsub\n");
    assert_eq!(sh_ok(&m, "ls -1 sub"), "inner\n");
    assert_eq!(sh_ok(&m, "stat -c '%s %F' hello.txt"), "20 regular file\n");
    // Ownership: the guest user in the guest, the host user on the host.
    assert_eq!(
        sh_ok(&m, "stat -c '%u:%g' hello.txt sub"),
        format!("{OWNER}:{OWNER}\n{OWNER}:{OWNER}\n")
    );
    // create/write, read back on the host; the host user owns what the guest made.
    sh_ok(&m, "printf 'made in the guest' > new.txt");
    assert_eq!(
        std::fs::read_to_string(host.join("new.txt")).unwrap(),
        "made in the guest"
    );
    let me = host_uid();
    assert_eq!(std::fs::metadata(host.join("new.txt")).unwrap().uid(), me);
    // append, truncate (shorter and longer).
    sh_ok(&m, "printf '!' >> new.txt");
    assert_eq!(
        std::fs::read_to_string(host.join("new.txt")).unwrap(),
        "made in the guest!"
    );
    sh_ok(&m, "truncate -s 4 new.txt");
    assert_eq!(
        std::fs::read_to_string(host.join("new.txt")).unwrap(),
        "made"
    );
    sh_ok(&m, "truncate -s 6 new.txt");
    assert_eq!(std::fs::read(host.join("new.txt")).unwrap(), b"made\0\0");
    // mkdir, rename (within a directory, across directories, over an existing file).
    sh_ok(&m, "mkdir -p a/b && mv new.txt a/b/moved.txt && mv a/b a/c");
    assert!(host.join("a/c/moved.txt").is_file());
    sh_ok(
        &m,
        "echo old > a/x && echo new > a/y && mv a/y a/x && cat a/x",
    );
    assert_eq!(std::fs::read_to_string(host.join("a/x")).unwrap(), "new\n");
    // symlink/readlink: the link is stored as written, and followed in the guest.
    sh_ok(&m, "ln -s ../hello.txt a/link");
    assert_eq!(
        std::fs::read_link(host.join("a/link")).unwrap(),
        Path::new("../hello.txt")
    );
    assert_eq!(sh_ok(&m, "readlink a/link"), "../hello.txt\n");
    assert_eq!(sh_ok(&m, "cat a/link"), "hello from the host\n");
    // setattr: mode and times.
    sh_ok(
        &m,
        "chmod 640 hello.txt && touch -m -d @1000000000 hello.txt",
    );
    let meta = std::fs::metadata(host.join("hello.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.mtime(), 1_000_000_000);
    assert_eq!(sh_ok(&m, "stat -c '%a %Y' hello.txt"), "640 1000000000\n");
    // Giving a file away is refused: the host user owns everything.
    assert!(!sh(&m, "chown 1:1 hello.txt").0);
    // fsync (file and directory), statfs.
    sh_ok(
        &m,
        "dd if=/dev/zero of=synced bs=64k count=4 conv=fsync status=none && sync -f synced",
    );
    assert_eq!(
        std::fs::metadata(host.join("synced")).unwrap().len(),
        256 * 1024
    );
    let statfs = sh_ok(&m, "stat -f -c '%S %b' .");
    let host_statfs = sh_ok(&host, "stat -f -c '%S %b' .");
    assert_eq!(statfs, host_statfs);
    // unlink, rmdir (a non-empty one is refused).
    assert!(!sh(&m, "rmdir a").0);
    sh_ok(
        &m,
        "rm a/link a/x a/c/moved.txt synced && rmdir a/c && rmdir a",
    );
    assert!(!host.join("a").exists());
    // A big directory reads complete (several readdir rounds).
    for i in 0..2000 {
        std::fs::write(host.join(format!("sub/f{i:04}")), "").unwrap();
    }
    assert_eq!(sh_ok(&m, "ls sub | wc -l").trim(), "2001");
}

fn host_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn a_512_mib_file_both_ways_with_checksums() {
    if !require_fuse("a_512_mib_file_both_ways_with_checksums") {
        return;
    }
    let rig = Rig::start("big", &[("big", false)]);
    let host = rig.host_dir("big");
    let m = rig.mount("big");
    // Host → guest.
    sh_ok(&host, "head -c 512M /dev/urandom > from-host");
    let t = Instant::now();
    assert_eq!(
        sha256(&m.join("from-host")),
        sha256(&host.join("from-host"))
    );
    eprintln!("512 MiB host → guest checksummed in {:?}", t.elapsed());
    // Guest → host.
    let t = Instant::now();
    sh_ok(&m, "head -c 512M /dev/urandom > from-guest");
    eprintln!("512 MiB guest → host written in {:?}", t.elapsed());
    assert_eq!(
        std::fs::metadata(host.join("from-guest")).unwrap().len(),
        512 << 20
    );
    assert_eq!(
        sha256(&host.join("from-guest")),
        sha256(&m.join("from-guest"))
    );
    // Streamed in chunks: neither side ever held a file.
    for (who, pid) in [("host side", rig.host.pid()), ("agent", rig.agent.pid())] {
        let peak = peak_rss_kib(pid);
        eprintln!("{who} peak RSS {} MiB", peak / 1024);
        assert!(peak < 160 * 1024, "{who} peaked at {peak} KiB");
    }
}

#[test]
fn host_side_edits_show_within_a_second() {
    if !require_fuse("host_side_edits_show_within_a_second") {
        return;
    }
    let rig = Rig::start("notify", &[("n", false)]);
    let host = rig.host_dir("n");
    let m = rig.mount("n");
    std::fs::write(host.join("note"), "first version").unwrap();
    // Cached in the guest: attributes, the entry, the data.
    assert_eq!(
        std::fs::read_to_string(m.join("note")).unwrap(),
        "first version"
    );
    assert_eq!(sh_ok(&m, "ls"), "note\n");

    let seen = |what: &str, cond: &dyn Fn() -> bool| {
        let t = Instant::now();
        assert!(
            wait_until(Duration::from_secs(1), cond),
            "{what}: not seen in the guest within 1 s"
        );
        eprintln!("{what}: seen after {:?}", t.elapsed());
    };
    std::fs::write(host.join("note"), "second, longer version").unwrap();
    seen("an edit", &|| {
        std::fs::read_to_string(m.join("note")).ok().as_deref() == Some("second, longer version")
    });
    std::fs::write(host.join("added"), "").unwrap();
    seen("a new file", &|| m.join("added").exists());
    std::fs::remove_file(host.join("added")).unwrap();
    seen("a removal", &|| !m.join("added").exists());
    std::fs::rename(host.join("note"), host.join("renamed")).unwrap();
    seen("a rename", &|| {
        m.join("renamed").exists() && !m.join("note").exists()
    });
    std::fs::set_permissions(
        host.join("renamed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    seen("a chmod", &|| {
        std::fs::metadata(m.join("renamed")).is_ok_and(|md| md.mode() & 0o777 == 0o600)
    });
}

#[test]
fn read_only_share_refuses_writes() {
    if !require_fuse("read_only_share_refuses_writes") {
        return;
    }
    let rig = Rig::start("ro", &[("ro", true)]);
    let host = rig.host_dir("ro");
    let m = rig.mount("ro");
    std::fs::write(host.join("keep"), "untouched").unwrap();
    std::fs::create_dir(host.join("dir")).unwrap();
    assert_eq!(sh_ok(&m, "cat keep"), "untouched");
    for script in [
        "echo x > keep",
        "echo x >> keep",
        "echo x > new",
        "mkdir d2",
        "rmdir dir",
        "rm keep",
        "mv keep moved",
        "ln -s keep l",
        "chmod 777 keep",
        "touch keep",
        "truncate -s 0 keep",
    ] {
        let (ok, _, err) = sh(&m, script);
        assert!(!ok, "{script} succeeded on a read-only share");
        assert!(err.contains("Read-only file system"), "{script}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(host.join("keep")).unwrap(),
        "untouched"
    );
    assert_eq!(sh_ok(&host, "ls"), "dir\nkeep\n");
}

#[test]
fn two_clients_at_once() {
    if !require_fuse("two_clients_at_once") {
        return;
    }
    // Two agents (two guests) share one host folder, each through its own host side.
    let scratch = Scratch::new("two");
    let dir = scratch.path("shared");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = vec![format!("s={}", dir.display())];
    let a = AgentProc::start(&scratch.0, "a");
    let b = AgentProc::start(&scratch.0, "b");
    let host_a = HostProc::start(&a.socket, &spec);
    let host_b = HostProc::start(&b.socket, &spec);
    host_a.wait_mounted(Duration::from_secs(10));
    host_b.wait_mounted(Duration::from_secs(10));
    let (ma, mb) = (a.mount("s"), b.mount("s"));
    // Each sees what the other writes, at once.
    sh_ok(&ma, "echo from-a > note");
    assert!(wait_until(Duration::from_secs(1), || {
        std::fs::read_to_string(mb.join("note")).ok().as_deref() == Some("from-a\n")
    }));
    sh_ok(&mb, "echo from-b > note");
    assert!(wait_until(Duration::from_secs(1), || {
        std::fs::read_to_string(ma.join("note")).ok().as_deref() == Some("from-b\n")
    }));
    // Both busy at the same time: writers on each mount and readers on both.
    sh_ok(&dir, "head -c 32M /dev/urandom > src");
    let want = sha256(&dir.join("src"));
    let jobs: Vec<_> = [(ma.clone(), "copy-a"), (mb.clone(), "copy-b")]
        .into_iter()
        .flat_map(|(m, name)| {
            let reader = {
                let m = m.clone();
                std::thread::spawn(move || sha256(&m.join("src")))
            };
            let writer = std::thread::spawn(move || {
                sh_ok(&m, &format!("cat src > {name} && cat {name}"));
                sha256(&m.join(name))
            });
            [reader, writer]
        })
        .collect();
    for job in jobs {
        assert_eq!(job.join().unwrap(), want);
    }
    assert_eq!(sha256(&dir.join("copy-a")), want);
    assert_eq!(sha256(&dir.join("copy-b")), want);
}

#[test]
fn agent_killed_and_restarted_the_host_side_reconnects() {
    if !require_fuse("agent_killed_and_restarted_the_host_side_reconnects") {
        return;
    }
    let mut rig = Rig::start("restart", &[("r", false)]);
    let host = rig.host_dir("r");
    std::fs::write(host.join("f"), "before").unwrap();
    assert_eq!(
        std::fs::read_to_string(rig.mount("r").join("f")).unwrap(),
        "before"
    );
    rig.agent.kill_hard();
    // The dead agent's mount fails instead of hanging.
    assert!(std::fs::read_to_string(rig.mount("r").join("f")).is_err());
    rig.agent.restart();
    // The host side notices, reconnects by itself and announces its shares again; the
    // new agent replaces the dead mount.
    let mounted = rig.host.wait_mounted(Duration::from_secs(10));
    assert_eq!(mounted[0].1, rig.mount("r"));
    std::fs::write(host.join("f"), "after").unwrap();
    assert_eq!(
        std::fs::read_to_string(rig.mount("r").join("f")).unwrap(),
        "after"
    );
    sh_ok(&rig.mount("r"), "echo again > g");
    assert_eq!(std::fs::read_to_string(host.join("g")).unwrap(), "again\n");
    // A clean stop unmounts.
    rig.agent.stop();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&rig.mount("r").display().to_string()));
}

#[test]
fn the_library_adds_a_share_to_a_connected_client() {
    if !require_fuse("the_library_adds_a_share_to_a_connected_client") {
        return;
    }
    let scratch = Scratch::new("lib");
    let dir = scratch.path("lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x"), "via the library").unwrap();
    let agent = AgentProc::start(&scratch.0, "a");
    let client = AgentClient::connect(
        Endpoint::Unix(agent.socket.clone()),
        ClientConfig::default(),
    )
    .unwrap();
    let config = ShareConfig {
        name: "lib".into(),
        path: dir.clone(),
        read_only: false,
    };
    let path = client
        .add_share(config.clone())
        .unwrap()
        .expect("connected");
    assert_eq!(Path::new(&path), agent.mount("lib"));
    assert_eq!(
        std::fs::read_to_string(agent.mount("lib").join("x")).unwrap(),
        "via the library"
    );
    // Same name twice, a missing folder, a name that is a path: refused.
    assert!(client.add_share(config).is_err());
    let missing = ShareConfig {
        name: "gone".into(),
        path: scratch.path("does-not-exist"),
        read_only: false,
    };
    assert!(client.add_share(missing).is_err());
    let bad = ShareConfig {
        name: "../etc".into(),
        path: dir,
        read_only: false,
    };
    assert!(client.add_share(bad).is_err());
    drop(client);
}

/// Look-ups of many names of one directory are answered from a read ahead of it: every
/// name still shows its own attributes, and a change made before the guest looks a name
/// up shows (the guest's own changes at once, the host's within the entry TTL).
#[test]
fn many_lookups_in_one_directory_see_their_own_attributes_and_changes() {
    if !require_fuse("many_lookups_in_one_directory_see_their_own_attributes_and_changes") {
        return;
    }
    let rig = Rig::start("lookahead", &[("l", false)]);
    let host = rig.host_dir("l");
    let dir = host.join("many");
    std::fs::create_dir(&dir).unwrap();
    const N: usize = 600;
    for i in 0..N {
        std::fs::write(dir.join(format!("f{i:04}")), vec![b'x'; i]).unwrap();
    }
    let m = rig.mount("l").join("many");
    // Enough misses to start the read ahead; give it time to arrive.
    for i in 0..20 {
        assert_eq!(
            std::fs::metadata(m.join(format!("f{i:04}"))).unwrap().len(),
            i as u64
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    // A guest-side removal of a name read ahead but not looked up yet.
    std::fs::remove_file(m.join("f0500")).unwrap();
    assert!(std::fs::metadata(m.join("f0500")).is_err());
    // Host-side changes to names read ahead.
    std::fs::write(dir.join("f0501"), "changed").unwrap();
    std::fs::remove_file(dir.join("f0502")).unwrap();
    for i in (20..N).filter(|i| !(500..=502).contains(i)) {
        let md = std::fs::metadata(m.join(format!("f{i:04}"))).unwrap();
        assert_eq!(md.len(), i as u64, "f{i:04}");
        assert!(md.is_file());
    }
    assert!(wait_until(Duration::from_secs(1), || {
        std::fs::metadata(m.join("f0501")).is_ok_and(|md| md.len() == 7)
            && std::fs::metadata(m.join("f0502")).is_err()
    }));
    // A name that was never there is still not there.
    assert!(std::fs::metadata(m.join("nothing")).is_err());
}
