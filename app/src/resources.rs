//! A VM's share of the host, `[resources]` in vm.toml: CPU weight and limit, disk and
//! network bandwidth caps, and whether idle guest memory goes back to the host. The engine enforces them (cgroups and token buckets);
//! here they are checked, turned into its flags at start, and into control requests
//! when the user changes them while the VM runs (they take effect at once).

use serde::{Deserialize, Serialize};
use vireo_vmm::control::protocol::Request;
use vireo_vmm::devices::virtio::balloon::policy::BalloonPolicy;
use vireo_vmm::devices::virtio::rate_limit::IoLimits;
use vireo_vmm::resources::cpu::{WEIGHT_DEFAULT, WEIGHT_MAX, WEIGHT_MIN};

/// The most a bandwidth cap may be, MiB/s: beyond it, leave the cap out.
pub const MAX_MIB_S: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Weight against other VMs, 1-10000 (100: as any process). `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// At most this many percent of one host CPU for the whole VM. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<u32>,
    /// The disk's bandwidth cap, MiB/s. `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib_s: Option<u64>,
    /// The network card's bandwidth cap, MiB/s (each way). `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_mib_s: Option<u64>,
    /// The engine gives the guest's idle memory back to the host (the balloon's
    /// give-back-idle policy) and returns it when the guest needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub give_back_idle_memory: bool,
}

/// One value the engine would refuse, phrased as what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the CPU weight is {WEIGHT_MIN} to {WEIGHT_MAX} (100: as much as any program)")]
    Weight,
    #[error("the CPU limit is 1 to {max} percent (100 per host CPU)")]
    Limit { max: u32 },
    #[error("a {0} cap is 1 to {MAX_MIB_S} MiB/s (leave it empty for none)")]
    Bandwidth(&'static str),
}

impl Resources {
    pub fn is_default(&self) -> bool {
        *self == Resources::default()
    }

    /// A few words for the library's row ("≤ 50 % CPU · disk ≤ 20 MiB/s"), or `None`
    /// when nothing is set.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(w) = self.cpu_weight {
            parts.push(format!("CPU weight {w}"));
        }
        if let Some(l) = self.cpu_limit_percent {
            parts.push(format!("≤ {l} % CPU"));
        }
        if let Some(d) = self.disk_mib_s {
            parts.push(format!("disk ≤ {d} MiB/s"));
        }
        if let Some(n) = self.net_mib_s {
            parts.push(format!("net ≤ {n} MiB/s"));
        }
        if self.give_back_idle_memory {
            parts.push("gives idle memory back".into());
        }
        (!parts.is_empty()).then(|| parts.join(" · "))
    }

    /// What the engine would refuse on a host with `host_cpus` CPUs.
    pub fn check(&self, host_cpus: u32) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self
            .cpu_weight
            .is_some_and(|w| !(WEIGHT_MIN..=WEIGHT_MAX).contains(&w))
        {
            problems.push(Problem::Weight);
        }
        let max = 100 * host_cpus.max(1);
        if self
            .cpu_limit_percent
            .is_some_and(|l| !(1..=max).contains(&l))
        {
            problems.push(Problem::Limit { max });
        }
        for (cap, what) in [(self.disk_mib_s, "disk"), (self.net_mib_s, "network")] {
            if cap.is_some_and(|c| !(1..=MAX_MIB_S).contains(&c)) {
                problems.push(Problem::Bandwidth(what));
            }
        }
        problems
    }

    /// The engine's flags beyond the devices' specs (`--cpu-weight`, `--cpu-limit`,
    /// `--balloon-policy`).
    pub fn engine_flags(&self) -> Vec<(&'static str, String)> {
        let mut flags = Vec::new();
        if let Some(w) = self.cpu_weight {
            flags.push(("--cpu-weight", w.to_string()));
        }
        if let Some(l) = self.cpu_limit_percent {
            flags.push(("--cpu-limit", l.to_string()));
        }
        if self.give_back_idle_memory {
            flags.push(("--balloon-policy", "give-back-idle".into()));
        }
        flags
    }

    /// What to append to a `--disk` spec.
    pub fn disk_spec(&self) -> String {
        cap_spec(self.disk_mib_s)
    }

    /// What to append to a `--net` spec.
    pub fn net_spec(&self) -> String {
        cap_spec(self.net_mib_s)
    }

    /// The control requests that take a running VM from `old` to these: only what
    /// changed (asking for the default weight would give a VM without one a cgroup).
    pub fn changes_from(&self, old: &Resources, disk: bool, net: bool) -> Vec<Request> {
        let mut requests = Vec::new();
        let weight =
            (self.cpu_weight != old.cpu_weight).then(|| self.cpu_weight.unwrap_or(WEIGHT_DEFAULT));
        // 0 lifts the limit.
        let limit = (self.cpu_limit_percent != old.cpu_limit_percent)
            .then(|| self.cpu_limit_percent.unwrap_or(0));
        if weight.is_some() || limit.is_some() {
            requests.push(Request::SetCpu {
                weight,
                limit,
                pin: None,
            });
        }
        if self.give_back_idle_memory != old.give_back_idle_memory {
            requests.push(Request::BalloonPolicy {
                policy: if self.give_back_idle_memory {
                    BalloonPolicy::GiveBackIdle
                } else {
                    BalloonPolicy::Fixed
                },
            });
        }
        if disk && self.disk_mib_s != old.disk_mib_s {
            requests.push(Request::SetLimits {
                disk: Some(0),
                net: None,
                limits: io_limits(self.disk_mib_s),
            });
        }
        if net && self.net_mib_s != old.net_mib_s {
            requests.push(Request::SetLimits {
                disk: None,
                net: Some(0),
                limits: io_limits(self.net_mib_s),
            });
        }
        requests
    }
}

