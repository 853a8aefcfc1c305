//! The app's worker thread: everything that touches the disk, the engines or their
//! sockets happens here, never inside `ui` (starting a VM waits for its engine). The UI
//! sends `Command`s; the worker answers with `Update`s and, every second and after each
//! command, a fresh `Snapshot` of the library if it changed; each update wakes the UI.
//! Each running VM is sampled once a second into `Activity` (shared, bounded rings), a
//! wake only when the graphs show or what a row shows changed.
//! The UI drains updates once per frame.
//!
//! The worker also owns a `GuestLink` per running VM (started and ended as the
//! library's state changes), whose status comes back as `Update::Agent`, and starts the
//! copy of files dropped on a VM window on a thread of its own (`Update::Drop`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use eframe::egui::ColorImage;

use super::activity::Activity;
use super::thumbnail;
use crate::guest_link::drop_copy::{self, Progress};
use crate::guest_link::{self, AgentStatus, GuestLink, LinkSpec};
use crate::host::HostInfo;
use crate::library::{DiskChoice, Library, VmEntry};
use crate::resources::Resources;
use crate::settings::{self, Settings};
use crate::supervisor::{Action, RuntimeFiles, Supervisor, VmState};
use crate::usage::{io_totals, Usage, UsageSampler};
use crate::vm_config::{self, ClipboardDirection, SharedFolder, VmConfig};
use vireo_guest_agent::host::ShareConfig;
use vireo_vmm::control::protocol::{Request, Response};

/// Drop progress is reported at most this often.
const DROP_REPORT: Duration = Duration::from_millis(100);

/// How often the library is looked at again (VMs started or stopped elsewhere, engines
/// that died).
const REFRESH: Duration = Duration::from_secs(1);
/// How long a guest asked to shut down gets before the user is asked what to do
/// (`VIREO_SHUTDOWN_WAIT_SECS` sets it: for tests, and for guests known to be slow).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

fn shutdown_wait() -> Duration {
    std::env::var("VIREO_SHUTDOWN_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SHUTDOWN_WAIT, Duration::from_secs)
}

/// One VM as the library window shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub entry_id: String,
    pub name: String,
    /// `Err`: the config cannot be read; the text says why.
    pub config: Result<VmConfig, String>,
    pub state: VmState,
    /// Running on an engine binary a Vireo upgrade has since replaced.
    pub engine_outdated: bool,
}

#[derive(Debug)]
pub enum Command {
    Create {
        config: Box<VmConfig>,
        start: bool,
        /// The operating system's files built for it (a Debian 12), moved into its
        /// directory.
        image: Option<std::path::PathBuf>,
    },
    Start(String),
    Act(String, Action),
    /// Moves a running VM to the engine installed now (`Supervisor::upgrade`).
    Upgrade(String),
    /// Saves a running VM's screen to a new PNG in `<vm dir>/screenshots`.
    Screenshot(String),
    /// Adds a shared folder to a VM's config and, if it runs, serves it at once.
    AddShare {
        id: String,
        folder: SharedFolder,
    },
    /// Removes a shared folder from a VM's config.
    RemoveShare {
        id: String,
        name: String,
    },
    Delete {
        id: String,
        disk: DiskChoice,
    },
    /// Copies a stopped VM under a new name.
    Clone {
        id: String,
        name: String,
    },
    /// Writes new settings to a stopped VM's config.
    SaveSettings {
        id: String,
        settings: Settings,
    },
    /// Writes a VM's `[resources]` and applies what changed to it if it runs.
    SaveResources {
        id: String,
        resources: Resources,
    },
    Refresh,
    /// Deletes a saved VM's saved state.
    Discard(String),
    /// The user chose to give a guest that has not shut down more time.
    KeepWaiting(String),
    /// Saves these running VMs before the app quits; answered by `Update::QuitSaves`.
    SaveBeforeQuit(Vec<String>),
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
    /// The saves `Command::SaveBeforeQuit` asked for are done: `Err` lists the ones that
    /// failed and why (those VMs run on).
    QuitSaves(Result<String, String>),
    /// A guest asked to shut down is still running after the wait: ask the user.
    ShutdownTimedOut {
        id: String,
        name: String,
        waited: Duration,
    },
    /// A new thumbnail of a running VM's screen.
    Thumbnail {
        id: String,
        image: ColorImage,
    },
}

/// The UI's handle on the worker.
pub struct Backend {
    commands: Sender<Command>,
    updates: Receiver<Update>,
    /// Whether the Activity graphs are on screen: only then does each sample wake the UI.
    graphs_visible: Arc<AtomicBool>,
    /// The samples, recorded by the worker into bounded rings (not sent as updates: a
    /// UI that is not woken for them must not pile them up).
    activity: Arc<Mutex<Activity>>,
}

