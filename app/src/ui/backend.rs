//! The app's worker thread: everything that touches the disk, the engines or their
//! sockets happens here, never inside `ui` (starting a VM waits for its engine). The UI
//! sends `Command`s; the worker answers with `Update`s and, every second and after each
//! command, a fresh `Snapshot` of the library if it changed; each update wakes the UI.
//! The UI drains updates once per frame.
//!
//! The worker also owns a `GuestLink` per running VM (started and ended as the
//! library's state changes), whose status comes back as `Update::Agent`, and starts the
//! copy of files dropped on a VM window on a thread of its own (`Update::Drop`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::guest_link::drop_copy::{self, Progress};
use crate::guest_link::{self, AgentStatus, GuestLink, LinkSpec};
use crate::library::{DiskChoice, Library, VmEntry};
use crate::supervisor::{Action, Supervisor, VmState};
use crate::vm_config::{ClipboardDirection, VmConfig};

/// Drop progress is reported at most this often.
const DROP_REPORT: Duration = Duration::from_millis(100);

/// How often the library is looked at again (VMs started or stopped elsewhere, engines
/// that died).
const REFRESH: Duration = Duration::from_secs(1);

/// One VM as the library window shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub entry_id: String,
    pub name: String,
    /// `Err`: the config cannot be read; the text says why.
    pub config: Result<VmConfig, String>,
    pub state: VmState,
}

#[derive(Debug)]
pub enum Command {
    Create {
        config: VmConfig,
        start: bool,
    },
    Start(String),
    Act(String, Action),
    Delete {
        id: String,
        disk: DiskChoice,
    },
    Refresh,
    /// Saved in the VM's `[link]` settings and applied to its running link.
    SetClipboard {
        id: String,
        direction: ClipboardDirection,
    },
    /// Files and folders dropped on the VM window: copied into its drop folder.
    Drop {
        id: String,
        paths: Vec<PathBuf>,
    },
}

/// A drop's copy, as the VM window shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropState {
    pub progress: Progress,
    /// Set when finished: where the files went, or why the copy stopped.
    pub finished: Option<Result<String, String>>,
}

#[derive(Debug)]
pub enum Update {
    Snapshot(Vec<VmRow>),
    /// A command finished: `Ok` with what happened, or the error for the user.
    Done(Result<String, String>),
    /// A VM was created (the wizard closes).
    Created {
        id: String,
    },
    /// A VM was started: its display opens.
    Started {
        id: String,
        name: String,
    },
    /// What a running VM's guest agent does now.
    Agent {
        id: String,
        status: AgentStatus,
    },
    Drop {
        id: String,
        state: DropState,
    },
}

/// The UI's handle on the worker.
pub struct Backend {
    commands: Sender<Command>,
    updates: Receiver<Update>,
}

