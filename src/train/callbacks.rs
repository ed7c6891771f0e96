//! The standard callbacks: progress display, checkpoints, loss record.

use super::{BatchReport, Callback, EpochReport, Learner, checkpoint};
use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// A progress bar (loss, images/s, ETA) and one line per epoch on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Option<Instant>,
    images: usize,
    /// The largest gradient norm and the clipped steps since the last step line.
    max_grad_norm: f32,
    clipped: usize,
    /// The lowest eval loss so far, and whether a divergence was reported.
    best_eval: f32,
    warned: bool,
    /// Print epoch lines (false for --json runs that want a quiet stderr).
    pub epoch_lines: bool,
}

impl Progress {
    /// A line above the bar when it shows, else on stderr.
    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    pub fn new(epoch_lines: bool) -> Self {
        Progress { bar: None, started: None, images: 0, max_grad_norm: 0.0, clipped: 0, best_eval: f32::INFINITY, warned: false, epoch_lines }
    }
}

impl Callback for Progress {
    fn before_fit(&mut self, l: &Learner) -> Result<()> {
        let bar = ProgressBar::new((l.total_steps - l.step) as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").expect("valid template").progress_chars("=> "),
        );
        self.bar = Some(bar);
        self.started = Some(Instant::now());
        Ok(())
    }

    fn after_batch(&mut self, l: &Learner, batch: &BatchReport) -> Result<()> {
        self.images += batch.images;
        self.max_grad_norm = self.max_grad_norm.max(batch.grad_norm);
        self.clipped += usize::from(batch.grad_scale < 1.0);
        let loss = batch.loss;
        if let (Some(bar), Some(t0)) = (&self.bar, self.started) {
            let rate = self.images as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}  {rate:.0} img/s"));
            bar.inc(1);
            // no terminal: a plain line now and then instead of the bar
            if bar.is_hidden() && self.epoch_lines && batch.step.is_multiple_of(100) {
                let clipped = if l.config.clip_grad_norm.is_some() { format!(", {} clipped", self.clipped) } else { String::new() };
                eprintln!(
                    "step {}/{}: loss {loss:.4}, {rate:.0} img/s, lr {:.2e}, grad norm {:.3} (largest since the last line {:.3}{clipped})",
                    batch.step, l.total_steps, batch.lr, batch.grad_norm, self.max_grad_norm
                );
                (self.max_grad_norm, self.clipped) = (0.0, 0);
            }
        }
        Ok(())
    }

    fn after_epoch(&mut self, l: &Learner, r: &EpochReport) -> Result<()> {
        if self.epoch_lines {
            let line = format!(
                "epoch {}: train loss {:.4}, eval loss {:.4}, {:.0} img/s, {:.1}s (step {}/{})",
                r.epoch, r.train_loss, r.eval_loss, r.images_per_s, r.seconds, l.step, l.total_steps
            );
            self.say(line);
        }
        if !self.warned && diverged(self.best_eval, r.eval_loss) {
            self.warned = true;
            // (a lower peak lr: on the tiny preset PyTorch's recipe and ours diverged at the same
            // learning rates, and clipping the gradient norm kept neither — BENCHMARKS)
            let line = format!(
                "warning: the eval loss went from {:.4} to {:.4} at epoch {}: training diverged (the step lines and the runs store have each step's gradient norm; a lower --lr than {:.0e} may keep it)",
                self.best_eval, r.eval_loss, r.epoch, l.config.lr
            );
            self.say(line);
        }
        self.best_eval = self.best_eval.min(r.eval_loss);
        Ok(())
    }

    fn after_fit(&mut self, _l: &Learner) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }

    fn on_failure(&mut self, _l: &Learner, _err: &crate::Error) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

/// Whether an eval loss of `now` after a best of `best` is a divergence: five
/// times the best and above 0.5 (an ε-predicting model that predicts 0 has a
/// loss of 1; GPU run 8's went 0.0275 → 1.0163), or not finite.
pub fn diverged(best: f32, now: f32) -> bool {
    !now.is_finite() || (best.is_finite() && now > 5.0 * best && now > 0.5)
}

/// Saves the model directory and resume state at each epoch end and at the
/// end (once, when the last epoch's save holds the last step). The weights
/// are written before the callback returns (callbacks after it read them);
/// the optimiser moments and state file, copied off the learner, are written
/// by a thread while the next epoch trains, one write in flight: a failed
/// write fails the next save or the end of the run, and a stopped run
/// waits for it (GPU run 7: 26 saves were ~13 s of a 202 s recipe).
pub struct Checkpoint {
    pub dir: PathBuf,
    saved_step: Option<usize>,
    pending: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Checkpoint {
    pub fn new(dir: PathBuf) -> Checkpoint {
        Checkpoint { dir, saved_step: None, pending: None }
    }

    /// Waits for the state write in flight, with its result.
    fn finish_pending(&mut self) -> Result<()> {
        match self.pending.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(crate::Error::Data { path: self.dir.display().to_string(), msg: "the checkpoint writer panicked".into() }),
        }
    }

    fn save(&mut self, l: &Learner, in_background: bool) -> Result<()> {
        self.finish_pending()?;
        self.saved_step = Some(l.step);
        if !in_background {
            return checkpoint::save(l, &self.dir);
        }
        checkpoint::save_model(l, &self.dir)?;
        let (state, dir) = (checkpoint::snapshot_state(l)?, self.dir.clone());
        self.pending = Some(std::thread::spawn(move || state.write(&dir)));
        Ok(())
    }
}

impl Callback for Checkpoint {
    fn after_epoch(&mut self, l: &Learner, _r: &EpochReport) -> Result<()> {
        self.save(l, true)
    }
    fn after_fit(&mut self, l: &Learner) -> Result<()> {
        if self.saved_step == Some(l.step) { self.finish_pending() } else { self.save(l, false) }
    }
    fn on_failure(&mut self, _l: &Learner, _err: &crate::Error) {
        // the last epoch's checkpoint is the one a stopped run keeps
        let _ = self.finish_pending();
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = self.finish_pending();
    }
}

/// Keeps every loss and epoch report (for --json and tests).
#[derive(Default)]
pub struct Recorder {
    pub losses: Vec<f32>,
    pub epochs: Vec<EpochReport>,
}

impl Callback for Recorder {
    fn after_batch(&mut self, _l: &Learner, batch: &BatchReport) -> Result<()> {
        self.losses.push(batch.loss);
        Ok(())
    }
    fn after_epoch(&mut self, _l: &Learner, r: &EpochReport) -> Result<()> {
        self.epochs.push(r.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::diverged;

    #[test]
    fn a_jump_to_a_dead_model_is_a_divergence_and_slow_progress_is_not() {
        assert!(diverged(0.0275, 1.0163));
        assert!(diverged(0.03, f32::NAN));
        assert!(!diverged(f32::INFINITY, 1.2), "the first epoch has nothing to compare with");
        assert!(!diverged(0.0389, 0.0320));
        assert!(!diverged(0.0275, 0.0400), "a worse epoch is not a divergence");
        assert!(!diverged(0.2, 0.9), "a model still far from trained: under five times its best");
    }
}
