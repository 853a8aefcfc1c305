//! The Activity view: per running VM, live graphs of its CPU (the engine's and its
//! vCPUs'), memory (resident, given back by the balloon, merged by KSM), disk and
//! network throughput and operations, from the samples the backend takes once a second
//! (`usage`: the engine's `stats`). Each VM keeps the last five minutes in a bounded
//! ring.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use eframe::egui::{self, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use super::backend::VmRow;
use crate::usage::{IoRates, MemoryShares, Usage};

/// Samples kept per VM: five minutes at one a second.
pub const CAPACITY: usize = 300;

/// One VM's recent samples: (seconds since the app started, usage).
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(f64, Usage)>,
}

impl History {
    pub fn push(&mut self, at: f64, usage: Usage) {
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back((at, usage));
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn latest(&self) -> Option<&Usage> {
        self.samples.back().map(|(_, u)| u)
    }

    /// One series: (time, `value` of each sample).
    pub fn series(&self, value: impl Fn(&Usage) -> f64) -> Vec<[f64; 2]> {
        self.samples.iter().map(|(t, u)| [*t, value(u)]).collect()
    }
}

/// Every VM's history, fed by the backend's usage updates.
pub struct Activity {
    started: Instant,
    histories: HashMap<String, History>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            histories: HashMap::new(),
        }
    }
}

impl Activity {
    pub fn record(&mut self, samples: Vec<(String, Usage)>) {
        let at = self.started.elapsed().as_secs_f64();
        for (id, usage) in samples {
            self.histories.entry(id).or_default().push(at, usage);
        }
    }

    pub fn history(&self, id: &str) -> Option<&History> {
        self.histories.get(id)
    }

    /// Drops the histories of VMs no longer in the library.
    pub fn retain(&mut self, rows: &[VmRow]) {
        self.histories
            .retain(|id, _| rows.iter().any(|r| r.entry_id == *id));
    }

    /// The view: a block of graphs per running VM.
    pub fn ui(&self, ui: &mut egui::Ui, rows: &[VmRow]) {
        let running: Vec<&VmRow> = rows.iter().filter(|r| r.state.is_running()).collect();
        if running.is_empty() {
            ui.label("No VM is running: start one to see its activity here.");
            return;
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            for row in running {
                ui.label(RichText::new(&row.name).strong());
                match self.histories.get(&row.entry_id) {
                    Some(h) if !h.is_empty() => graphs(ui, &row.entry_id, row, h),
                    _ => {
                        ui.label(RichText::new("waiting for the first sample…").weak());
                    }
                }
                ui.separator();
            }
        });
    }
}

fn graphs(ui: &mut egui::Ui, id: &str, row: &VmRow, history: &History) {
    let memory_mib = row.config.as_ref().map_or(0, |c| c.memory_mib) as f64;
    let latest = history.latest().copied().unwrap_or_default();
    ui.columns(2, |cols| {
        let mut cpu = vec![("engine", history.series(|u| f64::from(u.cpu_percent)))];
        if latest.guest_cpu_percent.is_some() {
            let guest = |u: &Usage| f64::from(u.guest_cpu_percent.unwrap_or(0.0));
            cpu.push(("guest (vCPUs)", history.series(guest)));
        }
        plot(&mut cols[0], (id, "cpu"), "CPU %", cpu, 100.0);
        let mut memory = vec![("resident", history.series(|u| u.rss_mib as f64))];
        if latest.memory.is_some() {
            let share = |f: fn(&MemoryShares) -> u64| {
                move |u: &Usage| u.memory.as_ref().map_or(0.0, |m| f(m) as f64)
            };
            memory.push(("balloon", history.series(share(|m| m.balloon_mib))));
            memory.push(("KSM merged", history.series(share(|m| m.ksm_merged_mib))));
        }
        plot(
            &mut cols[1],
            (id, "memory"),
            "Memory (MiB)",
            memory,
            memory_mib,
        );
    });
    if latest.io.is_none() {
        ui.label(RichText::new("This engine does not report disk and network traffic.").weak());
        return;
    }
    let io = |f: fn(&IoRates) -> f64| move |u: &Usage| u.io.as_ref().map_or(0.0, f);
    let kib = |f: fn(&IoRates) -> f64| move |u: &Usage| u.io.as_ref().map_or(0.0, f) / 1024.0;
    ui.columns(2, |cols| {
        plot(
            &mut cols[0],
            (id, "disk"),
            "Disk (KiB/s)",
            vec![
                ("read", history.series(kib(|r| r.disk_read))),
                ("write", history.series(kib(|r| r.disk_write))),
            ],
            1.0,
        );
        plot(
            &mut cols[1],
            (id, "net"),
            "Network (KiB/s)",
            vec![
                ("received", history.series(kib(|r| r.net_rx))),
                ("sent", history.series(kib(|r| r.net_tx))),
            ],
            1.0,
        );
    });
    plot(
        ui,
        (id, "ops"),
        "Operations (/s)",
        vec![
            ("disk requests", history.series(io(|r| r.disk_ops))),
            ("network packets", history.series(io(|r| r.net_packets))),
        ],
        1.0,
    );
}

fn plot(
    ui: &mut egui::Ui,
    id: (&str, &str),
    title: &str,
    series: Vec<(&str, Vec<[f64; 2]>)>,
    y_max: f64,
) {
    ui.label(title);
    Plot::new(id)
        .height(110.0)
        .legend(Legend::default())
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(y_max)
        .show(ui, |plot| {
            for (name, points) in series {
                plot.line(Line::new(name, PlotPoints::from(points)));
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_five_minutes() {
        let mut h = History::default();
        for i in 0..CAPACITY + 10 {
            h.push(
                i as f64,
                Usage {
                    cpu_percent: i as f32,
                    rss_mib: 1,
                    ..Usage::default()
                },
            );
        }
        assert_eq!(h.len(), CAPACITY);
        let cpu = h.series(|u| f64::from(u.cpu_percent));
        assert_eq!(cpu[0], [10.0, 10.0]);
        assert_eq!(h.latest().unwrap().cpu_percent, (CAPACITY + 9) as f32);
    }
}
