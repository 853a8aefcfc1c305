//! Look-ups answered from a directory read ahead. A guest that looks up many names of
//! one directory the kernel has not cached (a `stat` of each file of a list it got
//! elsewhere, a build tool probing its sources) pays one round trip to the host per
//! name. After [`MISSES`] misses in a row in one directory the agent reads the whole
//! directory with its attributes (`readdirplus`, a few large requests) and answers the
//! next look-ups of its names itself.
//!
//! Every entry the host sends counts one host-side lookup: an entry handed to the kernel
//! passes that count on (the kernel forgets it later); one not handed out within
//! [`FRESH`] is given back with a forget. A directory's entries are dropped when the
//! host reports a change in it or to one of its nodes, or the guest changes it, and are
//! never kept longer than the kernel keeps an entry (the same TTL): the guest sees them
//! no staler than its own cache would show them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::fs::{FsAttr, FsDirEntryPlus};

/// Misses in a row in one directory that start a read of it.
pub const MISSES: u32 = 8;
/// How long read-ahead entries answer look-ups: the kernel's own entry TTL.
pub const FRESH: Duration = Duration::from_secs(1);
/// Entries held from one directory; a larger directory is read this far only.
pub const MAX_DIR_ENTRIES: usize = 16 * 1024;
/// Entries held in all.
const MAX_ENTRIES: usize = 64 * 1024;

struct Dir {
    /// Tells a read started for this directory from one started after it was dropped.
    generation: u64,
    read_at: Instant,
    entries: HashMap<String, FsAttr>,
}

#[derive(Default)]
struct State {
    /// The directory of the last misses, and how many in a row.
    misses: (u64, u32),
    dirs: HashMap<u64, Dir>,
    held: usize,
    next_generation: u64,
}

impl State {
    /// Drops `parent`'s entries; their nodes are returned to be forgotten.
    fn drop_dir(&mut self, parent: u64) -> Vec<u64> {
        let Some(dir) = self.dirs.remove(&parent) else {
            return Vec::new();
        };
        self.held -= dir.entries.len();
        dir.entries.into_values().map(|a| a.node).collect()
    }

    fn expire(&mut self, now: Instant) -> Vec<u64> {
        let old: Vec<u64> = self
            .dirs
            .iter()
            .filter(|(_, d)| now.duration_since(d.read_at) >= FRESH)
            .map(|(&p, _)| p)
            .collect();
        old.into_iter().flat_map(|p| self.drop_dir(p)).collect()
    }
}

/// What a look-up found: the entry, if read ahead; nodes to give back to the host.
pub struct Found {
    pub attr: Option<FsAttr>,
    pub forget: Vec<u64>,
}

#[derive(Default)]
pub struct Prefetch(Mutex<State>);

