//! `--profile` on the CPU: wall-clock time by op, layer and step, from the
//! ranges that already name them for NVTX ([`super::nvtx::range`]). A
//! range's self time — its wall time less that of the ranges opened inside
//! it — is summed by name, so the rows add up to the time spent in ranges
//! (a training or sampling step is one, so all of a bench's timed run): an
//! op's row is its kernels (their rayon work included), a layer's or a
//! step's the glue between its ops. Only the thread that started the profile is
//! timed, as the CUDA profile times only its thread's launches (the ops run
//! their parallel work inside their range on that thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Threads profiling now: a range's one check while none is.
static PROFILING: AtomicUsize = AtomicUsize::new(0);

struct Frame {
    name: String,
    start: Instant,
    /// Wall time of the ranges closed inside this one.
    inner: Duration,
}

#[derive(Default)]
struct Profile {
    on: bool,
    open: Vec<Frame>,
    rows: HashMap<String, (usize, Duration)>,
}

thread_local! {
    static PROFILE: RefCell<Profile> = RefCell::default();
}

/// One row of the profile: a range's name, how often it closed, its summed
/// self time.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeTime {
    pub name: String,
    pub calls: usize,
    pub self_ms: f64,
}

/// Starts timing this thread's ranges (afresh: earlier rows are dropped).
pub fn start() {
    PROFILE.with_borrow_mut(|p| {
        if !p.on {
            p.on = true;
            PROFILING.fetch_add(1, Ordering::Relaxed);
        }
        p.rows.clear();
    });
}

/// Stops timing this thread's ranges and returns one row per name, the
/// largest self time first.
pub fn stop() -> Vec<RangeTime> {
    PROFILE.with_borrow_mut(|p| {
        if p.on {
            p.on = false;
            PROFILING.fetch_sub(1, Ordering::Relaxed);
        }
        let mut rows: Vec<RangeTime> =
            p.rows.drain().map(|(name, (calls, own))| RangeTime { name, calls, self_ms: own.as_secs_f64() * 1e3 }).collect();
        rows.sort_by(|a, b| b.self_ms.total_cmp(&a.self_ms).then_with(|| a.name.cmp(&b.name)));
        rows
    })
}

/// Whether this thread's ranges are being timed.
pub fn is_on() -> bool {
    PROFILING.load(Ordering::Relaxed) > 0 && PROFILE.with_borrow(|p| p.on)
}

/// Opens a timed frame for the range `name` when this thread is profiling;
/// true when it did (its range then calls [`close`] as it closes).
pub(crate) fn open(name: &str) -> bool {
    if PROFILING.load(Ordering::Relaxed) == 0 {
        return false;
    }
    PROFILE.with_borrow_mut(|p| {
        if p.on {
            p.open.push(Frame { name: name.to_owned(), start: Instant::now(), inner: Duration::ZERO });
        }
        p.on
    })
}

/// Closes the innermost frame [`open`] opened: its self time to its row, its
/// wall time to its parent's inner time (so also after [`stop`]: frames
/// close in order whether or not the profile still runs).
pub(crate) fn close() {
    PROFILE.with_borrow_mut(|p| {
        let Some(frame) = p.open.pop() else { return };
        let wall = frame.start.elapsed();
        if let Some(parent) = p.open.last_mut() {
            parent.inner += wall;
        }
        let row = p.rows.entry(frame.name).or_default();
        row.0 += 1;
        row.1 += wall.saturating_sub(frame.inner);
    });
}

/// The profile as a table: range, calls, self ms, share of the total.
pub fn table(rows: &[RangeTime]) -> String {
    super::profile_table("range (self time)", rows.iter().map(|r| (r.name.as_str(), r.calls, r.self_ms)))
}
