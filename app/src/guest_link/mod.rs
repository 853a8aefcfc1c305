//! The app's link to each running VM's guest agent: a thread per VM owning an
//! `AgentClient` (the agent's host client library, which reconnects by itself) over the
//! engine's hybrid vsock socket. It serves the VM's shared folders (the drop folder as
//! share `vireo`, plus those in `[link]`), bridges the host clipboard (`clipboard`), and
//! reports each feature's state (`status`) to whoever started it (the backend thread,
//! which passes it to the VM window). Nothing here runs on the UI thread.
//!
//! `drop_copy` copies files dropped on the VM window into the drop folder.

pub mod clipboard;
pub mod drop_copy;
pub mod host_clipboard;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use vireo_guest_agent::host::{AgentClient, ClientConfig, ClientEvent, Endpoint, ShareConfig};
use vireo_guest_agent::protocol::{Capabilities, Message, AGENT_VSOCK_PORT};

use crate::vm_config::{ClipboardDirection, LinkSettings};
use clipboard::Bridge;
pub use status::{AgentStatus, Feature};

/// The share name of the drop folder: the guest mounts it at `/mnt/vireo/vireo`.
pub const DROP_SHARE: &str = "vireo";
/// The drop folder inside the VM's directory.
pub const DROP_FOLDER: &str = "shared";

/// How often the link thread looks at its inputs while no agent event comes.
const TICK: Duration = Duration::from_millis(100);

/// The drop folder of the VM whose directory is `vm_dir`.
pub fn drop_folder(vm_dir: &Path) -> PathBuf {
    vm_dir.join(DROP_FOLDER)
}

/// What a link needs to know about its VM.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub vm_id: String,
    /// The engine's hybrid vsock socket (`<runtime>/vsock.sock`).
    pub vsock: PathBuf,
    pub vm_dir: PathBuf,
    pub settings: LinkSettings,
}

enum Input {
    /// The host clipboard's owner changed (XFixes).
    HostClipboardChanged,
    Direction(ClipboardDirection),
    /// The VM was resumed: its clock stood still while paused, so set it right now
    /// rather than at the agent's next periodic sync.
    Resumed,
    /// The user asked the guest to shut down: the agent asks too (a guest that does not
    /// listen to the ACPI button still shuts down).
    Shutdown,
    /// A folder to serve from now on; the answer is where the guest mounted it (`None`
    /// while no agent is connected: it mounts it when one connects).
    AddShare(ShareConfig, Sender<Result<Option<String>, String>>),
    Stop,
}

/// How long adding a share waits for the guest's mount.
const ADD_SHARE_WAIT: Duration = Duration::from_secs(15);

/// A running link; dropping it ends the thread (and the connection).
pub struct GuestLink {
    inputs: Sender<Input>,
    thread: Option<JoinHandle<()>>,
}

impl GuestLink {
    /// Starts the link; `report` gets each new status (from the link's thread).
    pub fn start(spec: LinkSpec, report: impl Fn(&AgentStatus) + Send + 'static) -> GuestLink {
        let (inputs, rx) = mpsc::channel();
        let own = inputs.clone();
        let thread = std::thread::Builder::new()
            .name(format!("link-{}", spec.vm_id))
            .spawn(move || Link::new(spec, own, Box::new(report)).run(&rx))
            .ok();
        GuestLink { inputs, thread }
    }

    pub fn set_direction(&self, direction: ClipboardDirection) {
        let _ = self.inputs.send(Input::Direction(direction));
    }

    pub fn resumed(&self) {
        let _ = self.inputs.send(Input::Resumed);
    }

    pub fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown);
    }

    /// Serves one more folder to the running guest; returns where it mounted it, or
    /// `None` if no agent is connected now (it mounts it when one connects).
    pub fn add_share(&self, config: ShareConfig) -> Result<Option<String>, String> {
        let (reply, answer) = mpsc::channel();
        self.inputs
            .send(Input::AddShare(config, reply))
            .map_err(|_| "the guest link has ended".to_owned())?;
        answer
            .recv_timeout(ADD_SHARE_WAIT)
            .map_err(|_| "the guest did not answer in time".to_owned())?
    }
}