impl Prefetch {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The look-up of `name` in `parent`, if read ahead (handed out once: the kernel
    /// now holds the lookup the host counted).
    pub fn take(&self, parent: u64, name: &str, now: Instant) -> Found {
        let mut state = self.lock();
        let forget = state.expire(now);
        let attr = state
            .dirs
            .get_mut(&parent)
            .and_then(|d| d.entries.remove(name));
        if attr.is_some() {
            state.held -= 1;
        }
        Found { attr, forget }
    }

    /// A look-up in `parent` went to the host. Returns the generation of a read of
    /// `parent` to start now, if this miss makes [`MISSES`] in a row there and none is
    /// held or under way.
    pub fn missed(&self, parent: u64, now: Instant) -> Option<u64> {
        let mut state = self.lock();
        state.misses = match state.misses {
            (p, n) if p == parent => (p, n.saturating_add(1)),
            _ => (parent, 1),
        };
        if state.misses.1 < MISSES || state.dirs.contains_key(&parent) || state.held >= MAX_ENTRIES
        {
            return None;
        }
        state.misses = (parent, 0);
        state.next_generation += 1;
        let generation = state.next_generation;
        state.dirs.insert(
            parent,
            Dir {
                generation,
                read_at: now,
                entries: HashMap::new(),
            },
        );
        Some(generation)
    }

    /// Entries of `parent` arrived for read `generation`. Returns the nodes to give back
    /// (the read was dropped meanwhile, a name came twice, or the caps are reached) and
    /// whether to go on reading.
    pub fn add(
        &self,
        parent: u64,
        generation: u64,
        entries: Vec<FsDirEntryPlus>,
    ) -> (Vec<u64>, bool) {
        let mut state = self.lock();
        let held = state.held;
        let Some(dir) = state
            .dirs
            .get_mut(&parent)
            .filter(|d| d.generation == generation)
        else {
            return (entries.iter().map(|e| e.attr.node).collect(), false);
        };
        let mut forget = Vec::new();
        let mut added = 0;
        for e in entries {
            if dir.entries.len() >= MAX_DIR_ENTRIES || held + added >= MAX_ENTRIES {
                forget.push(e.attr.node);
                continue;
            }
            if let Some(old) = dir.entries.insert(e.name, e.attr) {
                forget.push(old.node);
            } else {
                added += 1;
            }
        }
        let more = forget.is_empty();
        state.held += added;
        (forget, more)
    }

    /// The guest changed `parent`, or the host reported a change of a name in it.
    pub fn changed_dir(&self, parent: u64) -> Vec<u64> {
        self.lock().drop_dir(parent)
    }

    /// The host reported a change of `node`: the directories holding it are dropped (and
    /// its own entries, if it is a directory).
    pub fn changed_node(&self, node: u64) -> Vec<u64> {
        let mut state = self.lock();
        let holding: Vec<u64> = state
            .dirs
            .iter()
            .filter(|(&p, d)| p == node || d.entries.values().any(|a| a.node == node))
            .map(|(&p, _)| p)
            .collect();
        holding
            .into_iter()
            .flat_map(|p| state.drop_dir(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fs::FsKind;

    fn entry(name: &str, node: u64) -> FsDirEntryPlus {
        FsDirEntryPlus {
            name: name.into(),
            next_offset: node,
            attr: FsAttr {
                node,
                kind: FsKind::File,
                perm: 0o644,
                size: 0,
                blocks: 0,
                nlink: 1,
                atime_ns: 0,
                mtime_ns: 0,
                ctime_ns: 0,
            },
        }
    }

    fn started(p: &Prefetch, parent: u64, now: Instant) -> u64 {
        for _ in 1..MISSES {
            assert_eq!(p.missed(parent, now), None);
        }
        p.missed(parent, now).expect("a read starts")
    }

    #[test]
    fn misses_in_a_row_start_one_read_and_entries_are_handed_out_once() {
        let p = Prefetch::default();
        let now = Instant::now();
        // Misses elsewhere in between start nothing.
        for _ in 0..MISSES {
            assert_eq!(p.missed(2, now), None);
            assert_eq!(p.missed(3, now), None);
        }
        let generation = started(&p, 2, now);
        // Under way: more misses start no second read.
        for _ in 0..2 * MISSES {
            assert_eq!(p.missed(2, now), None);
        }
        let (forget, more) = p.add(2, generation, vec![entry("a", 10), entry("b", 11)]);
        assert!(forget.is_empty() && more);
        assert_eq!(p.take(2, "a", now).attr.map(|a| a.node), Some(10));
        assert!(p.take(2, "a", now).attr.is_none());
        assert!(p.take(3, "b", now).attr.is_none());
        // Stale: what was not handed out is given back.
        let later = p.take(2, "b", now + FRESH);
        assert!(later.attr.is_none());
        assert_eq!(later.forget, vec![11]);
    }

    #[test]
    fn changes_drop_entries_and_a_dropped_read_gives_its_entries_back() {
        let p = Prefetch::default();
        let now = Instant::now();
        let generation = started(&p, 2, now);
        p.add(2, generation, vec![entry("a", 10), entry("b", 11)]);
        let mut gone = p.changed_node(11);
        gone.sort_unstable();
        assert_eq!(gone, vec![10, 11]);
        assert!(p.take(2, "a", now).attr.is_none());
        // A read that answers after its directory changed.
        let old = started(&p, 2, now);
        assert_eq!(p.changed_dir(2), Vec::<u64>::new());
        let renewed = started(&p, 2, now);
        assert_ne!(old, renewed);
        assert_eq!(p.add(2, old, vec![entry("c", 12)]), (vec![12], false));
        assert!(p.take(2, "c", now).attr.is_none());
    }

    #[test]
    fn a_name_twice_gives_the_first_back_and_the_cap_stops_the_read() {
        let p = Prefetch::default();
        let now = Instant::now();
        let generation = started(&p, 2, now);
        assert_eq!(
            p.add(2, generation, vec![entry("a", 10), entry("a", 11)]),
            (vec![10], false)
        );
        let many: Vec<_> = (0..MAX_DIR_ENTRIES as u64 + 5)
            .map(|i| entry(&format!("n{i}"), 100 + i))
            .collect();
        let (forget, more) = p.add(2, generation, many);
        assert!(!more);
        // "a" already held one place.
        assert_eq!(forget.len(), 6);
    }
}
