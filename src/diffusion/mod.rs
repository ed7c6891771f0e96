//! Diffusion: noise schedules, noisify, and the samplers (DDPM, skip-DDPM, DDIM).

pub mod schedule;

pub use schedule::{Schedule, ScheduleKind};
