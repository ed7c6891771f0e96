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
    let kernels = if cuda::kernels::compiled_ahead() { "nvcc fatbin (sm_80, sm_86, sm_89, sm_90, compute_80 PTX)" } else { "sources, compiled by NVRTC at first use" };
    if args.json {
        let list: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
        println!(
            "{{\"version\":\"{version}\",\"devices\":[{}],\"cpu_threads\":{threads},\"cuda_kernels\":{},\"kernels_ahead_of_time\":{}}}",
            list.join(","),
            cuda::kernels::names().len(),
            cuda::kernels::compiled_ahead()
        );
    } else {
        println!("minidiffusion {version}");
        println!("devices: {}", devices.join(", "));
        println!("cpu threads: {threads}");
        println!("cuda kernels: {} ({kernels})", cuda::kernels::names().len());
    }
    Ok(())
}
