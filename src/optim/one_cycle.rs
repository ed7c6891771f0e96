//! PyTorch's `OneCycleLR` schedule (two-phase, cosine annealing, cycled momentum)
//! as a pure function of the optimiser step.
//!
//! Port of `torch/optim/lr_scheduler.py`: `OneCycleLR.__init__` (the
//! `three_phase=False` `_schedule_phases`, `initial_lr = max_lr / div_factor`,
//! `min_lr = initial_lr / final_div_factor`), `OneCycleLR.get_lr` and
//! `OneCycleLR._annealing_cos`. All arithmetic is f64, in the same order as the
//! Python code, so values agree with PyTorch to the last bit (barring libm
//! differences in `cos`).
//!
//! Step numbering: `lr(step)` / `beta1(step)` are the values PyTorch's scheduler
//! holds when `last_epoch == step`, i.e. after `step` calls to `scheduler.step()`.
//! So step 0 is the first optimiser step/batch and uses `max_lr / div_factor`.

/// Mirrors torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps, pct_start=0.3,
/// anneal_strategy='cos', cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
/// div_factor=25, final_div_factor=1e4, three_phase=False).
///
/// Phases (as in PyTorch, `end_step` values are floats):
/// * phase 1: steps `0 ..= pct_start*total_steps - 1`, lr `initial_lr -> max_lr`,
///   momentum `max_momentum -> base_momentum`, `pct = step / end1`;
/// * phase 2: up to `total_steps - 1`, lr `max_lr -> min_lr`, momentum
///   `base_momentum -> max_momentum`, `pct = (step - end1) / (end2 - end1)`
///   (the phase starts at `end1` itself, not `end1 + 1`, exactly like PyTorch).
///
/// Deviations from PyTorch (documented choices, never hit in a normal run):
/// * `step >= total_steps - 1` is clamped to the final value (`min_lr`,
///   `max_momentum`). PyTorch raises `ValueError` for `step > total_steps` and, for
///   `step == total_steps`, extrapolates the cosine past its end; we never panic.
/// * A zero-length phase (e.g. `pct_start * total_steps == 1` makes phase 1 end at
///   step 0, giving `0/0`) yields `pct = 1` (the phase's end value) where Python
///   would raise `ZeroDivisionError`.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycle {
    pub max_lr: f64,
    pub total_steps: usize,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub base_momentum: f64,
    pub max_momentum: f64,
}

impl OneCycle {
    /// PyTorch defaults: pct_start 0.3, div_factor 25, final_div_factor 1e4,
    /// base_momentum 0.85, max_momentum 0.95.
    pub fn new(max_lr: f64, total_steps: usize) -> Self {
        OneCycle {
            max_lr,
            total_steps,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// `initial_lr = max_lr / div_factor` (the lr of step 0).
    pub fn initial_lr(&self) -> f64 {
        self.max_lr / self.div_factor
    }

    /// `min_lr = initial_lr / final_div_factor` (the lr of the last step).
    pub fn min_lr(&self) -> f64 {
        self.initial_lr() / self.final_div_factor
    }

    /// Learning rate used for optimiser step `step` (0-based: step 0 is the first batch, lr = max_lr/25).
    pub fn lr(&self, step: usize) -> f64 {
        let (phase, pct) = self.phase_pct(step);
        if phase == 0 {
            annealing_cos(self.initial_lr(), self.max_lr, pct)
        } else {
            annealing_cos(self.max_lr, self.min_lr(), pct)
        }
    }

    /// beta1 (momentum) for that step: 0.95 -> 0.85 during warm-up, 0.85 -> 0.95 after.
    pub fn beta1(&self, step: usize) -> f64 {
        let (phase, pct) = self.phase_pct(step);
        if phase == 0 {
            annealing_cos(self.max_momentum, self.base_momentum, pct)
        } else {
            annealing_cos(self.base_momentum, self.max_momentum, pct)
        }
    }

    /// The phase index (0 or 1) and `pct` of `step`, following `OneCycleLR.get_lr`.
    fn phase_pct(&self, step: usize) -> (usize, f64) {
        // end_step of phase 1 is `float(pct_start * total_steps) - 1`, of phase 2 `total_steps - 1`.
        let end1 = self.pct_start * self.total_steps as f64 - 1.0;
        let end2 = self.total_steps as f64 - 1.0;
        // Clamp past the end of the schedule (PyTorch would raise / extrapolate).
        let last = self.total_steps.saturating_sub(1);
        let step_num = step.min(last) as f64;
        let (phase, start_step, end_step) = if step_num <= end1 {
            (0, 0.0, end1)
        } else {
            (1, end1, end2)
        };
        let span = end_step - start_step;
        let pct = if span > 0.0 {
            (step_num - start_step) / span
        } else {
            1.0 // zero-length phase: Python would raise ZeroDivisionError
        };
        (phase, pct)
    }
}

/// `OneCycleLR._annealing_cos`: cosine anneal from `start` to `end` as `pct` goes 0 -> 1.
fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}
