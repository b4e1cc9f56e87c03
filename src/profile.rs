//! Per-kernel GPU timing (`MOXE_PROFILE=1`).
//!
//! Each dispatch gets a start and an end timestamp: written inside the compute pass where
//! the adapter has TIMESTAMP_QUERY_INSIDE_PASSES, else by giving each dispatch its own pass
//! with pass-boundary timestamps (TIMESTAMP_QUERY). Without timestamp queries, each dispatch
//! is submitted alone and timed by the host clock (coarse; includes submission overhead).
//! Profiling waits for every step, so it slows inference down; the table is what matters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use crate::context::Context;
use crate::error::Result;
use crate::graph::{Dispatch, Graph};
use crate::tensor::map_read;

/// How the times in a profile were measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingSource {
    /// Timestamp queries around each dispatch inside one pass.
    TimestampsInPass,
    /// Timestamp queries at the boundaries of one pass per dispatch.
    TimestampsPerPass,
    /// Host clock around one submission per dispatch.
    HostClock,
}

/// Accumulated times per kernel label.
#[derive(Debug, Default)]
pub struct Profile {
    stats: BTreeMap<String, (u64, f64)>,
    steps: u64,
    source: Option<TimingSource>,
}

impl Profile {
    fn add(&mut self, label: &str, ns: f64) {
        let e = self.stats.entry(label.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += ns;
    }

    /// Total GPU time recorded, in nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.stats.values().map(|s| s.1).sum()
    }

    /// Rows (label, calls, total ns), slowest first.
    pub fn rows(&self) -> Vec<(String, u64, f64)> {
        let mut rows: Vec<_> = self
            .stats
            .iter()
            .map(|(k, (n, t))| (k.clone(), *n, *t))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    /// A text table: kernel, calls, total ms, mean us, share of the total.
    pub fn table(&self) -> String {
        let total = self.total_ns().max(1.0);
        let mut s = String::new();
        let source = match self.source {
            Some(TimingSource::TimestampsInPass) => "GPU timestamps inside the pass",
            Some(TimingSource::TimestampsPerPass) => "GPU timestamps, one pass per dispatch",
            Some(TimingSource::HostClock) => "host clock, one submit per dispatch (coarse)",
            None => "nothing recorded",
        };
        let _ = writeln!(s, "profile over {} step(s), timed by {source}", self.steps);
        let _ = writeln!(
            s,
            "{:<44} {:>8} {:>11} {:>11} {:>7}",
            "kernel", "calls", "total ms", "mean us", "share"
        );
        for (label, calls, ns) in self.rows() {
            let _ = writeln!(
                s,
                "{:<44} {:>8} {:>11.3} {:>11.2} {:>6.1}%",
                label,
                calls,
                ns / 1e6,
                ns / 1e3 / calls as f64,
                100.0 * ns / total
            );
        }
        let _ = writeln!(s, "{:<44} {:>8} {:>11.3}", "total", "", total / 1e6);
        s
    }
}

impl Context {
    /// Whether dispatches are being timed (`MOXE_PROFILE=1` or [`Context::set_profiling`]).
    pub fn profiling(&self) -> bool {
        self.profile_state()
            .0
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns per-dispatch timing on or off.
    pub fn set_profiling(&self, on: bool) {
        self.profile_state()
            .0
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The per-kernel table of everything timed so far, or `None` if nothing was timed.
    pub fn profile_report(&self) -> Option<String> {
        let p = self.profile_state().1.lock().expect("profile poisoned");
        (p.steps > 0).then(|| p.table())
    }

    /// Runs `f` on the accumulated profile.
    pub fn with_profile<T>(&self, f: impl FnOnce(&Profile) -> T) -> T {
        f(&self.profile_state().1.lock().expect("profile poisoned"))
    }

    /// Forgets all recorded times.
    pub fn reset_profile(&self) {
        *self.profile_state().1.lock().expect("profile poisoned") = Profile::default();
    }

    /// Encodes, submits and times one step; waits for it.
    pub(crate) fn submit_profiled(
        &self,
        graphs: &[&Graph],
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        let dispatches: Vec<&Dispatch> = graphs.iter().flat_map(|g| g.dispatches()).collect();
        let (times, source) = if self.has_timestamps() {
            let in_pass = self.has_timestamps_in_passes();
            (self.time_with_queries(&dispatches, in_pass, after)?, {
                if in_pass {
                    TimingSource::TimestampsInPass
                } else {
                    TimingSource::TimestampsPerPass
                }
            })
        } else {
            (
                self.time_with_host_clock(&dispatches, after)?,
                TimingSource::HostClock,
            )
        };
        let mut p = self.profile_state().1.lock().expect("profile poisoned");
        for (d, ns) in dispatches.iter().zip(times) {
            p.add(d.label(), ns);
        }
        p.steps += 1;
        p.source = Some(source);
        Ok(())
    }

    fn time_with_queries(
        &self,
        dispatches: &[&Dispatch],
        in_pass: bool,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<Vec<f64>> {
        const PER_SET: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;
        let device = self.device();
        let n = dispatches.len();
        let bytes = (2 * n * 8).max(8) as u64;
        let staging = self.scoped("profiling a step", || {
            let sets: Vec<wgpu::QuerySet> = (0..n.div_ceil(PER_SET))
                .map(|i| {
                    let count = (n - i * PER_SET).min(PER_SET) as u32 * 2;
                    device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count,
                    })
                })
                .collect();
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile staging"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            if in_pass {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for (i, d) in dispatches.iter().enumerate() {
                    let set = &sets[i / PER_SET];
                    let q = (i % PER_SET) as u32 * 2;
                    pass.write_timestamp(set, q);
                    d.encode(&mut pass);
                    pass.write_timestamp(set, q + 1);
                }
            } else {
                for (i, d) in dispatches.iter().enumerate() {
                    let q = (i % PER_SET) as u32 * 2;
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.label()),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &sets[i / PER_SET],
                            beginning_of_pass_write_index: Some(q),
                            end_of_pass_write_index: Some(q + 1),
                        }),
                    });
                    d.encode(&mut pass);
                }
            }
            for (i, set) in sets.iter().enumerate() {
                let count = (n - i * PER_SET).min(PER_SET) as u32 * 2;
                let offset = (i * PER_SET * 2 * 8) as u64;
                encoder.resolve_query_set(set, 0..count, &resolve, offset);
            }
            encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
            after(&mut encoder);
            self.queue().submit([encoder.finish()]);
            staging
        })?;
        let raw = map_read(self, &staging, bytes, "reading profile timestamps")?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.queue().get_timestamp_period() as f64;
        Ok((0..n)
            .map(|i| ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period)
            .collect())
    }

    fn time_with_host_clock(
        &self,
        dispatches: &[&Dispatch],
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(dispatches.len());
        for d in dispatches {
            let t = Instant::now();
            self.scoped("profiling a dispatch", || {
                let mut encoder = self.device().create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    d.encode(&mut pass);
                }
                self.queue().submit([encoder.finish()]);
            })?;
            self.wait("profiling a dispatch")?;
            times.push(t.elapsed().as_nanos() as f64);
        }
        self.scoped("profiling a step", || {
            let mut encoder = self.device().create_command_encoder(&Default::default());
            after(&mut encoder);
            self.queue().submit([encoder.finish()]);
        })?;
        self.wait("profiling a step")?;
        Ok(times)
    }
}