impl Backend {
    /// Starts the worker. `wake` is called after each update is sent (the UI's
    /// `request_repaint`).
    pub fn start(
        library: Library,
        supervisor: Supervisor,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Backend {
        let (commands, command_rx) = mpsc::channel();
        let (update_tx, updates) = mpsc::channel();
        let worker = Worker {
            library,
            supervisor,
            updates: update_tx,
            wake: Arc::new(wake),
            last: None,
            links: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("vireo-backend".into())
            .spawn(move || worker.run(command_rx))
            .expect("a thread for the backend");
        Backend { commands, updates }
    }

    pub fn send(&self, command: Command) {
        // The worker lives as long as the app; a send can only fail while it shuts down.
        let _ = self.commands.send(command);
    }

    /// Updates that arrived since the last call.
    pub fn drain(&self) -> Vec<Update> {
        self.updates.try_iter().collect()
    }
}

struct Worker {
    library: Library,
    supervisor: Supervisor,
    updates: Sender<Update>,
    wake: Arc<dyn Fn() + Send + Sync>,
    last: Option<Vec<VmRow>>,
    /// The guest links of running VMs, by VM id.
    links: HashMap<String, GuestLink>,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        self.snapshot();
        loop {
            match commands.recv_timeout(REFRESH) {
                Ok(command) => {
                    let outcome = self.execute(command);
                    if let Some(update) = outcome {
                        self.send(update);
                    }
                    self.snapshot();
                }
                Err(RecvTimeoutError::Timeout) => self.snapshot(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn send(&self, update: Update) {
        if self.updates.send(update).is_ok() {
            (self.wake)();
        }
    }

    /// Sends the library's state if it differs from the last one sent.
    fn snapshot(&mut self) {
        let entries = match self.library.list() {
            Ok(entries) => entries,
            Err(e) => {
                self.send(Update::Done(Err(e.to_string())));
                Vec::new()
            }
        };
        let rows: Vec<VmRow> = entries.iter().map(|e| self.row(e)).collect();
        self.sync_links(&entries, &rows);
        if self.last.as_ref() != Some(&rows) {
            self.last = Some(rows.clone());
            self.send(Update::Snapshot(rows));
        }
    }

    /// A link for each running VM, none for the others.
    fn sync_links(&mut self, entries: &[VmEntry], rows: &[VmRow]) {
        let running: Vec<&VmEntry> = entries
            .iter()
            .zip(rows)
            .filter(|(_, row)| row.state.is_running())
            .map(|(entry, _)| entry)
            .collect();
        self.links
            .retain(|id, _| running.iter().any(|entry| entry.id == *id));
        for entry in running {
            let (Ok(config), false) = (&entry.config, self.links.contains_key(&entry.id)) else {
                continue;
            };
            let Ok(runtime) = self.supervisor.runtime(entry) else {
                continue;
            };
            let spec = LinkSpec {
                vm_id: entry.id.clone(),
                vsock: runtime.vsock_socket(),
                vm_dir: entry.dir.clone(),
                settings: config.link.clone(),
            };
            let (updates, wake, id) = (
                self.updates.clone(),
                Arc::clone(&self.wake),
                entry.id.clone(),
            );
            let link = GuestLink::start(spec, move |status| {
                let update = Update::Agent {
                    id: id.clone(),
                    status: status.clone(),
                };
                if updates.send(update).is_ok() {
                    wake();
                }
            });
            self.links.insert(entry.id.clone(), link);
        }
    }

    fn set_clipboard(
        &self,
        entry: &VmEntry,
        direction: ClipboardDirection,
    ) -> Result<String, String> {
        let mut config = entry.config().map_err(|e| e.to_string())?.clone();
        config.link.clipboard = direction;
        config
            .save(&entry.config_path())
            .map_err(|e| e.to_string())?;
        if let Some(link) = self.links.get(&entry.id) {
            link.set_direction(direction);
        }
        Ok(format!("clipboard {}", direction.label()))
    }

    /// Copies dropped files on a thread of its own, reporting progress as it goes.
    fn drop_files(&self, entry: &VmEntry, paths: Vec<PathBuf>) -> Result<String, String> {
        let dest = guest_link::drop_folder(&entry.dir);
        let (updates, wake, id) = (
            self.updates.clone(),
            Arc::clone(&self.wake),
            entry.id.clone(),
        );
        let count = paths.len();
        std::thread::Builder::new()
            .name(format!("drop-{id}"))
            .spawn(move || {
                let send = |state: DropState| {
                    if updates
                        .send(Update::Drop {
                            id: id.clone(),
                            state,
                        })
                        .is_ok()
                    {
                        wake();
                    }
                };
                let mut last = None::<Instant>;
                let result = drop_copy::copy_into(&dest, &paths, |progress| {
                    if last.is_none_or(|t| t.elapsed() >= DROP_REPORT) {
                        last = Some(Instant::now());
                        send(DropState {
                            progress,
                            finished: None,
                        });
                    }
                });
                let (progress, finished) = match result {
                    Ok(copied) => (
                        Progress {
                            bytes_done: copied.bytes,
                            bytes_total: copied.bytes,
                            files_done: copied.files,
                            files_total: copied.files,
                        },
                        Ok(summary(&copied)),
                    ),
                    Err(e) => (Progress::default(), Err(e.to_string())),
                };
                send(DropState {
                    progress,
                    finished: Some(finished),
                });
            })
            .map_err(|e| format!("cannot start the copy: {e}"))?;
        Ok(format!(
            "copying {count} dropped item(s) into the shared folder"
        ))
    }

    fn row(&self, entry: &VmEntry) -> VmRow {
        let state = match entry.config {
            Ok(_) => self.supervisor.state(entry),
            Err(_) => VmState::Stopped,
        };
        VmRow {
            entry_id: entry.id.clone(),
            name: entry.name().to_owned(),
            config: entry.config.clone(),
            state,
        }
    }

    fn execute(&mut self, command: Command) -> Option<Update> {
        let result = match command {
            Command::Refresh => return None,
            Command::Create { config, start } => {
                let created = self.library.create(&config).map_err(|e| e.to_string());
                return Some(match created {
                    Ok(entry) => {
                        self.send(Update::Created {
                            id: entry.id.clone(),
                        });
                        if start {
                            self.start(&entry)
                        } else {
                            Update::Done(Ok(format!("{} created", entry.name())))
                        }
                    }
                    Err(e) => Update::Done(Err(e)),
                });
            }
            Command::Start(id) => match self.library.find(&id) {
                Ok(entry) => return Some(self.start(&entry)),
                Err(e) => Err(e.to_string()),
            },
            Command::Act(id, action) => self.with_entry(&id, |s, entry| {
                s.supervisor.act(entry, action).map_err(|e| e.to_string())?;
                if let (Action::Resume, Some(link)) = (action, s.links.get(&entry.id)) {
                    link.resumed();
                }
                Ok(format!("{}: done", action.verb()))
            }),
            Command::Delete { id, disk } => self.with_entry(&id, |s, entry| {
                s.supervisor
                    .ensure_stopped(entry)
                    .map_err(|e| e.to_string())?;
                match s.library.delete(entry, disk) {
                    Ok(Some(kept)) => {
                        Ok(format!("deleted; its disk was kept as {}", kept.display()))
                    }
                    Ok(None) => Ok("deleted".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }),
            Command::SetClipboard { id, direction } => {
                self.with_entry(&id, |s, entry| s.set_clipboard(entry, direction))
            }
            Command::Drop { id, paths } => {
                self.with_entry(&id, |s, entry| s.drop_files(entry, paths))
            }
        };
        Some(Update::Done(result))
    }

    fn start(&self, entry: &VmEntry) -> Update {
        match self.supervisor.start(entry) {
            Ok(()) => {
                self.send(Update::Started {
                    id: entry.id.clone(),
                    name: entry.name().to_owned(),
                });
                Update::Done(Ok(format!("{} started", entry.name())))
            }
            Err(e) => Update::Done(Err(format!("{}: {e}", entry.name()))),
        }
    }

    fn with_entry(
        &self,
        id: &str,
        f: impl FnOnce(&Self, &VmEntry) -> Result<String, String>,
    ) -> Result<String, String> {
        let entry = self.library.find(id).map_err(|e| e.to_string())?;
        f(self, &entry)
            .map(|ok| format!("{}: {ok}", entry.name()))
            .map_err(|e| format!("{}: {e}", entry.name()))
    }
}

/// `3 files, 12 KiB in shared/notes.txt, shared/photos` for the status line.
fn summary(copied: &drop_copy::Copied) -> String {
    let names: Vec<String> = copied
        .placed
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| format!("shared/{}", n.to_string_lossy()))
        .collect();
    let skipped = match copied.skipped {
        0 => String::new(),
        n => format!(" ({n} special files skipped)"),
    };
    format!(
        "copied {} file(s), {} KiB into {}{skipped}",
        copied.files,
        copied.bytes.div_ceil(1024),
        names.join(", ")
    )
}
