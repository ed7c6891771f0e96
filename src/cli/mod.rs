//! The command line: one file per subcommand. Later issues add train, sample,
//! schedule, fid, eval and runs.

pub mod bench;
pub mod fid;
pub mod info;
pub mod runs;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod train_classifier;

use clap::{Parser, Subcommand};
use minidiffusion::Device;
use minidiffusion::device::DeviceRequest;

/// Train small diffusion UNets, sample them fast and score the samples.
#[derive(Parser, Debug)]
#[command(name = "minidiffusion", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the version, the compute devices this build can use and the CPU thread count.
    Info(info::InfoArgs),
    /// Train a diffusion UNet (the lesson's DDPM recipe).
    Train(train::TrainArgs),
    /// Train the Fashion-MNIST classifier whose features score samples (FID/KID).
    TrainClassifier(train_classifier::TrainClassifierArgs),
    /// Sample images from a model directory (DDPM, skip-DDPM, DDIM).
    Sample(sample::SampleArgs),
    /// FID (and KID) between two sets: features, images, PNG folders or fashion-mnist:test|train[:N].
    Fid(fid::FidArgs),
    /// Sample a model and score it: FID/KID against the test set, the real-data floor, x̂0 per step.
    Eval(fid::EvalArgs),
    /// Print a noise schedule (betas, alphas, alphas_cumprod, sigmas).
    Schedule(schedule::ScheduleArgs),
    /// Benchmarks (kernels at UNet shapes).
    Bench(bench::BenchArgs),
    /// The tracked runs: list, show, compare, report (one HTML file), serve (localhost).
    Runs(runs::RunsArgs),
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Train(args) => train::run(args),
        Command::TrainClassifier(args) => train_classifier::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Fid(args) => fid::run_fid(args),
        Command::Eval(args) => fid::run_eval(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Runs(args) => runs::run(args),
    }
}

/// The device a `--device` flag names; `auto` says on stderr what it chose.
pub fn resolve_device(flag: &str) -> anyhow::Result<Device> {
    let request = DeviceRequest::parse(flag)?;
    let device = request.resolve()?;
    if request == DeviceRequest::Auto {
        match device {
            Device::Cpu => eprintln!("device: cpu (no CUDA GPU found; --device cuda to require one)"),
            Device::Cuda(d) => eprintln!("device: {device} ({})", minidiffusion::device::cuda::backend(d)?.name()),
        }
    }
    Ok(device)
}
