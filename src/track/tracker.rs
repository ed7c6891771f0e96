//! The tracking callbacks. [`Tracker`] records the run: it creates the run
//! row, sends `loss`/`lr` every batch and `train_loss`/`eval_loss`/
//! `images_per_s`/`epoch_seconds` every epoch to a writer thread that commits
//! them in batches (at least every [`FLUSH_EVERY`]) and keeps the heartbeat,
//! stops the loop after a Ctrl-C, and marks the run finished, failed or
//! interrupted. [`SampleGrid`] draws 16 samples from a fixed seed (DDIM) at
//! each epoch end and at the end; [`CheckpointArtifacts`] records the saved
//! weights; [`EpochMetrics`] is the hook for metrics such as FID/KID.
//!
//! Adding a logger is writing one callback that holds a [`RunHandle`].

use super::interrupt;
use super::store::{Artifact, MetricRow, NewRun, Store, stored_path_for};
use super::{GitInfo, now, sha256_hex};
use crate::diffusion::sampler::{self, SamplerKind, SamplerOptions, Spacing};
use crate::error::{Error, Result};
use crate::io::png;
use crate::train::{BatchReport, Callback, EpochReport, Learner};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pending rows are committed at least this often (a crash loses at most this much).
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

enum Msg {
    Metric(MetricRow),
    Artifact(Artifact),
    Finish { status: String, error: Option<String> },
    /// Commit what is queued, then answer.
    Flush(Sender<()>),
}

/// What callbacks use to log into a run (cheap to clone).
#[derive(Clone)]
pub struct RunHandle {
    run: i64,
    db: PathBuf,
    dir: PathBuf,
    tx: Sender<Msg>,
}

impl RunHandle {
    /// The run's id in the store.
    pub fn id(&self) -> i64 {
        self.run
    }

    /// The directory for this run's files (sample grids, plots).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queue one metric value (committed within [`FLUSH_EVERY`]).
    pub fn metric(&self, step: usize, epoch: usize, key: &str, value: f64) {
        let _ = self.tx.send(Msg::Metric(MetricRow { step: step as i64, epoch: epoch as i64, key: key.into(), value, time: now() }));
    }

    /// Record `file` (which must exist) as an artifact of `kind`, with its SHA-256.
    pub fn artifact(&self, kind: &str, step: usize, epoch: usize, file: &Path) -> Result<()> {
        let bytes = std::fs::read(file).map_err(|e| Error::Io { path: file.display().to_string(), source: e })?;
        let a = Artifact {
            kind: kind.into(),
            step: step as i64,
            epoch: epoch as i64,
            path: stored_path_for(&self.db, file),
            sha256: sha256_hex(&bytes),
            time: now(),
        };
        let _ = self.tx.send(Msg::Artifact(a));
        Ok(())
    }
}

