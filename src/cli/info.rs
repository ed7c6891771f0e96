//! `minidiffusion info`: what this build can run on.

use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let threads = rayon::current_num_threads();
    let devices = ["cpu"];
    if args.json {
        let list: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
        println!("{{\"version\":\"{version}\",\"devices\":[{}],\"cpu_threads\":{threads}}}", list.join(","));
    } else {
        println!("minidiffusion {version}");
        println!("devices: {}", devices.join(", "));
        println!("cpu threads: {threads}");
    }
    Ok(())
}
