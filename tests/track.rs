//! Experiment tracking end to end: the store's round trip; two writer
//! processes sharing one store (library writers and real trainings); Ctrl-C
//! (SIGINT) marks a run interrupted and keeps its rows; a killed run reads as
//! died; the `runs` commands' JSON; and the report and the served page
//! rendered by headless Chromium, the screenshot checked for drawn curves and
//! sample grids.
//!
//! Chromium: Debian's `chromium`. Where it is missing the two screenshot
//! tests print SKIPPED — unless `CI` or `MINIDIFFUSION_REQUIRE_CHROMIUM` is
//! set (.ci/run installs chromium and sets the latter), where they fail.

use minidiffusion::io::png;
use minidiffusion::track::report;
use minidiffusion::track::store::{Artifact, MetricRow, NewRun, Store};
use minidiffusion::track::tracker::Tracker;
use minidiffusion::track::{GitInfo, now, sha256_hex};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_minidiffusion");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minidiffusion-track-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n_train` / `n_test` images of the embedded sample as IDX files.
fn small_dataset(dir: &Path, n_train: usize, n_test: usize) -> PathBuf {
    let dir = dir.join("data");
    minidiffusion::testing::write_idx_sample(&dir, n_train, n_test).unwrap();
    dir
}

/// A micro UNet config (two levels, 8/16 channels).
fn micro_config(dir: &Path) -> PathBuf {
    let path = dir.join("micro.json");
    std::fs::write(
        &path,
        r#"{"in_channels": 1, "out_channels": 1, "sample_size": 32, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8}"#,
    )
    .unwrap();
    path
}

fn train_cmd(work: &Path, db: &Path, name: &str, epochs: usize, extra: &[&str]) -> Command {
    let data = work.join("data");
    let mut c = Command::new(BIN);
    c.args(["train", "--data", data.to_str().unwrap(), "--config", work.join("micro.json").to_str().unwrap()])
        .args(["--epochs", &epochs.to_string(), "--batch-size", "16", "--device", "cpu", "--eval-images", "16"])
        .args(["--grid-steps", "10", "--runs-db", db.to_str().unwrap(), "--run-name", name])
        .args(["--out", work.join(format!("model-{name}")).to_str().unwrap()])
        .args(extra)
        .current_dir(work);
    c
}

