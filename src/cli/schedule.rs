//! `minidiffusion schedule`: print a noise schedule.

use clap::{Args, ValueEnum};
use minidiffusion::diffusion::{Schedule, ScheduleKind};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Linear,
    Cosine,
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// linear (β from --beta-min to --beta-max) or the lesson's cosine.
    #[arg(long, value_enum, default_value = "linear")]
    pub kind: Kind,
    #[arg(long, default_value_t = 1e-4)]
    pub beta_min: f64,
    #[arg(long, default_value_t = 0.01)]
    pub beta_max: f64,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Print {"betas": [...], "alphas": [...], "alphas_cumprod": [...], "sigmas": [...]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        Kind::Linear => ScheduleKind::Linear { beta_min: args.beta_min, beta_max: args.beta_max },
        Kind::Cosine => ScheduleKind::Cosine,
    };
    let s = Schedule::new(kind, args.steps)?;
    if args.json {
        let v = serde_json::json!({"betas": s.betas, "alphas": s.alphas, "alphas_cumprod": s.alphas_cumprod, "sigmas": s.sigmas});
        println!("{v}");
        return Ok(());
    }
    println!("{:>6} {:>12} {:>12} {:>14} {:>12}", "t", "beta", "alpha", "alpha_cumprod", "sigma");
    let n = s.steps();
    let mut shown: Vec<usize> = (0..10).map(|i| i * (n - 1) / 9).collect();
    shown.dedup();
    for t in shown {
        println!("{t:>6} {:>12.6e} {:>12.8} {:>14.6e} {:>12.6e}", s.betas[t], s.alphas[t], s.alphas_cumprod[t], s.sigmas[t]);
    }
    Ok(())
}