/// The writer thread: batches rows, commits them at least every FLUSH_EVERY,
/// refreshes the heartbeat, and writes the final status.
fn writer(mut store: Store, run: i64, rx: Receiver<Msg>) {
    let (mut metrics, mut artifacts) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    let mut warned = false;
    let heartbeat = Duration::from_secs_f64(super::store::HEARTBEAT_EVERY_S);
    let mut flush = |store: &mut Store, metrics: &mut Vec<MetricRow>, artifacts: &mut Vec<Artifact>, last: &mut Instant| {
        *last = Instant::now();
        match store.append(run, metrics, artifacts) {
            Ok(()) => {
                metrics.clear();
                artifacts.clear();
                true
            }
            Err(e) => {
                if !warned {
                    eprintln!("warning: runs store: {e} (will retry)");
                    warned = true;
                }
                false
            }
        }
    };
    loop {
        let msg = rx.recv_timeout(Duration::from_millis(100));
        let finish = match msg {
            Ok(Msg::Metric(m)) => {
                metrics.push(m);
                None
            }
            Ok(Msg::Artifact(a)) => {
                artifacts.push(a);
                None
            }
            Ok(Msg::Finish { status, error }) => Some((status, error)),
            Ok(Msg::Flush(done)) => {
                flush(&mut store, &mut metrics, &mut artifacts, &mut last);
                let _ = done.send(());
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(("failed".into(), Some("the tracker went away without a result".into()))),
        };
        if let Some((status, error)) = finish {
            for _ in 0..3 {
                if flush(&mut store, &mut metrics, &mut artifacts, &mut last) {
                    break;
                }
            }
            if let Err(e) = store.finish(run, &status, error.as_deref()) {
                eprintln!("warning: runs store: cannot mark run {run} {status}: {e}");
            }
            return;
        }
        let pending = !metrics.is_empty() || !artifacts.is_empty();
        let age = last.elapsed();
        if (pending && age >= FLUSH_EVERY) || age >= heartbeat || metrics.len() >= 20_000 {
            flush(&mut store, &mut metrics, &mut artifacts, &mut last);
        }
    }
}

/// Records one run in the store (see the module docs).
pub struct Tracker {
    handle: RunHandle,
    thread: Option<JoinHandle<()>>,
    name: String,
}

impl Tracker {
    /// Create the run (status `running`) in the store at `db` and start its writer.
    pub fn start(db: &Path, new: NewRun) -> Result<Tracker> {
        let store = Store::open(db)?;
        let run = store.create_run(&new)?;
        let name = store.run(&run.to_string())?.name;
        let dir = store.run_dir(run);
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("runs-store-{run}"))
            .spawn(move || writer(store, run, rx))
            .map_err(|e| Error::Io { path: db.display().to_string(), source: e })?;
        Ok(Tracker { handle: RunHandle { run, db: db.to_path_buf(), dir, tx }, thread: Some(thread), name })
    }

    pub fn handle(&self) -> RunHandle {
        self.handle.clone()
    }

    pub fn id(&self) -> i64 {
        self.handle.run
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Commit everything queued and mark the run `status` (once; later calls do nothing).
    pub fn finish(&mut self, status: &str, error: Option<&str>) {
        let Some(thread) = self.thread.take() else { return };
        if status != "failed" {
            self.write_loss_plot();
        }
        let _ = self.handle.tx.send(Msg::Finish { status: status.into(), error: error.map(str::to_string) });
        let _ = thread.join();
    }

    /// The loss curve as an SVG artifact (kind `plot`), from what the store and the queue hold.
    fn write_loss_plot(&self) {
        let (done, wait) = channel();
        if self.handle.tx.send(Msg::Flush(done)).is_err() || wait.recv_timeout(Duration::from_secs(60)).is_err() {
            return;
        }
        let Ok(store) = Store::open_existing(&self.handle.db) else { return };
        let Ok(metrics) = store.metrics(self.handle.run) else { return };
        let Some(loss) = metrics.get("loss") else { return };
        let series = super::report::Series {
            label: self.name.clone(),
            color: super::report::PALETTE[0].into(),
            points: loss.iter().map(|r| (r.step as f64, r.value)).collect(),
            dashed: false,
        };
        let svg = super::report::line_chart("loss per batch", "step", &[series], true, 640, 360);
        let path = self.handle.dir.join("loss.svg");
        if std::fs::create_dir_all(&self.handle.dir).is_ok() && crate::io::write_atomic(&path, svg.as_bytes()).is_ok() {
            let (step, epoch) = loss.last().map_or((0, 0), |r| (r.step as usize, r.epoch as usize));
            let _ = self.handle.artifact("plot", step, epoch, &path);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.finish("failed", Some("panicked"));
        } else {
            self.finish("failed", Some("ended without a result"));
        }
    }
}

impl Callback for Tracker {
    fn after_batch(&mut self, _l: &Learner, batch: &BatchReport) -> Result<()> {
        self.handle.metric(batch.step, batch.epoch, "loss", batch.loss as f64);
        self.handle.metric(batch.step, batch.epoch, "lr", batch.lr);
        self.handle.metric(batch.step, batch.epoch, "grad_norm", batch.grad_norm as f64);
        if interrupt::requested() { Err(interrupt::error()) } else { Ok(()) }
    }

    fn after_epoch(&mut self, l: &Learner, r: &EpochReport) -> Result<()> {
        for (key, value) in [
            ("train_loss", r.train_loss as f64),
            ("eval_loss", r.eval_loss as f64),
            ("images_per_s", r.images_per_s),
            ("epoch_seconds", r.seconds),
        ] {
            self.handle.metric(l.step, r.epoch, key, value);
        }
        if interrupt::requested() { Err(interrupt::error()) } else { Ok(()) }
    }

    fn after_fit(&mut self, _l: &Learner) -> Result<()> {
        self.finish("finished", None);
        Ok(())
    }

    fn on_failure(&mut self, _l: &Learner, err: &Error) {
        let status = if interrupt::requested() { "interrupted" } else { "failed" };
        self.finish(status, Some(&err.to_string()));
    }
}

/// Seed of the sample grids' x_T: the same for every epoch and every run, so grids compare.
pub const GRID_SEED: u64 = 0;

/// A PNG grid of `n` samples (DDIM, `steps` steps, η = 0, from x_T of [`GRID_SEED`]) at
/// each epoch end and at the end of the run, recorded as `sample_grid` artifacts.
pub struct SampleGrid {
    pub handle: RunHandle,
    pub n: usize,
    pub steps: usize,
    last_step: Option<usize>,
}

impl SampleGrid {
    pub fn new(handle: RunHandle, n: usize, steps: usize) -> SampleGrid {
        SampleGrid { handle, n, steps, last_step: None }
    }

    /// Draw and record the grid for the model as it is now.
    pub fn draw(&mut self, l: &Learner, epoch: usize) -> Result<PathBuf> {
        self.last_step = Some(l.step);
        let opts = SamplerOptions {
            kind: SamplerKind::Ddim { steps: self.steps.clamp(1, l.schedule.steps()), eta: 0.0, spacing: Spacing::Leading },
            seed: GRID_SEED,
            precision: l.config.precision,
            ..Default::default()
        };
        let c = l.model.config.in_channels;
        let (h, w) = l.model.config.sample_hw().unwrap_or((32, 32));
        let x_t = sampler::initial_noise([self.n, c, h, w], 0, GRID_SEED, l.device)?;
        let labels = l.sample_labels(0, self.n)?;
        let s = crate::no_grad(|| sampler::sample(|x, t| l.model.forward_with_labels(x, t, labels.as_ref()), x_t, 0, &l.schedule, &opts))?;
        let values = s.x0.try_to_vec()?;
        let (lo, hi) = l.config.range()?.bounds();
        let dir = self.handle.dir().join("samples");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        let path = dir.join(format!("grid-e{epoch:04}-s{:07}.png", l.step));
        let cols = (self.n as f64).sqrt().ceil() as usize;
        png::write_grid(&path, &values, &[self.n, c, h, w], lo, hi, cols)?;
        self.handle.artifact("sample_grid", l.step, epoch, &path)?;
        Ok(path)
    }

    fn draw_or_warn(&mut self, l: &Learner, epoch: usize) {
        if self.n == 0 || self.steps == 0 || interrupt::requested() {
            return;
        }
        if let Err(e) = self.draw(l, epoch) {
            eprintln!("warning: sample grid at step {}: {e}", l.step);
        }
    }
}

impl Callback for SampleGrid {
    fn after_epoch(&mut self, l: &Learner, r: &EpochReport) -> Result<()> {
        self.draw_or_warn(l, r.epoch);
        Ok(())
    }
    fn after_fit(&mut self, l: &Learner) -> Result<()> {
        if self.last_step != Some(l.step) {
            self.draw_or_warn(l, l.epoch);
        }
        Ok(())
    }
}

/// Records the model weights the checkpoint callback saved (kind `checkpoint`)
/// after each epoch and at the end. Put it after the checkpoint callback.
pub struct CheckpointArtifacts {
    pub handle: RunHandle,
    pub dir: PathBuf,
    last_step: Option<usize>,
}

impl CheckpointArtifacts {
    pub fn new(handle: RunHandle, dir: PathBuf) -> Self {
        CheckpointArtifacts { handle, dir, last_step: None }
    }

    fn record(&mut self, l: &Learner, epoch: usize) -> Result<()> {
        let file = self.dir.join(crate::io::model_dir::WEIGHTS);
        if self.last_step != Some(l.step) && file.is_file() {
            self.last_step = Some(l.step);
            self.handle.artifact("checkpoint", l.step, epoch, &file)?;
        }
        Ok(())
    }
}

impl Callback for CheckpointArtifacts {
    fn after_epoch(&mut self, l: &Learner, r: &EpochReport) -> Result<()> {
        self.record(l, r.epoch)
    }
    fn after_fit(&mut self, l: &Learner) -> Result<()> {
        self.record(l, l.epoch)
    }
}

/// Metrics computed at each epoch end by `compute` and logged under their
/// keys — the hook for FID/KID on a few hundred samples when the classifier
/// is available:
///
/// ```ignore
/// let mut fid = EpochMetrics { handle: tracker.handle(), compute: |l: &Learner| {
///     let (fid, kid) = my_fid_kid(&l.model, 256)?;   // the metrics module's scorer
///     Ok(vec![("fid".into(), fid), ("kid".into(), kid)])
/// }};
/// ```
pub struct EpochMetrics<F> {
    pub handle: RunHandle,
    pub compute: F,
}

impl<F: FnMut(&Learner) -> Result<Vec<(String, f64)>>> Callback for EpochMetrics<F> {
    fn after_epoch(&mut self, l: &Learner, r: &EpochReport) -> Result<()> {
        for (key, value) in (self.compute)(l)? {
            self.handle.metric(l.step, r.epoch, &key, value);
        }
        Ok(())
    }
}

/// Everything `train` tracks, in callback order: checkpoint artifacts, sample grids, the tracker.
pub struct TrainTracking {
    pub checkpoints: CheckpointArtifacts,
    pub grid: SampleGrid,
    pub tracker: Tracker,
}

impl TrainTracking {
    /// Start tracking `l`'s run in the store at `db`: name (default
    /// `<preset>-<dataset>-<id>`), config, command line, version, git state,
    /// device; Ctrl-C handling installed. `grid_steps` 0 turns the grids off.
    pub fn start(db: &Path, name: Option<&str>, l: &Learner, out: &Path, grid_steps: usize) -> Result<TrainTracking> {
        interrupt::install();
        let gpu = match l.device {
            crate::Device::Cuda(d) => crate::device::cuda::backend(d).ok().map(|b| b.name()),
            crate::Device::Cpu => None,
        };
        let new = NewRun {
            name: name.unwrap_or("").into(),
            config: serde_json::to_value(&l.config).unwrap_or_default(),
            command: std::env::args().collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            git: GitInfo::collect(),
            device: l.device.to_string(),
            gpu,
            extra: json!({
                "out": std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf()).display().to_string(),
                "start_step": l.step,
                "total_steps": l.total_steps,
                "steps_per_epoch": l.steps_per_epoch,
                "sample_grid": {"n": 16, "sampler": "ddim", "steps": grid_steps, "seed": GRID_SEED},
                "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            }),
        };
        let tracker = Tracker::start(db, new)?;
        if name.is_none() {
            let stem = Path::new(&l.config.preset).file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
            let default = format!("{stem}-{}-{}", l.config.dataset, tracker.id());
            Store::open_existing(db)?.set_name(tracker.id(), &default)?;
        }
        let name = Store::open_existing(db)?.run(&tracker.id().to_string())?.name;
        let mut tracker = tracker;
        tracker.name = name;
        Ok(TrainTracking {
            checkpoints: CheckpointArtifacts::new(tracker.handle(), out.to_path_buf()),
            grid: SampleGrid::new(tracker.handle(), 16, grid_steps),
            tracker,
        })
    }

    /// The three callbacks, to append after the checkpoint callback.
    pub fn callbacks(&mut self) -> [&mut dyn Callback; 3] {
        [&mut self.checkpoints, &mut self.grid, &mut self.tracker]
    }
}
