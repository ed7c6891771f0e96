//! Diffusion: noise schedules and the samplers (DDPM, skip-DDPM, DDIM, and
//! the score-SDE VE predictor–corrector); the fused per-element updates are
//! ops (ops::diffusion).

mod cuda_graph;
pub mod sampler;
pub mod schedule;
pub mod sde_ve;

pub use sampler::{SamplerKind, SamplerOptions, Spacing};
pub use schedule::{Schedule, ScheduleKind};
