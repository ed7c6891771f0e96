//! The command line: one file per subcommand. Later issues add train, sample,
//! schedule, fid, eval, bench and runs.

pub mod info;

use clap::{Parser, Subcommand};

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
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(args),
    }
}
