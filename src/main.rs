mod cli;

use clap::Parser;
use cli::{Cli, run};

fn main() {
    minidiffusion::device::keep_freed_memory();
    // clap prints its own one-line usage errors and exits with code 2
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(2);
    }
}
