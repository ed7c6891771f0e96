//! `minidiffusion runs`: list, show, compare, report and serve the runs in
//! the store (SPEC "Experiment tracking").

use anyhow::bail;
use clap::{Args, Subcommand};
use minidiffusion::track::report::{self, ReportOptions};
use minidiffusion::track::serve::{ServeOptions, serve};
use minidiffusion::track::store::{Run, Store};
use minidiffusion::track::{self, iso_time};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// The runs store (default: $MINIDIFFUSION_RUNS, else runs/minidiffusion.db).
    #[arg(long, global = true)]
    pub runs_db: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RunsCommand,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Every run: id, name, status, start, duration, steps, last losses.
    List {
        /// Print a JSON array (id, name, status, started, config, …).
        #[arg(long)]
        json: bool,
    },
    /// One run: its record, metrics and artifacts.
    Show {
        /// Run id (or name).
        id: String,
        /// Print one JSON object (metrics as key → [[step, value], …]).
        #[arg(long)]
        json: bool,
    },
    /// Runs side by side: config differences and final metrics.
    Compare {
        #[arg(required = true, num_args = 2..)]
        ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// One self-contained HTML page: curves, sample galleries, config differences.
    Report {
        /// Runs to show (default: the 8 newest).
        ids: Vec<String>,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Serve the report on 127.0.0.1, refreshing while a run trains.
    Serve {
        /// Runs to show (default: the 8 newest, re-chosen on each load).
        ids: Vec<String>,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        max_seconds: Option<u64>,
    },
}

pub fn run(args: RunsArgs) -> anyhow::Result<()> {
    let db = track::db_path(args.runs_db.as_deref());
    match args.command {
        RunsCommand::List { json } => list(&Store::open_existing(&db)?, json),
        RunsCommand::Show { id, json } => show(&Store::open_existing(&db)?, &id, json),
        RunsCommand::Compare { ids, json } => compare(&Store::open_existing(&db)?, &ids, json),
        RunsCommand::Report { ids, out } => {
            let store = Store::open_existing(&db)?;
            let runs = report::select(&store, &ids)?;
            if runs.is_empty() {
                bail!("{}: no runs yet", db.display());
            }
            let html = report::render(&store, &runs, &ReportOptions::default())?;
            minidiffusion::io::write_atomic(&out, html.as_bytes())?;
            let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
            println!("wrote {} ({} KiB; runs {})", out.display(), html.len() / 1024, ids.join(", "));
            Ok(())
        }
        RunsCommand::Serve { ids, port, max_seconds } => {
            let opts = ServeOptions { db, runs: ids, port, max_duration: max_seconds.map(Duration::from_secs) };
            serve(&opts, |addr| {
                println!("serving http://{addr}/ (localhost only; Ctrl-C to stop)");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            })?;
            Ok(())
        }
    }
}

fn last(metrics: &BTreeMap<String, Vec<minidiffusion::track::store::MetricRow>>, key: &str) -> Option<f64> {
    metrics.get(key).and_then(|r| r.last()).map(|r| r.value)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.0}")
        } else if v.abs() >= 100.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.4}")
        }
    })
}

fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let runs = store.runs()?;
    if json {
        let mut out = Vec::new();
        for r in &runs {
            let mut v = r.summary_json();
            let m = store.metrics(r.id)?;
            v["steps"] = json!(m.get("loss").and_then(|rows| rows.last()).map_or(0, |x| x.step));
            v["last"] = json!({"loss": last(&m, "loss"), "eval_loss": last(&m, "eval_loss"), "train_loss": last(&m, "train_loss")});
            out.push(v);
        }
        println!("{}", Value::Array(out));
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs in {}", store.path().display());
        return Ok(());
    }
    println!("{:>4}  {:<28} {:<12} {:<20} {:>9} {:>7} {:>9} {:>9}  device", "id", "name", "status", "started", "duration", "steps", "loss", "eval");
    for r in &runs {
        let m = store.metrics(r.id)?;
        let steps = m.get("loss").and_then(|rows| rows.last()).map_or(0, |x| x.step);
        let dur = r.ended.unwrap_or(r.heartbeat.max(r.started)) - r.started;
        let name: String = r.name.chars().take(28).collect();
        println!(
            "{:>4}  {:<28} {:<12} {:<20} {:>8.1}s {:>7} {:>9} {:>9}  {}",
            r.id,
            name,
            r.status(),
            iso_time(r.started),
            dur,
            steps,
            fmt(last(&m, "loss")),
            fmt(last(&m, "eval_loss")),
            r.device.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

fn show(store: &Store, id: &str, json: bool) -> anyhow::Result<()> {
    let r = store.run(id)?;
    if json {
        println!("{}", store.show_json(&r)?);
        return Ok(());
    }
    let m = store.metrics(r.id)?;
    println!("run {} '{}': {}", r.id, r.name, r.status());
    println!("  started   {}  ended {}", iso_time(r.started), r.ended.map_or("—".into(), iso_time));
    if let Some(e) = &r.error {
        println!("  error     {e}");
    }
    println!("  command   {}", r.command.join(" "));
    println!("  version   {}  git {}{}", r.version, r.git_commit.as_deref().unwrap_or("—"), if r.git_dirty == Some(true) { " (dirty)" } else { "" });
    println!("  device    {}{}", r.device.as_deref().unwrap_or("?"), r.gpu.as_deref().map_or(String::new(), |g| format!(" ({g})")));
    println!("  config    {}", r.config);
    println!("  metrics:");
    for (k, rows) in &m {
        let l = rows.last().expect("non-empty");
        println!("    {k:<14} {:>6} values, last {} at step {} (epoch {})", rows.len(), fmt(Some(l.value)), l.step, l.epoch);
    }
    println!("  artifacts:");
    for a in store.artifacts(r.id)? {
        println!("    {:<12} step {:>7} epoch {:>4}  {}  sha256 {}", a.kind, a.step, a.epoch, store.resolve(&a.path).display(), &a.sha256[..16]);
    }
    Ok(())
}

fn flat(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| flat(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)),
        Value::String(s) => {
            out.insert(prefix.into(), s.clone());
        }
        v => {
            out.insert(prefix.into(), v.to_string());
        }
    }
}

fn compare(store: &Store, ids: &[String], json: bool) -> anyhow::Result<()> {
    let runs: Vec<Run> = ids.iter().map(|id| store.run(id)).collect::<Result<_, _>>()?;
    let configs: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            flat("", &r.config, &mut m);
            m
        })
        .collect();
    let keys: BTreeSet<&String> = configs.iter().flat_map(|m| m.keys()).collect();
    let mut differences = BTreeMap::new();
    for k in keys {
        let vals: Vec<Option<&String>> = configs.iter().map(|m| m.get(k)).collect();
        if vals.iter().any(|v| *v != vals[0]) {
            differences.insert(k.clone(), vals.iter().map(|v| v.map(|s| s.as_str())).map(|v| json!(v)).collect::<Vec<_>>());
        }
    }
    let keys = ["loss", "train_loss", "eval_loss", "images_per_s", "fid", "kid"];
    let mut finals = BTreeMap::new();
    for r in &runs {
        let m = store.metrics(r.id)?;
        for k in keys {
            finals.entry(k.to_string()).or_insert_with(Vec::new).push(json!(last(&m, k)));
        }
        let steps = m.get("loss").and_then(|rows| rows.last()).map_or(0, |x| x.step);
        finals.entry("steps".to_string()).or_insert_with(Vec::new).push(json!(steps));
    }
    finals.retain(|_, v| v.iter().any(|x| !x.is_null()));
    if json {
        let summary: Vec<Value> = runs.iter().map(|r| json!({"id": r.id, "name": r.name, "status": r.status()})).collect();
        println!("{}", json!({"runs": summary, "differences": differences, "final": finals}));
        return Ok(());
    }
    let width = 22;
    let cell = |s: &str| -> String { s.chars().take(width).collect() };
    print!("{:<28}", "");
    for r in &runs {
        print!(" {:<width$}", cell(&format!("#{} {}", r.id, r.name)));
    }
    println!();
    print!("{:<28}", "status");
    for r in &runs {
        print!(" {:<width$}", r.status());
    }
    println!();
    for (k, vals) in &finals {
        print!("{:<28}", format!("final {k}"));
        for v in vals {
            print!(" {:<width$}", v.as_f64().map_or("—".into(), |x| fmt(Some(x))));
        }
        println!();
    }
    if differences.is_empty() {
        println!("(the configs are identical)");
    }
    for (k, vals) in &differences {
        print!("{:<28}", cell(k));
        for v in vals {
            print!(" {:<width$}", cell(v.as_str().unwrap_or("—")));
        }
        println!();
    }
    Ok(())
}
