//! Checkpoints: the model directory (diffusers layout) plus what --resume
//! needs — `optimizer.safetensors` (AdamW moments by parameter name) and
//! `minidiffusion.json` (the training config and where the run is). Every file
//! is written to a temporary name and renamed.

use super::{Learner, TrainConfig};
use crate::error::{Error, Result};
use crate::io::model_dir::{self, SchedulerConfig};
use crate::io::{safetensors as st, write_atomic};
use crate::nn::named_params;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const TRAIN_STATE: &str = "minidiffusion.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// Where a run is, saved next to its weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub train: TrainConfig,
    pub step: usize,
    pub epoch: usize,
    pub total_steps: usize,
    pub optimizer_steps: Vec<u64>,
    pub minidiffusion_version: String,
}

/// Save the model directory and the resume state of `l` into `dir`: the
/// weights first, the optimiser moments next, the state file last (a resume
/// never sees newer state than weights or moments).
pub fn save(l: &Learner, dir: &Path) -> Result<()> {
    save_model(l, dir)?;
    snapshot_state(l)?.write(dir)
}

/// The model directory alone (weights, model and scheduler configs).
pub fn save_model(l: &Learner, dir: &Path) -> Result<()> {
    let mut scheduler = SchedulerConfig::from_schedule(&l.schedule);
    scheduler.prediction_type = l.config.prediction.clone();
    model_dir::save(dir, &l.model, &scheduler)
}

/// What --resume needs besides the weights, copied off `l` as it is now:
/// written by [`StateSnapshot::write`] — on another thread if need be, as
/// training goes on (the moments are two thirds of a checkpoint's bytes).
pub struct StateSnapshot {
    moments: Vec<(String, Vec<usize>, Vec<f32>)>,
    state: TrainState,
}

/// `l`'s optimiser moments (by parameter name) and position.
pub fn snapshot_state(l: &Learner) -> Result<StateSnapshot> {
    let names: Vec<String> = named_params(&l.model).into_iter().map(|(n, _)| n).collect();
    let (m, v, steps) = l.opt.state();
    let mut moments = Vec::with_capacity(2 * names.len());
    for ((name, m), v) in names.iter().zip(m).zip(v) {
        moments.push((format!("exp_avg.{name}"), m.dims().to_vec(), m.try_to_vec()?));
        moments.push((format!("exp_avg_sq.{name}"), v.dims().to_vec(), v.try_to_vec()?));
    }
    let state = TrainState {
        train: l.config.clone(),
        step: l.step,
        epoch: l.epoch,
        total_steps: l.total_steps,
        optimizer_steps: steps.to_vec(),
        minidiffusion_version: env!("CARGO_PKG_VERSION").into(),
    };
    Ok(StateSnapshot { moments, state })
}

impl StateSnapshot {
    /// `optimizer.safetensors`, then `minidiffusion.json`, into `dir`.
    pub fn write(self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        write_atomic(&dir.join(OPTIMIZER), &st::serialize(&self.moments)?)?;
        let text = serde_json::to_string_pretty(&self.state).expect("serialisable") + "\n";
        write_atomic(&dir.join(TRAIN_STATE), text.as_bytes())
    }
}

/// The resume state in `dir`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(TRAIN_STATE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("cannot read ({e}); --resume needs a directory written by train") })?;
    serde_json::from_str(&text).map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("invalid: {e}") })
}

/// Put the saved optimiser moments and position into `l` (its model already loaded from `dir`).
pub fn restore(l: &mut Learner, dir: &Path, state: &TrainState) -> Result<()> {
    let path = dir.join(OPTIMIZER);
    let saved = st::read(&path)?;
    let names: Vec<String> = named_params(&l.model).into_iter().map(|(n, _)| n).collect();
    let get = |key: String| -> Result<Vec<f32>> {
        saved.get(&key).map(|(_, v)| v.clone()).ok_or_else(|| Error::Data { path: path.display().to_string(), msg: format!("{key} is missing") })
    };
    let m = names.iter().map(|n| get(format!("exp_avg.{n}"))).collect::<Result<Vec<_>>>()?;
    let v = names.iter().map(|n| get(format!("exp_avg_sq.{n}"))).collect::<Result<Vec<_>>>()?;
    l.opt.load_state(&m, &v, &state.optimizer_steps)?;
    l.step = state.step;
    l.epoch = state.epoch;
    l.total_steps = state.total_steps;
    l.one_cycle = crate::optim::OneCycle::new(l.config.lr, state.total_steps);
    Ok(())
}
