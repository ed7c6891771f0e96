//! Optimisers and learning-rate schedules.

pub mod adamw;
pub mod adamw_math;
pub mod cuda;
pub mod one_cycle;

pub use adamw::{AdamW, GradNorm};
pub use adamw_math::AdamWHyper;
pub use one_cycle::OneCycle;