fn cap_spec(mib_s: Option<u64>) -> String {
    mib_s.map(|m| format!(",bw={m}M")).unwrap_or_default()
}

fn io_limits(mib_s: Option<u64>) -> IoLimits {
    IoLimits {
        bw: mib_s.map(|m| m << 20),
        ..IoLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_engine_refuses_are_named() {
        let ok = Resources {
            cpu_weight: Some(70),
            cpu_limit_percent: Some(150),
            disk_mib_s: Some(20),
            net_mib_s: Some(8),
            give_back_idle_memory: true,
        };
        assert!(ok.check(2).is_empty());
        let bad = Resources {
            cpu_weight: Some(0),
            cpu_limit_percent: Some(250),
            disk_mib_s: Some(0),
            net_mib_s: Some(MAX_MIB_S + 1),
            give_back_idle_memory: false,
        };
        let texts: Vec<String> = bad.check(2).iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert!(texts[1].contains("1 to 200 percent"), "{texts:?}");
        assert!(texts[2].starts_with("a disk cap"), "{texts:?}");
    }

    #[test]
    fn the_row_says_what_is_set() {
        assert_eq!(Resources::default().summary(), None);
        let r = Resources {
            cpu_limit_percent: Some(50),
            disk_mib_s: Some(20),
            ..Resources::default()
        };
        assert_eq!(r.summary().unwrap(), "≤ 50 % CPU · disk ≤ 20 MiB/s");
    }

    #[test]
    fn flags_are_what_the_engine_parses() {
        let r = Resources {
            cpu_weight: Some(30),
            cpu_limit_percent: Some(50),
            disk_mib_s: Some(20),
            net_mib_s: None,
            give_back_idle_memory: true,
        };
        assert_eq!(
            r.engine_flags(),
            [
                ("--cpu-weight", "30".into()),
                ("--cpu-limit", "50".into()),
                ("--balloon-policy", "give-back-idle".into())
            ]
        );
        let spec = format!("path=/tmp/d.img,format=raw{}", r.disk_spec());
        let disk: vireo_vmm::devices::virtio::block::config::DiskConfig = spec.parse().unwrap();
        assert_eq!(disk.limits.bw, Some(20 << 20));
        assert_eq!(r.net_spec(), "");
        assert!(Resources::default().engine_flags().is_empty());
    }

    #[test]
    fn a_running_vm_gets_only_what_changed() {
        let old = Resources {
            cpu_weight: Some(70),
            ..Resources::default()
        };
        assert!(old.changes_from(&old, true, true).is_empty());
        // The weight back to the default, a limit and a network cap added.
        let new = Resources {
            cpu_weight: None,
            cpu_limit_percent: Some(50),
            disk_mib_s: None,
            net_mib_s: Some(8),
            give_back_idle_memory: false,
        };
        let requests = new.changes_from(&old, true, true);
        assert_eq!(
            requests,
            [
                Request::SetCpu {
                    weight: Some(WEIGHT_DEFAULT),
                    limit: Some(50),
                    pin: None
                },
                Request::SetLimits {
                    disk: None,
                    net: Some(0),
                    limits: IoLimits {
                        bw: Some(8 << 20),
                        ..IoLimits::default()
                    }
                }
            ]
        );
        // Lifting the limit is 0; a VM without a card gets no network request.
        let lifted = Resources {
            cpu_limit_percent: None,
            give_back_idle_memory: true,
            ..new
        };
        assert_eq!(
            lifted.changes_from(&new, true, false),
            [
                Request::SetCpu {
                    weight: None,
                    limit: Some(0),
                    pin: None
                },
                Request::BalloonPolicy {
                    policy: BalloonPolicy::GiveBackIdle
                }
            ]
        );
    }
}
