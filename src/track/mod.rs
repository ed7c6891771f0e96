//! Local experiment tracking (SPEC "Experiment tracking"): every `train` run
//! goes to a SQLite store — config, command line, code version, metrics every
//! batch and epoch, sample grids and checkpoints as artifacts — and the `runs`
//! command lists, compares and shows them as one self-contained HTML page.
//!
//! - [`store`]: the SQLite schema (WAL mode, busy timeout) and its queries;
//! - [`tracker`]: the tracking callback (a writer thread commits batched rows
//!   at least twice a second and keeps a heartbeat), the sample-grid and
//!   checkpoint-artifact callbacks, and the hook for per-epoch metrics such as
//!   FID/KID ([`tracker::EpochMetrics`]);
//! - [`interrupt`]: Ctrl-C stops training at the next batch and the run is
//!   marked `interrupted`;
//! - [`report`]: the HTML page (inline SVG curves, galleries with an epoch
//!   slider, side-by-side grids, config differences);
//! - [`serve`]: the same page over HTTP on 127.0.0.1, refreshing while a run trains.

pub mod interrupt;
pub mod report;
pub mod serve;
pub mod store;
pub mod tracker;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the default store.
pub const RUNS_ENV: &str = "MINIDIFFUSION_RUNS";

/// The store `--runs-db` names, else `$MINIDIFFUSION_RUNS`, else `runs/minidiffusion.db` under the working directory.
pub fn db_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(RUNS_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("runs").join("minidiffusion.db"),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `2025-01-31T12:34:56Z` for Unix seconds `t`.
pub fn iso_time(t: f64) -> String {
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 (with padding), for data: URIs.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The code a run came from: the git checkout around the working directory
/// (else the one this binary was built from), when git is installed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    /// `git diff HEAD` (tracked files), cut at 1 MiB.
    pub diff: Option<String>,
}

impl GitInfo {
    pub fn collect() -> GitInfo {
        let cwd = std::env::current_dir().unwrap_or_default();
        let built_from = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for dir in [cwd, built_from] {
            if let Some(info) = Self::at(&dir) {
                return info;
            }
        }
        GitInfo::default()
    }

    fn at(dir: &Path) -> Option<GitInfo> {
        let git = |args: &[&str]| -> Option<String> {
            let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).stderr(std::process::Stdio::null()).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let commit = git(&["rev-parse", "HEAD"])?.trim().to_string();
        let status = git(&["status", "--porcelain", "--untracked-files=no"]).unwrap_or_default();
        let mut diff = git(&["diff", "HEAD", "--no-ext-diff", "--no-color"]).unwrap_or_default();
        const LIMIT: usize = 1 << 20;
        if diff.len() > LIMIT {
            let mut cut = LIMIT;
            while !diff.is_char_boundary(cut) {
                cut -= 1;
            }
            diff.truncate(cut);
            diff.push_str("\n[diff cut at 1 MiB]\n");
        }
        Some(GitInfo { commit: Some(commit), dirty: Some(!status.trim().is_empty()), diff: Some(diff) })
    }
}

/// Whether process `pid` exists on this machine (Linux: /proc; elsewhere assumed alive).
pub fn pid_alive(pid: u32) -> bool {
    let proc_dir = Path::new("/proc");
    if !proc_dir.is_dir() {
        return true;
    }
    match std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")) {
        // a zombie (state Z) has exited already
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// This machine's name (for telling whether a run's pid can be checked here).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn iso_time_and_sha256() {
        assert_eq!(iso_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400.0 + 3661.0), "2000-02-29T01:01:01Z");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