impl Backend {
    /// Starts the worker. `wake` is called after each update is sent (the UI's
    /// `request_repaint`).
    pub fn start(
        library: Library,
        supervisor: Supervisor,
        host: HostInfo,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Backend {
        let (commands, command_rx) = mpsc::channel();
        let (update_tx, updates) = mpsc::channel();
        let graphs_visible = Arc::new(AtomicBool::new(false));
        let activity = Arc::new(Mutex::new(Activity::default()));
        let worker = Worker {
            activity: activity.clone(),
            graphs_visible: graphs_visible.clone(),
            last_glance: HashMap::new(),
            shutdowns: HashMap::new(),
            library,
            supervisor,
            host,
            updates: update_tx,
            wake: Arc::new(wake),
            last: None,
            links: HashMap::new(),
            sampler: UsageSampler::default(),
            thumbnails: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("vireo-backend".into())
            .spawn(move || worker.run(command_rx))
            .expect("a thread for the backend");
        Backend {
            commands,
            updates,
            graphs_visible,
            activity,
        }
    }

    /// The usage history of every VM (the worker adds a sample a second).
    pub fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the worker whether the Activity graphs are shown (they want a repaint per
    /// sample; the library only when what a row shows changed).
    pub fn set_graphs_visible(&self, visible: bool) {
        self.graphs_visible.store(visible, Ordering::Relaxed);
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
    host: HostInfo,
    updates: Sender<Update>,
    wake: Arc<dyn Fn() + Send + Sync>,
    last: Option<Vec<VmRow>>,
    /// The guest links of running VMs, by VM id.
    links: HashMap<String, GuestLink>,
    sampler: UsageSampler,
    /// A thumbnail watcher per running VM, by id.
    thumbnails: HashMap<String, thumbnail::Watcher>,
    graphs_visible: Arc<AtomicBool>,
    activity: Arc<Mutex<Activity>>,
    /// What each row showed after the last sample that woke the UI.
    last_glance: HashMap<String, (u32, u64)>,
    /// Guests asked to shut down, by VM id: when the user hears they have not.
    shutdowns: HashMap<String, Instant>,
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
                Err(RecvTimeoutError::Timeout) => {
                    self.snapshot();
                    self.sample();
                    self.check_shutdowns();
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Tells the UI about guests that were asked to shut down and still run after the
    /// wait; forgets those that stopped.
    fn check_shutdowns(&mut self) {
        let Some(rows) = &self.last else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        self.shutdowns.retain(|id, deadline| {
            let Some(row) = rows.iter().find(|r| r.entry_id == *id) else {
                return false;
            };
            if !row.state.is_running() {
                return false;
            }
            if now >= *deadline {
                due.push((id.clone(), row.name.clone()));
                return false;
            }
            true
        });
        for (id, name) in due {
            self.send(Update::ShutdownTimedOut {
                id,
                name,
                waited: shutdown_wait(),
            });
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
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(&rows);
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

    /// Writes `resources` to the VM's vm.toml and, if it runs, asks its engine for what
    /// changed (the file first: a VM started meanwhile reads it).
    fn save_resources(&self, entry: &VmEntry, resources: Resources) -> Result<String, String> {
        let problems: Vec<String> = resources
            .check(self.host.cpus)
            .iter()
            .map(ToString::to_string)
            .collect();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let before = entry.config().map_err(|e| e.to_string())?.clone();
        let mut config = before.clone();
        config.resources = resources;
        config
            .save(&entry.config_path())
            .map_err(|e| e.to_string())?;
        if !self.supervisor.state(entry).is_running() {
            return Ok("resources saved: they apply from the next start".into());
        }
        let runtime = self.supervisor.runtime(entry).map_err(|e| e.to_string())?;
        let changes = resources.changes_from(&before.resources, before.has_disk(), before.network);
        for request in &changes {
            match self.supervisor.ask(&runtime, request) {
                Ok(Response::Error { message }) => {
                    return Err(format!(
                        "saved for the next start, but the running VM refused it: {message}"
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("saved for the next start, but: {e}")),
            }
        }
        Ok("resources saved and applied to the running VM".into())
    }

    /// Adds `folder` to the VM's shares (vm.toml), and serves it to the running guest.
    fn add_share(&self, entry: &VmEntry, folder: SharedFolder) -> Result<String, String> {
        let mut config = entry.config().map_err(|e| e.to_string())?.clone();
        vm_config::check_new_share(&folder, &config.link.shared_folders)?;
        config.link.shared_folders.push(folder.clone());
        config
            .save(&entry.config_path())
            .map_err(|e| e.to_string())?;
        let guest = format!("/mnt/vireo/{}", folder.name);
        let Some(link) = self.links.get(&entry.id) else {
            return Ok(format!(
                "{} is shared as {guest} from the next start",
                folder.path.display()
            ));
        };
        let config = ShareConfig {
            name: folder.name,
            path: folder.path.clone(),
            read_only: folder.read_only,
        };
        match link.add_share(config) {
            Ok(Some(mounted)) => Ok(format!(
                "{} is shared: the guest has it at {mounted}",
                folder.path.display()
            )),
            Ok(None) => Ok(format!(
                "{} is shared as {guest} once the guest's agent connects",
                folder.path.display()
            )),
            Err(why) => Err(format!(
                "{} is saved as a share but the guest did not mount it now: {why}",
                folder.path.display()
            )),
        }
    }

    /// Removes the share `name` from the VM's config (a running guest keeps it mounted
    /// until it restarts: the agent protocol has no unshare).
    fn remove_share(&self, entry: &VmEntry, name: &str) -> Result<String, String> {
        let mut config = entry.config().map_err(|e| e.to_string())?.clone();
        let before = config.link.shared_folders.len();
        config.link.shared_folders.retain(|f| f.name != name);
        if config.link.shared_folders.len() == before {
            return Err(format!("no share named {name:?}"));
        }
        config
            .save(&entry.config_path())
            .map_err(|e| e.to_string())?;
        if self.links.contains_key(&entry.id) {
            Ok(format!(
                "share {name} removed: the running guest keeps it until the VM restarts"
            ))
        } else {
            Ok(format!("share {name} removed"))
        }
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

    /// A running VM's usage: what its engine reports on `stats`, or for an engine that
    /// does not (an older build), its process sampled from /proc (with rates when it
    /// answers `stats` at all).
    fn usage_of(&mut self, id: &str, runtime: &RuntimeFiles) -> Option<Usage> {
        let stats = self.supervisor.ask(runtime, &Request::Stats {});
        if let Ok(Response::Stats { disks, nets, vm }) = &stats {
            if let Some(usage) = self.sampler.from_stats(id, vm, disks, nets) {
                return Some(usage);
            }
        }
        let mut usage = self.sampler.sample(&runtime.engine_pid())?;
        if let Ok(Response::Stats { disks, nets, .. }) = &stats {
            usage.io = Some(self.sampler.io_rates(id, io_totals(disks, nets)));
        }
        Some(usage)
    }

    /// Samples each running VM's cost and keeps a thumbnail watcher on each.
    fn sample(&mut self) {
        let Some(rows) = &self.last else { return };
        let running: Vec<String> = rows
            .iter()
            .filter(|r| r.state.is_running())
            .map(|r| r.entry_id.clone())
            .collect();
        self.thumbnails
            .retain(|id, w| w.alive() && running.contains(id));
        let mut usage = Vec::new();
        for id in &running {
            let Ok(entry) = self.library.find(id) else {
                continue;
            };
            let Ok(runtime) = self.supervisor.runtime(&entry) else {
                continue;
            };
            if let Some(u) = self.usage_of(id, &runtime) {
                usage.push((id.clone(), u));
            }
            if !self.thumbnails.contains_key(id) {
                let (updates, wake, vm) = (self.updates.clone(), self.wake.clone(), id.clone());
                let watcher =
                    thumbnail::Watcher::start(id, runtime.control_socket(), move |image| {
                        let id = vm.clone();
                        if updates.send(Update::Thumbnail { id, image }).is_ok() {
                            wake();
                        }
                    });
                self.thumbnails.insert(id.clone(), watcher);
            }
        }
        if usage.is_empty() {
            return;
        }
        // Every sample goes to the history; the UI is woken for it only if the graphs
        // are on screen or a row's numbers changed, so an idle library stays idle.
        let glance: HashMap<String, (u32, u64)> = usage
            .iter()
            .map(|(id, u)| (id.clone(), u.glance()))
            .collect();
        let wake = self.graphs_visible.load(Ordering::Relaxed)
            || !crate::usage::glance_close(&self.last_glance, &glance);
        if wake {
            self.last_glance = glance;
        }
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(usage);
        if wake {
            (self.wake)();
        }
    }

    fn row(&self, entry: &VmEntry) -> VmRow {
        let state = match entry.config {
            Ok(_) => self.supervisor.state(entry),
            Err(_) => VmState::Stopped,
        };
        let engine_outdated = state.is_running() && self.supervisor.engine_outdated(entry);
        VmRow {
            entry_id: entry.id.clone(),
            name: entry.name().to_owned(),
            config: entry.config.clone(),
            state,
            engine_outdated,
        }
    }

    fn execute(&mut self, command: Command) -> Option<Update> {
        let result = match command {
            Command::Refresh => return None,
            Command::Create {
                config,
                start,
                image,
            } => {
                let created = match image {
                    Some(dir) => self.library.create_with_image(&config, &dir),
                    None => self.library.create(&config),
                }
                .map_err(|e| e.to_string());
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
            Command::Act(id, action) => {
                let result = self.with_entry(&id, |s, entry| {
                    s.supervisor.act(entry, action).map_err(|e| e.to_string())?;
                    match (action, s.links.get(&entry.id)) {
                        (Action::Resume, Some(link)) => link.resumed(),
                        (Action::Shutdown, link) => {
                            if let Some(link) = link {
                                link.shutdown();
                            }
                            return Ok(format!("{}: asked to shut down", entry.name()));
                        }
                        _ => {}
                    }
                    Ok(format!("{}: done", action.verb()))
                });
                if action == Action::Shutdown && result.is_ok() {
                    self.shutdowns.insert(id, Instant::now() + shutdown_wait());
                }
                result
            }
            Command::KeepWaiting(id) => {
                self.shutdowns.insert(id, Instant::now() + shutdown_wait());
                Ok("waiting for the guest to shut down".into())
            }
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
            Command::AddShare { id, folder } => {
                self.with_entry(&id, |s, entry| s.add_share(entry, folder))
            }
            Command::RemoveShare { id, name } => {
                self.with_entry(&id, |s, entry| s.remove_share(entry, &name))
            }
            Command::Screenshot(id) => self.with_entry(&id, |s, entry| {
                let path = screenshot_path(&entry.dir.join("screenshots"))
                    .map_err(|e| format!("cannot make the screenshots folder: {e}"))?;
                let (width, height) = s
                    .supervisor
                    .screenshot(entry, &path)
                    .map_err(|e| format!("no screenshot: {e}"))?;
                Ok(format!(
                    "{width}x{height} screenshot saved to {}",
                    path.display()
                ))
            }),
            Command::Upgrade(id) => self.with_entry(&id, |s, entry| {
                s.supervisor.upgrade(entry).map_err(|e| e.to_string())?;
                Ok("moved to the new engine".to_owned())
            }),
            Command::Discard(id) => self.with_entry(&id, |s, entry| {
                s.supervisor.discard(entry).map_err(|e| e.to_string())?;
                Ok("saved state discarded: the next start boots afresh".to_owned())
            }),
            Command::SaveBeforeQuit(ids) => return Some(self.save_before_quit(&ids)),
            Command::SetClipboard { id, direction } => {
                self.with_entry(&id, |s, entry| s.set_clipboard(entry, direction))
            }
            Command::Drop { id, paths } => {
                self.with_entry(&id, |s, entry| s.drop_files(entry, paths))
            }
            Command::Clone { id, name } => self.with_entry(&id, |s, entry| {
                s.supervisor
                    .ensure_stopped(entry)
                    .map_err(|e| e.to_string())?;
                s.library
                    .clone_vm(entry, &name)
                    .map(|copy| format!("cloned as {}", copy.name()))
                    .map_err(|e| e.to_string())
            }),
            Command::SaveResources { id, resources } => {
                self.with_entry(&id, |s, entry| s.save_resources(entry, resources))
            }
            Command::SaveSettings { id, settings } => self.with_entry(&id, |s, entry| {
                s.supervisor
                    .ensure_stopped(entry)
                    .map_err(|e| e.to_string())?;
                settings::apply(entry, &settings, &s.host)
                    .map(|_| "settings saved".to_owned())
                    .map_err(|e| e.to_string())
            }),
        };
        Some(Update::Done(result))
    }

    /// Saves each VM in turn (each save waits for its engine to be gone).
    fn save_before_quit(&self, ids: &[String]) -> Update {
        let failures: Vec<String> = ids
            .iter()
            .filter_map(|id| {
                self.with_entry(id, |s, entry| {
                    s.supervisor
                        .act(entry, Action::Save)
                        .map(|()| "saved".to_owned())
                        .map_err(|e| e.to_string())
                })
                .err()
            })
            .collect();
        Update::QuitSaves(if failures.is_empty() {
            Ok(format!("saved {} VM(s)", ids.len()))
        } else {
            Err(failures.join("; "))
        })
    }

    fn start(&self, entry: &VmEntry) -> Update {
        let saved = self.supervisor.state(entry).is_saved();
        match self.supervisor.start(entry) {
            Ok(()) => {
                self.send(Update::Started {
                    id: entry.id.clone(),
                    name: entry.name().to_owned(),
                });
                let word = if saved { "restored" } else { "started" };
                Update::Done(Ok(format!("{} {word}", entry.name())))
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

/// A new file name in `dir` (made if missing): `screenshot-<unix seconds>.png`, with
/// `-2`, `-3`... if taken, so no screenshot overwrites another.
fn screenshot_path(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut path = dir.join(format!("screenshot-{secs}.png"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("screenshot-{secs}-{n}.png"));
        n += 1;
    }
    Ok(path)
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
