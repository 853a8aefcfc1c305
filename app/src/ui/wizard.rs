//! The New VM wizard: one form (name, OS, CPUs, memory, disk, network) checked as the
//! user types, each problem shown beside its field (`vm_config::check`), and "Create"
//! enabled only when there is none. CPUs and memory are bounded by the host. Create
//! builds what the VM needs first, with progress and a Cancel: the demo Linux image
//! (once, shared), or a Debian 12 of the VM's own with the account asked for here
//! (checked as the builder checks it).

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use eframe::egui::{self, Color32, RichText};

use crate::host::HostInfo;
use crate::images::{BuildStatus, Debian12Request, ImageBuild, Privilege};
use crate::supervisor::Programs;
use crate::vm_config::{self, DiskConfig, DisplaySize, Field, OsSource, Problem, VmConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsChoice {
    SelfTest,
    Kernel,
    DemoLinux,
    Debian12,
}

/// What the wizard ends with.
#[derive(Debug, Clone, PartialEq)]
pub enum WizardOutcome {
    /// Make the VM; `image`: a directory holding its operating system's files (a
    /// Debian 12 built for it), to be moved into the VM's directory.
    Create {
        config: Box<VmConfig>,
        start: bool,
        image: Option<PathBuf>,
    },
    Cancel,
}

/// Smallest Debian 12 disk the wizard offers: the system takes about 1 GiB.
pub const DEBIAN12_MIN_DISK_GIB: u64 = 2;

pub struct Wizard {
    host: HostInfo,
    pub name: String,
    pub os: OsChoice,
    pub kernel: String,
    pub initrd: String,
    pub cpus: u8,
    /// Typed as text so that any number can be entered and checked.
    pub memory: String,
    pub disk: bool,
    pub disk_gib: u64,
    pub network: bool,
    pub start_after: bool,
    /// The Debian 12 account.
    pub user: String,
    pub password: String,
    pub password_again: String,
    /// The name field takes the keyboard when the wizard opens.
    focus_name: bool,
    /// A file dialog open for one of the path fields.
    picking: Option<Picking>,
    /// The last check: the form and names it was for, and its problems.
    checked: Option<Checked>,
    /// Where the demo Linux image is, or where to build it (`None`: not known, as in
    /// tests of the form alone; Create then creates at once).
    demo: Option<DemoImagePlan>,
    /// How to build a Debian 12 for a new VM (`None`: not known, as in tests of the
    /// form alone; the choice is then not offered).
    debian12: Option<Debian12Plan>,
    /// The image being built, and the VM to create when it is.
    building: Option<Building>,
    /// Why the last build did not finish.
    build_failed: Option<String>,
}

/// The demo Linux image: found already, or to be built by `builder` into `build_to`.
#[derive(Debug, Clone)]
pub struct DemoImagePlan {
    pub present: bool,
    pub builder: PathBuf,
    pub build_to: Option<PathBuf>,
}

impl DemoImagePlan {
    pub fn of(programs: &Programs) -> DemoImagePlan {
        DemoImagePlan {
            present: programs.demo_image().is_ok(),
            builder: programs.image_builder(),
            build_to: programs.demo_image_home(),
        }
    }

    /// Where to build the image, when Create must build it first.
    fn needs_build(&self) -> Option<&PathBuf> {
        self.build_to.as_ref().filter(|_| !self.present)
    }
}

/// Where and how the wizard builds a Debian 12: into a hidden directory of the VM
/// library (the same filesystem as the VM's directory, where it is moved), with the
/// builder's cache, as root or through pkexec.
#[derive(Debug, Clone)]
pub struct Debian12Plan {
    pub builder: PathBuf,
    pub build_in: PathBuf,
    pub cache: Option<PathBuf>,
    pub privilege: Privilege,
}

impl Debian12Plan {
    pub fn of(programs: &Programs, library: &std::path::Path) -> Debian12Plan {
        Debian12Plan {
            builder: programs.image_builder(),
            build_in: library.to_owned(),
            cache: None,
            privilege: Privilege::of_this_process(),
        }
    }

    /// A directory no other build uses (hidden: the library skips it). What builds of
    /// app processes that are gone (killed, crashed) left is removed first.
    fn fresh_out(&self) -> PathBuf {
        use std::time::{SystemTime, UNIX_EPOCH};
        remove_orphan_builds(&self.build_in);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.build_in
            .join(format!(".debian12-{}-{nanos}", std::process::id()))
    }
}

/// `.debian12-<pid>-<n>` (and its `.partial` side directory) in `dir` for every `pid`
/// that no longer runs.
fn remove_orphan_builds(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .trim_start_matches('.')
            .strip_prefix("debian12-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A build under way: what it makes, and the VM to create when it is done.
struct Building {
    build: ImageBuild,
    what: &'static str,
    config: VmConfig,
    start: bool,
    /// The Debian 12 image's directory (moved into the VM's); `None` for the shared
    /// demo image.
    image: Option<PathBuf>,
}

type Checked = ((VmConfig, Vec<String>), Vec<Problem>);

/// A native file dialog (`rfd`: the desktop portal) on its own thread: it blocks until
/// the user chooses or cancels.
struct Picking {
    kind: Kind,
    chosen: Receiver<Option<PathBuf>>,
}

const ERROR: Color32 = Color32::from_rgb(0xe0, 0x40, 0x40);

impl Wizard {
    pub fn new(host: HostInfo) -> Wizard {
        let memory = host.recommended_memory_mib().min(512).to_string();
        Wizard {
            host,
            name: String::new(),
            os: OsChoice::SelfTest,
            kernel: String::new(),
            initrd: String::new(),
            cpus: 1,
            memory,
            disk: false,
            disk_gib: 8,
            network: false,
            start_after: true,
            user: String::new(),
            password: String::new(),
            password_again: String::new(),
            focus_name: true,
            picking: None,
            checked: None,
            demo: None,
            debian12: None,
            building: None,
            build_failed: None,
        }
    }

    /// With the demo Linux image found or built on Create as `plan` says.
    pub fn with_demo_image(mut self, plan: DemoImagePlan) -> Wizard {
        self.demo = Some(plan);
        self
    }

    /// With Debian 12 offered, built on Create as `plan` says.
    pub fn with_debian12(mut self, plan: Debian12Plan) -> Wizard {
        self.debian12 = Some(plan);
        self
    }

    /// The VM the form describes, or why the memory field is not a number.
    pub fn config(&self) -> Result<VmConfig, String> {
        let memory_mib: u64 = self
            .memory
            .trim()
            .parse()
            .map_err(|_| "the memory is a number of MiB, e.g. 512".to_owned())?;
        let path = |s: &str| PathBuf::from(s.trim());
        let os = match self.os {
            OsChoice::SelfTest => OsSource::SelfTest,
            OsChoice::DemoLinux => OsSource::DemoLinux,
            // The command line is the built image's, filled in when it is done.
            OsChoice::Debian12 => OsSource::debian12(self.user.trim(), ""),
            OsChoice::Kernel => OsSource::Kernel {
                kernel: path(&self.kernel),
                initrd: Some(path(&self.initrd)).filter(|p| !p.as_os_str().is_empty()),
                cmdline: String::new(),
            },
        };
        // A Debian 12's disk is its own qcow2 (sized by the builder), and it has a
        // network card: it is a whole system.
        let debian = self.os == OsChoice::Debian12;
        Ok(VmConfig {
            name: self.name.trim().to_owned(),
            os,
            cpus: self.cpus,
            memory_mib,
            disk: (self.disk && !debian).then_some(DiskConfig {
                size_gib: self.disk_gib,
            }),
            network: self.network || debian,
            display: DisplaySize::default(),
            link: Default::default(),
            window: Default::default(),
            mac: None,
            resources: Default::default(),
        })
    }

    /// Draws the form; returns what the user decided, once they decide.
    pub fn ui(&mut self, ui: &mut egui::Ui, taken: &[String]) -> Option<WizardOutcome> {
        if self.building.is_some() {
            return self.build_ui(ui);
        }
        self.take_picked();
        let config = self.config();
        let problems = self.problems(&config, taken);
        let show = |ui: &mut egui::Ui, field: Field| {
            for p in problems.iter().filter(|p| p.field() == field) {
                ui.label(RichText::new(p.to_string()).color(ERROR));
            }
        };
        ui.heading("New VM");
        let label = ui.label("Name");
        let name = ui
            .add(egui::TextEdit::singleline(&mut self.name).hint_text("My VM"))
            .labelled_by(label.id);
        if std::mem::take(&mut self.focus_name) {
            name.request_focus();
        }
        // Enter in the name field is "Create", when the form is complete.
        let enter = name.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        show(ui, Field::Name);

        ui.separator();
        ui.label("Operating system");
        ui.radio_value(&mut self.os, OsChoice::SelfTest, "Vireo self-test")
            .on_hover_text("The probe guest's self-test screen: runs on any host with KVM");
        ui.radio_value(&mut self.os, OsChoice::Kernel, "Linux kernel + initrd");
        if self.os == OsChoice::Kernel {
            self.path_field(ui, "Kernel file", Kind::Kernel);
            show(ui, Field::Kernel);
            self.path_field(ui, "Initrd file (optional)", Kind::Initrd);
            show(ui, Field::Initrd);
        }
        let demo = self.host.runs_stock_linux();
        ui.add_enabled_ui(demo.is_ok(), |ui| {
            ui.radio_value(&mut self.os, OsChoice::DemoLinux, "Vireo demo Linux");
        });
        if let Err(why) = &demo {
            ui.label(RichText::new(format!("Vireo demo Linux {why}")).weak());
            if self.os == OsChoice::DemoLinux {
                self.os = OsChoice::SelfTest;
            }
        }
        let build = self.demo.as_ref().and_then(DemoImagePlan::needs_build);
        if self.os == OsChoice::DemoLinux && build.is_some() {
            ui.label(
                RichText::new(
                    "Create first builds the demo Linux image: Debian's kernel and busybox \
                     with the Vireo agent (downloaded once, then kept).",
                )
                .weak(),
            );
        }
        let account_ok = self.debian12_choice(ui, &demo);
        if let Some(why) = &self.build_failed {
            ui.label(RichText::new(why).color(ERROR));
        }
        show(ui, Field::Os);

        ui.separator();
        let max_cpus = u8::try_from(self.host.cpus).unwrap_or(u8::MAX).max(1);
        ui.add(egui::Slider::new(&mut self.cpus, 1..=max_cpus).text("CPUs"));
        show(ui, Field::Cpus);
        self.memory_field(ui);
        if let Err(why) = &config {
            ui.label(RichText::new(why).color(ERROR));
        }
        show(ui, Field::Memory);
        let debian = self.os == OsChoice::Debian12;
        if debian {
            let min = DEBIAN12_MIN_DISK_GIB;
            self.disk_gib = self.disk_gib.max(min);
            ui.add(egui::Slider::new(&mut self.disk_gib, min..=512).text("GiB system disk"));
        } else {
            ui.checkbox(&mut self.disk, "Disk");
            if self.disk {
                ui.add(egui::Slider::new(&mut self.disk_gib, 1..=512).text("GiB"));
            }
        }
        show(ui, Field::Disk);
        let mut network = self.network || debian;
        ui.add_enabled_ui(!debian, |ui| ui.checkbox(&mut network, "Network"));
        if !debian {
            self.network = network;
        }
        ui.checkbox(&mut self.start_after, "Start it now");

        ui.separator();
        let mut outcome = None;
        ui.horizontal(|ui| {
            let ready = config.is_ok() && problems.is_empty() && account_ok;
            if ui.add_enabled(ready, egui::Button::new("Create")).clicked() || (enter && ready) {
                if let Ok(config) = self.config() {
                    outcome = self.create(ui.ctx(), config);
                }
            }
            if ui.button("Cancel").clicked() {
                outcome = Some(WizardOutcome::Cancel);
            }
        });
        outcome
    }

    /// Create: at once, or once the image it needs is built.
    fn create(&mut self, ctx: &egui::Context, config: VmConfig) -> Option<WizardOutcome> {
        let start = self.start_after;
        if let OsSource::Debian12 { .. } = config.os {
            return self.create_debian12(ctx, config);
        }
        let build_to = match config.os {
            OsSource::DemoLinux => self.demo.as_ref().and_then(DemoImagePlan::needs_build),
            _ => None,
        };
        let Some(build_to) = build_to else {
            return Some(WizardOutcome::Create {
                config: Box::new(config),
                start,
                image: None,
            });
        };
        let builder = self.demo.as_ref().map(|d| d.builder.clone())?;
        let ctx = ctx.clone();
        match ImageBuild::start_demo(&builder, build_to, move || ctx.request_repaint()) {
            Ok(build) => {
                self.build_failed = None;
                self.building = Some(Building {
                    build,
                    what: "Building the Vireo demo Linux image",
                    config,
                    start,
                    image: None,
                });
            }
            Err(why) => self.build_failed = Some(why),
        }
        None
    }

    /// Starts the build of this VM's own Debian 12.
    fn create_debian12(&mut self, ctx: &egui::Context, config: VmConfig) -> Option<WizardOutcome> {
        let plan = self.debian12.as_ref()?;
        let request = Debian12Request {
            builder: plan.builder.clone(),
            user: self.user.trim().to_owned(),
            password: self.password.clone(),
            disk_gib: self.disk_gib,
            cache: plan.cache.clone(),
        };
        let out = plan.fresh_out();
        let ctx = ctx.clone();
        let wake = move || ctx.request_repaint();
        match ImageBuild::start_debian12(&request, plan.privilege, &out, wake) {
            Ok(build) => {
                self.build_failed = None;
                self.building = Some(Building {
                    build,
                    what: "Building Debian 12 for this VM",
                    config,
                    start: self.start_after,
                    image: Some(out),
                });
            }
            Err(why) => self.build_failed = Some(why),
        }
        None
    }

    /// The Debian 12 choice and, when chosen, its account fields; false while the
    /// account has a problem (each shown under its field).
    fn debian12_choice(&mut self, ui: &mut egui::Ui, stock: &Result<(), String>) -> bool {
        if self.debian12.is_none() {
            return true;
        }
        ui.add_enabled_ui(stock.is_ok(), |ui| {
            ui.radio_value(&mut self.os, OsChoice::Debian12, "Debian 12 (full)")
                .on_hover_text("A whole Debian 12 with your account, built for this VM");
        });
        if let Err(why) = stock {
            ui.label(RichText::new(format!("Debian 12 (full) {why}")).weak());
            if self.os == OsChoice::Debian12 {
                self.os = OsChoice::SelfTest;
            }
        }
        if self.os != OsChoice::Debian12 {
            return true;
        }
        ui.label(
            RichText::new(
                "Create builds Debian 12 for this VM (a couple of minutes; the base system \
                 is downloaded once). Building needs root: you may be asked for your \
                 password.",
            )
            .weak(),
        );
        let (user_problem, password_problem) = self.account_problems();
        let field = |ui: &mut egui::Ui, label: &str, text: &mut String, masked: bool| {
            ui.horizontal(|ui| {
                let label = ui.label(label);
                ui.add(egui::TextEdit::singleline(text).password(masked))
                    .labelled_by(label.id);
            });
        };
        field(ui, "User name", &mut self.user, false);
        if let Some(why) = &user_problem {
            ui.label(RichText::new(why).color(ERROR));
        }
        field(ui, "Password", &mut self.password, true);
        field(ui, "Password again", &mut self.password_again, true);
        if let Some(why) = &password_problem {
            ui.label(RichText::new(why).color(ERROR));
        }
        user_problem.is_none() && password_problem.is_none()
    }

    /// What is wrong with the account, as the builder (`debian12::check_account`)
    /// judges it: the user name's problem and the password's.
    fn account_problems(&self) -> (Option<String>, Option<String>) {
        use vireo_installers::debian12;
        let user = self.user.trim();
        let user_problem = if user.is_empty() {
            Some("give the account a user name".to_owned())
        } else {
            debian12::check_user(user).err().map(|e| e.to_string())
        };
        let password_problem = if self.password.is_empty() {
            Some("give the account a password".to_owned())
        } else if let Err(debian12::Error::BadPassword) =
            debian12::check_account("a", &self.password)
        {
            Some(debian12::Error::BadPassword.to_string())
        } else if self.password != self.password_again {
            Some("the two passwords differ".to_owned())
        } else {
            None
        };
        (user_problem, password_problem)
    }

    /// The image's build: progress, and a way out.
    fn build_ui(&mut self, ui: &mut egui::Ui) -> Option<WizardOutcome> {
        let building = self.building.as_mut()?;
        let status = building.build.status();
        ui.heading("New VM");
        ui.label(building.what);
        let message = match &status {
            BuildStatus::Running { message, .. } if !message.is_empty() => message.clone(),
            _ => "starting…".into(),
        };
        ui.add(
            egui::ProgressBar::new(status.fraction())
                .show_percentage()
                .desired_width(400.0),
        );
        ui.label(RichText::new(message).weak());
        let cancel = ui.button("Cancel build").clicked();
        match status {
            BuildStatus::Finished(_) => {
                let Building {
                    mut config,
                    start,
                    image,
                    ..
                } = self.building.take()?;
                match &image {
                    Some(dir) => {
                        if let Err(why) = adopt_cmdline(&mut config, dir) {
                            let _ = std::fs::remove_dir_all(dir);
                            self.build_failed = Some(why);
                            return None;
                        }
                    }
                    None => {
                        if let Some(plan) = &mut self.demo {
                            plan.present = true;
                        }
                    }
                }
                Some(WizardOutcome::Create {
                    config: Box::new(config),
                    start,
                    image,
                })
            }
            BuildStatus::Failed(why) => {
                self.building = None;
                self.build_failed = Some(why);
                None
            }
            BuildStatus::Running { .. } => {
                if cancel {
                    if let Some(mut building) = self.building.take() {
                        building.build.cancel();
                    }
                    self.build_failed = Some("The image build was cancelled.".into());
                }
                None
            }
        }
    }

    fn path_field(&mut self, ui: &mut egui::Ui, label: &str, kind: Kind) {
        let value = match kind {
            Kind::Kernel => &mut self.kernel,
            Kind::Initrd => &mut self.initrd,
        };
        let mut browse = false;
        ui.horizontal(|ui| {
            let label = ui.label(label);
            ui.add(egui::TextEdit::singleline(value).hint_text("/path/to/file"))
                .labelled_by(label.id);
            browse = ui
                .add_enabled(self.picking.is_none(), egui::Button::new("Browse…"))
                .clicked();
        });
        if browse {
            let (tx, chosen) = mpsc::channel();
            let ctx = ui.ctx().clone();
            let spawned = std::thread::Builder::new()
                .name("file-dialog".into())
                .spawn(move || {
                    let _ = tx.send(rfd::FileDialog::new().pick_file());
                    ctx.request_repaint();
                });
            if spawned.is_ok() {
                self.picking = Some(Picking { kind, chosen });
            }
        }
    }

    /// What is wrong with `config`, checked again only when the form or the names in use
    /// changed: the check looks at the kernel and initrd files, which is not for every
    /// frame.
    fn problems(&mut self, config: &Result<VmConfig, String>, taken: &[String]) -> Vec<Problem> {
        let Ok(config) = config else {
            return Vec::new();
        };
        let key = (config.clone(), taken.to_vec());
        match &self.checked {
            Some((k, problems)) if *k == key => problems.clone(),
            _ => {
                let problems = vm_config::check(config, &self.host, taken);
                self.checked = Some((key, problems.clone()));
                problems
            }
        }
    }

    /// Puts a path chosen in the file dialog into its field.
    fn take_picked(&mut self) {
        let Some(picking) = &self.picking else {
            return;
        };
        let chosen = match picking.chosen.try_recv() {
            Ok(chosen) => chosen,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => None,
        };
        if let Some(path) = chosen {
            let text = path.display().to_string();
            match picking.kind {
                Kind::Kernel => self.kernel = text,
                Kind::Initrd => self.initrd = text,
            }
        }
        self.picking = None;
    }

    fn memory_field(&mut self, ui: &mut egui::Ui) {
        let host_mib = self.host.memory_mib.max(vm_config::MIN_MEMORY_MIB);
        ui.horizontal(|ui| {
            let label = ui.label("Memory (MiB)");
            ui.add(egui::TextEdit::singleline(&mut self.memory).desired_width(80.0))
                .labelled_by(label.id);
            let mut mib = self
                .memory
                .trim()
                .parse::<u64>()
                .unwrap_or(vm_config::MIN_MEMORY_MIB);
            let slider = egui::Slider::new(&mut mib, vm_config::MIN_MEMORY_MIB..=host_mib)
                .logarithmic(true)
                .show_value(false)
                .text("of the host's");
            if ui.add(slider).changed() {
                // Whole MiB multiples of 64 keep the numbers readable.
                self.memory = (mib / 64 * 64).max(vm_config::MIN_MEMORY_MIB).to_string();
            }
        });
        ui.label(
            RichText::new(format!(
                "This host has {} MiB; {} MiB is a good size for a new VM.",
                self.host.memory_mib,
                self.host.recommended_memory_mib()
            ))
            .weak(),
        );
    }
}

/// Puts the command line a Debian 12 build wrote (`cmdline` in `dir`) into `config`.
fn adopt_cmdline(config: &mut VmConfig, dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join("cmdline");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let OsSource::Debian12 { cmdline, .. } = &mut config.os {
        *cmdline = text.trim().to_owned();
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Kernel,
    Initrd,
}

#[cfg(test)]
mod tests {
    use egui_kittest::kittest::{NodeT, Queryable};
    use egui_kittest::Harness;

    use super::*;
    use crate::host::KvmKind;
    use crate::ui::kittest_support::retype;

    fn pvm_host() -> HostInfo {
        HostInfo {
            cpus: 2,
            memory_mib: 4096,
            kvm: KvmKind::Pvm,
        }
    }

    type State = (Wizard, Vec<String>, Option<WizardOutcome>);

    fn harness(taken: &[&str]) -> Harness<'static, State> {
        harness_on(pvm_host(), taken)
    }

    /// Debian 12 offered with a builder that must never run in these tests.
    fn harness_on(host: HostInfo, taken: &[&str]) -> Harness<'static, State> {
        let plan = Debian12Plan {
            builder: "/nonexistent/vireo-image".into(),
            build_in: "/nonexistent/vms".into(),
            cache: None,
            privilege: Privilege::Root,
        };
        let state = (
            Wizard::new(host).with_debian12(plan),
            taken.iter().map(|s| s.to_string()).collect(),
            None,
        );
        let mut harness = Harness::new_ui_state(
            |ui, (wizard, taken, outcome): &mut State| {
                if let Some(o) = wizard.ui(ui, taken) {
                    *outcome = Some(o);
                }
            },
            state,
        );
        harness.set_size(egui::vec2(600.0, 900.0));
        harness.run();
        harness
    }

    fn create_enabled(harness: &Harness<'static, State>) -> bool {
        !harness
            .get_by_label("Create")
            .accesskit_node()
            .is_disabled()
    }

    #[test]
    fn a_name_is_needed_and_must_be_free() {
        let mut harness = harness(&["Work"]);
        harness.get_by_label("give the VM a name");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "Name", "work");
        harness.get_by_label("a VM named \"work\" already exists: pick another name");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "Name", "Play");
        assert!(harness.query_by_label_contains("already exists").is_none());
        assert!(create_enabled(&harness));
        harness.get_by_label("Create").click();
        harness.run();
        let Some(WizardOutcome::Create { config, start, .. }) = &harness.state().2 else {
            panic!("no outcome: {:?}", harness.state().2);
        };
        assert_eq!(config.name, "Play");
        assert_eq!(config.os, OsSource::SelfTest);
        assert!(start);
    }

    #[test]
    fn memory_beyond_the_host_or_not_a_number_is_named() {
        let mut harness = harness(&[]);
        retype(&mut harness, "Name", "Big");
        retype(&mut harness, "Memory (MiB)", "99999");
        harness.get_by_label("99999 MiB is more memory than this host has (4096 MiB)");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "Memory (MiB)", "lots");
        harness.get_by_label("the memory is a number of MiB, e.g. 512");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "Memory (MiB)", "1024");
        assert!(harness
            .query_by_label_contains("more memory than")
            .is_none());
        assert!(create_enabled(&harness));
    }

    #[test]
    fn a_kernel_file_must_exist() {
        let mut harness = harness(&[]);
        retype(&mut harness, "Name", "Linux");
        harness.get_by_label("Linux kernel + initrd").click();
        harness.run();
        harness.get_by_label("choose a kernel file");
        retype(&mut harness, "Kernel file", "/nonexistent/vmlinuz");
        harness.get_by_label("the kernel file /nonexistent/vmlinuz does not exist");
        assert!(!create_enabled(&harness));
        // Any file that exists will do for the form (the engine judges its format).
        let kernel = std::env::current_exe().unwrap();
        retype(&mut harness, "Kernel file", kernel.to_str().unwrap());
        assert!(harness.query_by_label_contains("does not exist").is_none());
        retype(
            &mut harness,
            "Initrd file (optional)",
            "/nonexistent/initrd",
        );
        harness.get_by_label("the initrd file /nonexistent/initrd does not exist");
        assert!(!create_enabled(&harness));
    }

    #[test]
    fn demo_linux_is_disabled_on_pvm_with_the_reason() {
        let mut harness = harness(&[]);
        let demo = harness.get_by_label("Vireo demo Linux");
        assert!(demo.accesskit_node().is_disabled());
        harness
            .get_by_label_contains("Vireo demo Linux needs hardware virtualization (VT-x/AMD-V)");
        harness.get_by_label("Vireo demo Linux").click();
        harness.run();
        assert_eq!(harness.state().0.os, OsChoice::SelfTest);
    }

    #[test]
    fn debian12_is_disabled_on_pvm_with_the_reason() {
        let mut harness = harness(&[]);
        assert!(harness
            .get_by_label("Debian 12 (full)")
            .accesskit_node()
            .is_disabled());
        harness.get_by_label_contains("Debian 12 (full) needs hardware virtualization");
        harness.get_by_label("Debian 12 (full)").click();
        harness.run();
        assert_eq!(harness.state().0.os, OsChoice::SelfTest);
        assert!(harness.query_by_label("User name").is_none());
    }

    #[test]
    fn the_debian12_account_is_checked_as_the_builder_checks_it() {
        let host = HostInfo {
            kvm: KvmKind::Hardware,
            ..pvm_host()
        };
        let mut harness = harness_on(host, &[]);
        retype(&mut harness, "Name", "Deb");
        harness.get_by_label("Debian 12 (full)").click();
        harness.run();
        harness.get_by_label("give the account a user name");
        harness.get_by_label("give the account a password");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "User name", "Alice Smith");
        harness.get_by_label_contains("not a valid user name for Debian: \"Alice Smith\"");
        retype(&mut harness, "User name", "root");
        harness.get_by_label_contains("not a valid user name for Debian: \"root\"");
        retype(&mut harness, "User name", "alice");
        assert!(harness.query_by_label_contains("user name").is_none());
        retype(&mut harness, "Password", "s3cret");
        harness.get_by_label("the two passwords differ");
        assert!(!create_enabled(&harness));
        retype(&mut harness, "Password again", "s3cret");
        assert!(harness.query_by_label("the two passwords differ").is_none());
        assert!(create_enabled(&harness));
        // Masked: the field shows (and tells screen readers) no password.
        let shown = harness.get_by_label("Password").accesskit_node().value();
        assert!(
            !shown.as_deref().unwrap_or("").contains("s3cret"),
            "{shown:?}"
        );
        let config = harness.state().0.config().unwrap();
        assert_eq!(config.os.label(), "Debian 12");
        assert!(config.network && config.disk.is_none());
        assert!(
            matches!(&config.os, OsSource::Debian12 { user, disk, .. } if user == "alice" && disk.as_os_str() == "disk.qcow2")
        );
    }

    #[test]
    fn builds_of_gone_processes_are_swept_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("vireo-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Pid 0 is never a process; this test's own is.
        let me = std::process::id();
        let names = [
            ".debian12-0-1".to_owned(),
            "..debian12-0-1.partial".to_owned(),
            format!(".debian12-{me}-2"),
            format!("..debian12-{me}-2.partial"),
            "my-vm".to_owned(),
        ];
        for name in &names {
            std::fs::create_dir_all(dir.join(name).join("sub")).unwrap();
        }
        remove_orphan_builds(&dir);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [names[3].clone(), names[2].clone(), names[4].clone()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cancel_ends_the_wizard() {
        let mut harness = harness(&[]);
        harness.get_by_label("Cancel").click();
        harness.run();
        assert_eq!(harness.state().2, Some(WizardOutcome::Cancel));
    }
}
