//! `minidiffusion info`: what this build can run on.

use clap::Args;
use minidiffusion::device::cuda;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let threads = rayon::current_num_threads();
    let mut devices = vec!["cpu".to_string()];
    devices.extend((0..cuda::gpu_count()).map(|i| format!("cuda:{i}")));
    let kernels = cuda::kernels::targets();
    if args.json {
        let info = serde_json::json!({"version": version, "devices": devices, "cpu_threads": threads,
            "cuda_kernels": cuda::kernels::names().len(), "kernels_ahead_of_time": cuda::kernels::compiled_ahead(), "kernel_targets": kernels});
        println!("{info}");
    } else {
        println!("minidiffusion {version}");
        println!("devices: {}", devices.join(", "));
        println!("cpu threads: {threads}");
        println!("cuda kernels: {} ({kernels})", cuda::kernels::names().len());
    }
    Ok(())
}