impl Drop for GuestLink {
    fn drop(&mut self) {
        let _ = self.inputs.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Link {
    spec: LinkSpec,
    client: AgentClient,
    /// Why the shares could not be served, if they cannot.
    share_error: Option<String>,
    bridge: Bridge,
    status: AgentStatus,
    report: Box<dyn Fn(&AgentStatus) + Send>,
}

impl Link {
    fn new(spec: LinkSpec, own: Sender<Input>, report: Box<dyn Fn(&AgentStatus) + Send>) -> Link {
        let endpoint = Endpoint::HybridVsock {
            path: spec.vsock.clone(),
            port: AGENT_VSOCK_PORT,
        };
        let (client, share_error) = match shares(&spec).and_then(|s| {
            AgentClient::start_sharing(endpoint.clone(), ClientConfig::default(), s)
                .map_err(|e| e.to_string())
        }) {
            Ok(client) => (client, None),
            Err(why) => (
                AgentClient::start(endpoint, ClientConfig::default()),
                Some(why),
            ),
        };
        let host = host_clipboard::open(move || own.send(Input::HostClipboardChanged).is_ok());
        let bridge = Bridge::new(spec.settings.clipboard, host);
        Link {
            spec,
            client,
            share_error,
            bridge,
            status: AgentStatus::no_agent(),
            report,
        }
    }

    fn run(mut self, inputs: &Receiver<Input>) {
        (self.report)(&self.status);
        loop {
            match self.client.events().recv_timeout(TICK) {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            loop {
                match inputs.try_recv() {
                    Ok(Input::HostClipboardChanged) => {
                        let outcome = self.bridge.host_changed(&self.client);
                        self.clipboard_outcome(outcome);
                    }
                    Ok(Input::Direction(direction)) => {
                        self.bridge.direction = direction;
                        let mut status = self.status.clone();
                        status.clipboard = self.clipboard_feature();
                        self.publish(status);
                    }
                    Ok(Input::Resumed) => self.sync_time(),
                    Ok(Input::Shutdown) => self.ask_shutdown(),
                    Ok(Input::AddShare(config, reply)) => {
                        let _ = reply.send(self.add_share(config));
                    }
                    Ok(Input::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
    }

    /// Serves `config` from now on, unless the connected agent has no shared folders
    /// (then nothing is served: the user is told why).
    fn add_share(&self, config: ShareConfig) -> Result<Option<String>, String> {
        let offered = self
            .client
            .peer()
            .map(|hello| hello.capabilities.contains(Capabilities::SHARED_FOLDERS));
        if offered == Some(false) {
            return Err("the guest's agent does not serve shared folders".into());
        }
        self.client.add_share(config).map_err(|e| e.to_string())
    }

    /// Asks the agent to shut the guest down, where one is connected: the second way in
    /// beside the ACPI power button.
    fn ask_shutdown(&self) {
        if self.client.peer().is_none() {
            return;
        }
        if let Err(e) = self.client.shutdown() {
            eprintln!("vireo: {}: the agent's shutdown: {e}", self.spec.vm_id);
        }
    }

    fn sync_time(&self) {
        if self.client.peer().is_none() {
            return;
        }
        match self.client.time_sync_now() {
            Ok(report) => eprintln!(
                "vireo: {}: time after resume: {:?} (offset {:.1} ms)",
                self.spec.vm_id,
                report.correction,
                report.offset_ns as f64 / 1e6
            ),
            Err(e) => eprintln!("vireo: {}: time sync after resume: {e}", self.spec.vm_id),
        }
    }

    fn on_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected(hello) => {
                let mut status = AgentStatus::offered(hello.capabilities);
                status.clipboard = self.clipboard_feature_for(hello.capabilities);
                if let (Feature::Working, Some(why)) = (&status.folders, &self.share_error) {
                    status.folders = Feature::Error(why.clone());
                }
                self.publish(status);
                // The guest gets what the host holds now (a copy made before it was up).
                let outcome = self.bridge.host_changed(&self.client);
                self.clipboard_outcome(outcome);
            }
            ClientEvent::Disconnected => self.publish(AgentStatus::no_agent()),
            ClientEvent::SharesMounted(results) => {
                let mut status = self.status.clone();
                status.folders = match results
                    .into_iter()
                    .find_map(|r| r.result.err().map(|e| (r.name, e)))
                {
                    Some((name, why)) => Feature::Error(format!("{name}: {why}")),
                    None => Feature::Working,
                };
                self.publish(status);
            }
            ClientEvent::Message(Message::DisplayStatus(display)) => {
                let mut status = self.status.clone();
                status.absolute_pointer = display.absolute_pointer;
                status.mouse = if display.absolute_pointer {
                    Feature::Working
                } else {
                    Feature::Error("the guest does not use the tablet".into())
                };
                self.publish(status);
            }
            ClientEvent::Message(Message::ClipboardStatus(clipboard)) => {
                let mut status = self.status.clone();
                status.clipboard_source = Some(clipboard.source);
                self.publish(status);
            }
            ClientEvent::Message(_) => {}
            ClientEvent::Clipboard(event) => {
                let outcome = self.bridge.guest_event(&self.client, event);
                self.clipboard_outcome(outcome);
            }
        }
    }

    /// A bridge step's outcome: an error shows on the clipboard feature until the next
    /// step that works.
    fn clipboard_outcome(&mut self, outcome: Option<Result<String, String>>) {
        let Some(outcome) = outcome else { return };
        let mut status = self.status.clone();
        match outcome {
            Ok(what) => {
                eprintln!("vireo: {}: clipboard: {what}", self.spec.vm_id);
                status.clipboard = self.clipboard_feature();
            }
            Err(why) => {
                eprintln!("vireo: {}: clipboard: {why}", self.spec.vm_id);
                if status.connected {
                    status.clipboard = Feature::Error(why);
                }
            }
        }
        self.publish(status);
    }

    fn clipboard_feature(&self) -> Feature {
        match self.client.peer() {
            Some(hello) if self.status.connected => self.clipboard_feature_for(hello.capabilities),
            _ => Feature::NotInstalled,
        }
    }

    fn clipboard_feature_for(&self, caps: Capabilities) -> Feature {
        if !caps.contains(Capabilities::CLIPBOARD) {
            Feature::NotInstalled
        } else if self.bridge.direction == ClipboardDirection::Off {
            Feature::Off
        } else if let Err(why) = self.bridge.host_ready() {
            Feature::Error(format!("host clipboard: {why}"))
        } else {
            Feature::Working
        }
    }

    /// Reports `status` if it differs from the last one (and logs it: tests read it).
    fn publish(&mut self, status: AgentStatus) {
        if status != self.status {
            eprintln!("vireo: {}: agent: {}", self.spec.vm_id, status.summary());
            self.status = status;
            (self.report)(&self.status);
        }
    }
}

/// The shares to serve: the drop folder (created here, as the agent mounts it at
/// once) and the configured folders.
fn shares(spec: &LinkSpec) -> Result<Vec<ShareConfig>, String> {
    let drop = drop_folder(&spec.vm_dir);
    std::fs::create_dir_all(&drop).map_err(|e| format!("{}: {e}", drop.display()))?;
    let mut shares = vec![ShareConfig {
        name: DROP_SHARE.into(),
        path: drop,
        read_only: false,
    }];
    shares.extend(spec.settings.shared_folders.iter().map(|f| ShareConfig {
        name: f.name.clone(),
        path: f.path.clone(),
        read_only: f.read_only,
    }));
    Ok(shares)
}
