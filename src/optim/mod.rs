//! Optimisers and learning-rate schedules.

pub mod adamw_math;
pub mod one_cycle;