fn runs_json(db: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN).arg("runs").args(args).args(["--runs-db", db.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "runs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} ran past {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn store_round_trip() {
    let dir = temp_dir("roundtrip");
    let db = dir.join("nested").join("runs.db");
    let store = Store::open(&db).unwrap();
    assert_eq!(store.journal_mode().unwrap(), "wal");
    let new = NewRun {
        name: "alpha".into(),
        config: json!({"lr": 0.01, "unet": {"block_out_channels": [8, 16]}}),
        command: vec!["minidiffusion".into(), "train".into()],
        version: "0.1.0".into(),
        git: GitInfo { commit: Some("abc123".into()), dirty: Some(true), diff: Some("--- a\n+++ b\n".into()) },
        device: "cpu".into(),
        gpu: None,
        extra: json!({"out": "model"}),
    };
    let id = store.create_run(&new).unwrap();
    let id2 = store.create_run(&NewRun { name: String::new(), ..new.clone() }).unwrap();
    assert_eq!(store.run(&id2.to_string()).unwrap().name, format!("run-{id2}"));
    let rows: Vec<MetricRow> =
        (1..=5).map(|s| MetricRow { step: s, epoch: 1, key: "loss".into(), value: 1.0 / s as f64, time: now() }).collect();
    let grid = dir.join("nested").join("g.png");
    std::fs::write(&grid, b"png bytes").unwrap();
    let art = Artifact { kind: "sample_grid".into(), step: 5, epoch: 1, path: store.stored_path(&grid), sha256: sha256_hex(b"png bytes"), time: now() };
    assert_eq!(art.path, "g.png", "paths inside the store's directory are stored relative to it");
    let mut store = store;
    store.append(id, &rows, std::slice::from_ref(&art)).unwrap();
    store.append(id, &[MetricRow { step: 5, epoch: 1, key: "eval_loss".into(), value: 0.5, time: now() }], &[]).unwrap();
    store.finish(id, "finished", None).unwrap();
    drop(store);

    let store = Store::open_existing(&db).unwrap();
    let run = store.run("alpha").unwrap();
    assert_eq!((run.id, run.status().as_str(), run.stored_status.as_str()), (id, "finished", "finished"));
    assert_eq!(run.config, new.config);
    assert_eq!(run.command, new.command);
    assert_eq!((run.git_commit.as_deref(), run.git_dirty, run.git_diff.as_deref()), (Some("abc123"), Some(true), Some("--- a\n+++ b\n")));
    assert_eq!(run.pid, Some(std::process::id()));
    assert!(run.ended.unwrap() >= run.started);
    let m = store.metrics(id).unwrap();
    assert_eq!(m["loss"], rows);
    assert_eq!(store.artifacts(id).unwrap(), vec![art]);
    assert_eq!(store.resolve("g.png"), grid.parent().unwrap().join("g.png"));
    let shown = store.show_json(&run).unwrap();
    assert_eq!(shown["metrics"]["loss"][4], json!([5, 0.2]));
    assert_eq!(shown["artifacts"][0]["kind"], "sample_grid");
    // the second run is still "running" with this (live) process's pid
    assert_eq!(store.run(&id2.to_string()).unwrap().status(), "running");
    assert!(Store::open_existing(&dir.join("missing.db")).is_err());
}

/// Child side of `two_writer_processes_keep_all_rows` (does nothing unless the env var is set).
#[test]
fn child_writer() {
    let Ok(db) = std::env::var("TRACK_TEST_CHILD_DB") else { return };
    let name = std::env::var("TRACK_TEST_CHILD_NAME").unwrap();
    let mut t = Tracker::start(Path::new(&db), NewRun { name, config: json!({}), ..Default::default() }).unwrap();
    let h = t.handle();
    for step in 1..=3000 {
        h.metric(step, 1, "loss", step as f64);
        if step % 300 == 0 {
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    t.finish("finished", None);
}

#[test]
fn two_writer_processes_keep_all_rows() {
    let dir = temp_dir("writers");
    let db = dir.join("runs.db");
    let exe = std::env::current_exe().unwrap();
    let spawn = |name: &str| {
        Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads", "1"])
            .env("TRACK_TEST_CHILD_DB", &db)
            .env("TRACK_TEST_CHILD_NAME", name)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("writer-a"), spawn("writer-b"));
    assert!(wait_with_timeout(&mut a, Duration::from_secs(120)).success());
    assert!(wait_with_timeout(&mut b, Duration::from_secs(120)).success());
    let store = Store::open_existing(&db).unwrap();
    for name in ["writer-a", "writer-b"] {
        let run = store.run(name).unwrap();
        assert_eq!(run.status(), "finished");
        let loss = &store.metrics(run.id).unwrap()["loss"];
        assert_eq!(loss.len(), 3000, "{name} lost rows");
        assert!(loss.iter().enumerate().all(|(i, r)| r.step == i as i64 + 1 && r.value == (i + 1) as f64));
    }
}

#[test]
fn two_trainings_share_one_store_and_the_runs_commands_show_them() {
    let work = temp_dir("trainings");
    small_dataset(&work, 64, 16);
    micro_config(&work);
    let db = work.join("store").join("runs.db");
    let mut a = train_cmd(&work, &db, "first", 2, &["--lr", "3e-3"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut b = train_cmd(&work, &db, "second", 2, &["--lr", "1e-3"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for c in [&mut a, &mut b] {
        let status = wait_with_timeout(c, Duration::from_secs(300));
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "{err}");
    }

    let list = runs_json(&db, &["list", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for name in ["first", "second"] {
        // the two runs started at the same time: either may have the lower id
        let r = list.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no run {name}: {list:?}"));
        for key in ["id", "name", "status", "started", "config"] {
            assert!(r.get(key).is_some(), "list --json lacks {key}: {r}");
        }
        assert_eq!(r["name"], name);
        assert_eq!(r["status"], "finished");
        assert_eq!(r["config"]["batch_size"], 16);
        assert!(r["started"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r["device"], "cpu");
    }
    assert_ne!(list[0]["config"]["lr"], list[1]["config"]["lr"]);
    let id_of = |name: &str| list.iter().find(|r| r["name"] == name).unwrap()["id"].to_string();

    for r in list {
        let id = r["id"].to_string();
        let show = runs_json(&db, &["show", &id, "--json"]);
        for key in ["id", "name", "status", "config", "metrics", "artifacts"] {
            assert!(show.get(key).is_some(), "show --json lacks {key}");
        }
        // 64 images / batch 16 × 2 epochs = 8 steps: loss and lr at every one
        for key in ["loss", "lr"] {
            let rows = show["metrics"][key].as_array().unwrap();
            assert_eq!(rows.len(), 8, "{key}: {rows:?}");
            for (i, row) in rows.iter().enumerate() {
                assert_eq!(row[0], json!(i + 1));
                assert!(row[1].as_f64().unwrap().is_finite());
            }
        }
        for key in ["train_loss", "eval_loss", "images_per_s"] {
            let rows = show["metrics"][key].as_array().unwrap();
            assert_eq!(rows.iter().map(|r| r[0].as_i64().unwrap()).collect::<Vec<_>>(), vec![4, 8], "{key}");
        }
        let arts = show["artifacts"].as_array().unwrap();
        let of = |kind: &str| arts.iter().filter(|a| a["kind"] == kind).cloned().collect::<Vec<_>>();
        let grids = of("sample_grid");
        assert_eq!(grids.iter().map(|a| a["step"].as_i64().unwrap()).collect::<Vec<_>>(), vec![4, 8], "one grid per epoch end: {arts:?}");
        for g in &grids {
            let file = PathBuf::from(g["resolved_path"].as_str().unwrap());
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(sha256_hex(&bytes), g["sha256"].as_str().unwrap());
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!((img.width(), img.height()), (4 * 34 + 2, 4 * 34 + 2), "a 4×4 grid of 32×32 samples");
            assert!(g["path"].as_str().unwrap().starts_with("runs-files/"), "stored relative to the store: {}", g["path"]);
        }
        assert_eq!(of("checkpoint").len(), 2);
        assert_eq!(of("plot").len(), 1);
        assert!(show["git_commit"].is_string() || show["git_commit"].is_null());
        assert_eq!(show["command"][1], "train");
    }

    let cmp = Command::new(BIN).args(["runs", "compare", "first", "second", "--runs-db", db.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(cmp.status.success() && text.contains("lr") && text.contains("0.003") && text.contains("0.001"), "{text}");
    let cmp = runs_json(&db, &["compare", &id_of("first"), &id_of("second"), "--json"]);
    assert_eq!(cmp["differences"]["lr"], json!(["0.003", "0.001"]));

    let html = work.join("report.html");
    let out = Command::new(BIN).args(["runs", "report", "--out", html.to_str().unwrap(), "--runs-db", db.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("polyline") && page.contains("data:image/png;base64,"));
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "no external resources");
    assert!(page.contains(&format!("#{} first", id_of("first"))) && page.contains(&format!("#{} second", id_of("second"))));
}

/// Start a training that runs for long, wait until its loss rows appear in the store.
fn start_long_training(name: &str) -> (PathBuf, PathBuf, Child) {
    let work = temp_dir(name);
    small_dataset(&work, 64, 16);
    micro_config(&work);
    let db = work.join("runs.db");
    let child = train_cmd(&work, &db, name, 500, &["--lr", "3e-3"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(store) = Store::open_existing(&db)
            && let Ok(run) = store.run(name)
            && store.metric_count(run.id, "loss").unwrap_or(0) >= 6
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no rows after 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    (work, db, child)
}

#[test]
fn sigint_marks_the_run_interrupted_and_keeps_its_rows() {
    let (_work, db, mut child) = start_long_training("sigint");
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "an interrupted training exits with an error");
    assert!(err.contains("interrupted"), "{err}");
    let store = Store::open_existing(&db).unwrap();
    let run = store.run("sigint").unwrap();
    assert_eq!(run.status(), "interrupted", "{err}");
    assert!(run.ended.is_some() && run.error.as_deref().unwrap().contains("SIGINT"));
    let m = store.metrics(run.id).unwrap();
    let loss = &m["loss"];
    assert!(loss.len() >= 6);
    // every step up to the last one is there, and lr with it
    assert!(loss.iter().enumerate().all(|(i, r)| r.step == i as i64 + 1), "steps missing");
    assert_eq!(m["lr"].len(), loss.len());
    let shown = runs_json(&db, &["show", "sigint", "--json"]);
    assert_eq!(shown["status"], "interrupted");
}

#[test]
fn a_killed_run_reads_as_died() {
    let (_work, db, mut child) = start_long_training("killed");
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    let list = runs_json(&db, &["list", "--json"]);
    assert_eq!(list[0]["stored_status"], "running");
    assert_eq!(list[0]["status"], "died", "{list}");
    assert!(list[0]["last"]["loss"].is_number(), "rows logged before the kill are kept");
}

// ---- the report and the served page in headless Chromium ----

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let required = std::env::var_os("CI").is_some() || std::env::var_os("MINIDIFFUSION_REQUIRE_CHROMIUM").is_some();
    assert!(!required, "chromium is not installed but CI / MINIDIFFUSION_REQUIRE_CHROMIUM is set (.ci/run installs it)");
    None
}

/// Screenshot `url` (1200×1600) with headless Chromium into `png`.
fn screenshot(browser: &Path, url: &str, png_path: &Path, scratch: &Path) -> image::RgbImage {
    let profile = scratch.join(format!("chromium-profile-{}", png_path.file_stem().unwrap().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        .args(["--disable-component-update", "--disable-sync", "--hide-scrollbars", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .args(["--window-size=1200,1600", "--virtual-time-budget=3000", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success() && png_path.is_file(), "chromium failed: {err}");
    image::open(png_path).unwrap().to_rgb8()
}

/// Grid colours of the synthetic runs by epoch: green, yellow, magenta (the last shown first).
fn epoch_colour(epoch: usize) -> [f32; 3] {
    [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]][epoch - 1]
}

/// A store with two finished runs: curves, and three coloured sample grids each.
fn synthetic_store(dir: &Path) -> PathBuf {
    let db = dir.join("runs.db");
    let mut store = Store::open(&db).unwrap();
    for (r, name) in ["red-run", "blue-run"].iter().enumerate() {
        let id = store
            .create_run(&NewRun {
                name: (*name).into(),
                config: json!({"lr": ([1e-2f64, 3e-3][r]), "batch_size": 64, "unet": {"layers": 2}}),
                command: vec!["minidiffusion".into(), "train".into()],
                version: "0.1.0".into(),
                device: "cpu".into(),
                ..Default::default()
            })
            .unwrap();
        let mut rows = vec![];
        for step in 1..=120i64 {
            let epoch = (step - 1) / 40 + 1;
            let loss = 0.1 + 0.9 * (-(step as f64) / (20.0 + 30.0 * r as f64)).exp() + 0.02 * ((step * 7 % 5) as f64 / 5.0);
            rows.push(MetricRow { step, epoch, key: "loss".into(), value: loss, time: now() });
            let lr = 0.01 * (std::f64::consts::PI * step as f64 / 120.0).sin().max(0.0) / (1.0 + r as f64);
            rows.push(MetricRow { step, epoch, key: "lr".into(), value: lr, time: now() });
        }
        let mut arts = vec![];
        for epoch in 1..=3usize {
            let step = epoch as i64 * 40;
            for (key, v) in [("train_loss", 0.5 / epoch as f64 + 0.1 * r as f64), ("eval_loss", 0.45 / epoch as f64 + 0.1 * r as f64)] {
                rows.push(MetricRow { step, epoch: epoch as i64, key: key.into(), value: v, time: now() });
            }
            // 16 images 32×32, RGB, in the epoch's colour with a shading pattern
            let c = epoch_colour(epoch);
            let mut v = vec![0f32; 16 * 3 * 32 * 32];
            for i in 0..16 {
                for ch in 0..3 {
                    for y in 0..32 {
                        for x in 0..32 {
                            let shade = 0.75 + 0.25 * (((x / 4 + y / 4 + i) % 2) as f32);
                            v[((i * 3 + ch) * 32 + y) * 32 + x] = c[ch] * shade;
                        }
                    }
                }
            }
            let bytes = png::grid_png_bytes(&v, &[16, 3, 32, 32], 0.0, 1.0, 4).unwrap();
            let path = store.run_dir(id).join(format!("grid-{epoch}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            arts.push(Artifact { kind: "sample_grid".into(), step, epoch: epoch as i64, path: store.stored_path(&path), sha256: sha256_hex(&bytes), time: now() });
        }
        store.append(id, &rows, &arts).unwrap();
        store.finish(id, "finished", None).unwrap();
    }
    db
}

fn count(img: &image::RgbImage, ys: std::ops::Range<u32>, pred: impl Fn([u8; 3]) -> bool) -> usize {
    ys.flat_map(|y| (0..img.width()).map(move |x| (x, y))).filter(|&(x, y)| y < img.height() && pred(img.get_pixel(x, y).0)).count()
}

/// The page's charts and sample grids were drawn: run colours in the chart
/// band, the last epoch's (magenta) grids below it and no first-epoch (green) grid.
fn check_screenshot(img: &image::RgbImage) -> String {
    assert_eq!(img.width(), 1200);
    let charts = report::HEADER_H..report::HEADER_H + report::CHART_H;
    let below = report::HEADER_H + report::CHART_H..img.height();
    let red = count(img, charts.clone(), |[r, g, b]| r > 190 && g < 80 && (40..130).contains(&b)); // #e6194b
    let blue = count(img, charts.clone(), |[r, g, b]| r < 110 && (70..140).contains(&g) && b > 180); // #4363d8
    let magenta = count(img, below.clone(), |[r, g, b]| r > 150 && g < 60 && b > 150);
    let green = count(img, below.clone(), |[r, g, b]| r < 60 && g > 150 && b < 60);
    let white = count(img, charts, |[r, g, b]| r > 245 && g > 245 && b > 245);
    let summary = format!("red curve px {red}, blue curve px {blue}, magenta grid px {magenta}, green grid px {green}, white chart px {white}");
    assert!(red > 300 && blue > 300, "curves not drawn: {summary}");
    // two runs × (side-by-side 256² + gallery 256²) of grid images, ~85% magenta
    assert!(magenta > 4 * 256 * 256 / 2, "sample grids not drawn: {summary}");
    assert_eq!(green, 0, "the first epoch's grid shows although the slider starts at the last: {summary}");
    assert!(white > 100_000, "chart background missing: {summary}");
    summary
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        println!("SKIPPED: chromium not installed (set CI or MINIDIFFUSION_REQUIRE_CHROMIUM to make this fail)");
        return;
    };
    let dir = temp_dir("report-shot");
    let db = synthetic_store(&dir);
    let html = dir.join("report.html");
    let out = Command::new(BIN).args(["runs", "report", "--out", html.to_str().unwrap(), "--runs-db", db.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "self-contained");
    let img = screenshot(&browser, &format!("file://{}", html.display()), &dir.join("report.png"), &dir);
    let summary = check_screenshot(&img);
    println!("report screenshot {}: {summary}", dir.join("report.png").display());
    // the sliders' script: moving the side-by-side slider to the first epoch shows its (green) grids
    let moved = dir.join("moved.html");
    std::fs::write(&moved, page.replace("</body>", "<script>showEpoch(0,false);showRun(1,0,false);</script></body>")).unwrap();
    let img = screenshot(&browser, &format!("file://{}", moved.display()), &dir.join("moved.png"), &dir);
    let below = report::HEADER_H + report::CHART_H..img.height();
    let green = count(&img, below.clone(), |[r, g, b]| r < 60 && g > 150 && b < 60);
    let magenta = count(&img, below, |[r, g, b]| r > 150 && g < 60 && b > 150);
    // side by side: both runs at epoch 1 (green); galleries: run 1 at epoch 1, run 2 still at epoch 3
    assert!(green > 3 * 256 * 256 / 2 && magenta > 256 * 256 / 2 && magenta < 2 * 256 * 256, "slider script: green {green}, magenta {magenta}");
    println!("after moving the sliders to epoch 1: green grid px {green}, magenta grid px {magenta}");
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn served_page_renders_in_headless_chromium_and_stops_by_itself() {
    let dir = temp_dir("serve-shot");
    let db = synthetic_store(&dir);
    let mut child = Command::new(BIN)
        .args(["runs", "serve", "--port", "0", "--max-seconds", "90", "--runs-db", db.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("{line}")).to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let (status, token) = http_get(&addr, "/state");
    assert!(status.contains("200"), "{status}");
    let (status, page) = http_get(&addr, "/");
    assert!(status.contains("200") && page.contains("fetch('/state'") && page.contains(&token), "live page polls /state");
    let (status, _) = http_get(&addr, "/nothing");
    assert!(status.contains("404"));
    // a request naming another host is refused (DNS rebinding)
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");

    if let Some(browser) = chromium() {
        let img = screenshot(&browser, &url, &dir.join("served.png"), &dir);
        let summary = check_screenshot(&img);
        println!("served page screenshot {}: {summary}", dir.join("served.png").display());
    } else {
        println!("SKIPPED (screenshot part): chromium not installed (set CI or MINIDIFFUSION_REQUIRE_CHROMIUM to make this fail)");
    }
    // it stops by itself after --max-seconds; do not wait that long here
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_stops_after_max_seconds() {
    let dir = temp_dir("serve-stop");
    let db = synthetic_store(&dir);
    let mut child = Command::new(BIN)
        .args(["runs", "serve", "--port", "0", "--max-seconds", "1", "--runs-db", db.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
}

/// Several processes (here threads, each with its own connection) creating
/// the same new store at the same moment all get it: SQLite answers the
/// switch to WAL with an immediate "locked" rather than a busy wait, and a
/// deferred schema transaction fails its read-to-write upgrade at once; the
/// store retries the first and takes the write lock up front for the second.
#[test]
fn a_new_store_opened_by_several_at_once_opens_for_all() {
    let work = temp_dir("store-race");
    for round in 0..40 {
        let path = work.join(format!("r{round}")).join("runs.db");
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        Store::open(&path).map(|st| st.journal_mode().unwrap())
                    })
                })
                .collect();
            for o in opened {
                assert_eq!(o.join().unwrap().unwrap_or_else(|e| panic!("round {round}: {e}")), "wal");
            }
        });
    }
}
