//! What a VM may take of the host, changeable while it runs: the disks' and network
//! card's I/O limits (`devices::virtio::rate_limit`) and the CPU (`cpu`). The control
//! socket's requests for them land here.

pub mod cpu;
pub mod memory;

use std::sync::Arc;

use crate::control::protocol::{Request, Response};
use crate::devices::virtio::rate_limit::{IoLimits, RateLimiter};

/// The limiters of a VM's devices, in command-line order.
#[derive(Default)]
pub struct Resources {
    pub disks: Vec<Arc<RateLimiter>>,
    pub nets: Vec<Arc<RateLimiter>>,
}

impl Resources {
    /// Answers `set-limits`.
    pub fn handle(&self, request: Request) -> Response {
        match request {
            Request::SetLimits { disk, net, limits } => self.set_limits(disk, net, limits),
            Request::SetCpu { weight, limit, pin } => {
                set_cpu(cpu::CpuConfig { weight, limit, pin })
            }
            other => Response::Error {
                message: format!("not a resource request: {other:?}"),
            },
        }
    }

    fn set_limits(&self, disk: Option<usize>, net: Option<usize>, limits: IoLimits) -> Response {
        let (list, index, what) = match (disk, net) {
            (Some(i), None) => (&self.disks, i, "disk"),
            (None, Some(i)) => (&self.nets, i, "network card"),
            _ => return error("set-limits needs exactly one of \"disk\": N or \"net\": N".into()),
        };
        let Some(limiter) = list.get(index) else {
            return error(format!(
                "there is no {what} {index} (the VM has {})",
                list.len()
            ));
        };
        match limiter.set(limits) {
            Ok(()) => Response::Limits {
                limits: limiter.limits(),
            },
            Err(e) => error(e.to_string()),
        }
    }
}

/// Answers `set-cpu` (nothing given: just the settings in force).
fn set_cpu(change: cpu::CpuConfig) -> Response {
    let Some(control) = cpu::control() else {
        return error("the VM's CPU control has not started".into());
    };
    match control.set(change) {
        Ok(config) => Response::Cpu {
            config,
            cgroup: control.cgroup(),
        },
        Err(e) => error(e.to_string()),
    }
}

/// The VM's cost to the host, for `stats`: CPU time and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmUsage {
    /// CPU time of the whole engine (user + system) since it started.
    pub cpu_ns: u64,
    /// CPU time of the vCPU threads of the running boot (the guest's own work and the
    /// exits it caused).
    pub vcpu_ns: u64,
    /// What the guest's balloon has given back.
    pub balloon_bytes: u64,
    #[serde(flatten)]
    pub memory: memory::MemoryUsage,
}

impl VmUsage {
    /// Now, with the balloon holding `balloon_bytes`.
    pub fn now(balloon_bytes: u64) -> VmUsage {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        VmUsage {
            cpu_ns: cpu::stat_cpu_ticks(&stat).map_or(0, cpu::ticks_to_ns),
            vcpu_ns: cpu::control().map_or(0, |c| c.vcpu_time_ns()),
            balloon_bytes,
            memory: memory::MemoryUsage::of_this_process(),
        }
    }
}

fn error(message: String) -> Response {
    Response::Error { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &Resources, disk: Option<usize>, net: Option<usize>, bw: u64) -> Response {
        r.handle(Request::SetLimits {
            disk,
            net,
            limits: IoLimits {
                bw: Some(bw),
                ..IoLimits::default()
            },
        })
    }

    #[test]
    fn set_limits_reaches_the_named_device_and_names_mistakes() {
        let r = Resources {
            disks: vec![Arc::new(RateLimiter::new(IoLimits::default()).unwrap())],
            nets: Vec::new(),
        };
        assert!(matches!(
            set(&r, Some(0), None, 1 << 20),
            Response::Limits { limits } if limits.bw == Some(1 << 20)
        ));
        assert_eq!(r.disks[0].limits().bw, Some(1 << 20));
        for (disk, net, bw, needle) in [
            (Some(1), None, 1, "no disk 1"),
            (None, Some(0), 1, "no network card 0"),
            (None, None, 1, "exactly one"),
            (Some(0), Some(0), 1, "exactly one"),
            (Some(0), None, 0, "bw=0"),
        ] {
            match set(&r, disk, net, bw) {
                Response::Error { message } => assert!(message.contains(needle), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        // A refused change leaves the limit as it was.
        assert_eq!(r.disks[0].limits().bw, Some(1 << 20));
    }
}
