//! The runs store: one SQLite file (WAL mode, so readers never block the
//! writers and two trainings can share it; a busy timeout makes concurrent
//! writers wait for each other instead of failing).
//!
//! ```sql
//! runs(id INTEGER PRIMARY KEY, name, status, started, ended, heartbeat, pid, host,
//!      config JSON, command JSON, version, git_commit, git_dirty, git_diff,
//!      device, gpu, error, extra JSON)
//! metrics(run, step, epoch, key, value, time)        -- index (run, key, step)
//! artifacts(id, run, kind, step, epoch, path, sha256, time)
//! ```
//!
//! Times are Unix seconds. `status` is `running`, `finished`, `failed` or
//! `interrupted`; a `running` run whose heartbeat is older than
//! [`STALE_AFTER_S`] or whose process is gone (same host) reads as `died`.
//! Artifact paths are stored relative to the store's directory when inside it.

use super::{hostname, iso_time, now, pid_alive};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A running run's heartbeat is refreshed this often (by the tracker's writer thread).
pub const HEARTBEAT_EVERY_S: f64 = 2.0;
/// A `running` run with an older heartbeat has died.
pub const STALE_AFTER_S: f64 = 60.0;
/// How long a writer waits for another writer's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
    started REAL NOT NULL,
    ended REAL,
    heartbeat REAL NOT NULL,
    pid INTEGER,
    host TEXT,
    config TEXT NOT NULL,
    command TEXT NOT NULL,
    version TEXT NOT NULL,
    git_commit TEXT,
    git_dirty INTEGER,
    git_diff TEXT,
    device TEXT,
    gpu TEXT,
    error TEXT,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS metrics (
    run INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    key TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run_key_step ON metrics(run, key, step);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run, kind, step);
";

/// What a new run records at its start.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    /// Empty: `<preset>-<dataset>-<id>` style names are made by the caller; here "run-<id>".
    pub name: String,
    pub config: Value,
    pub command: Vec<String>,
    pub version: String,
    pub git: super::GitInfo,
    pub device: String,
    pub gpu: Option<String>,
    pub extra: Value,
}

/// One metric value.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub step: i64,
    pub epoch: i64,
    pub key: String,
    pub value: f64,
    pub time: f64,
}

/// One artifact (a file with its digest).
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub kind: String,
    pub step: i64,
    pub epoch: i64,
    /// As stored: relative to the store's directory when inside it.
    pub path: String,
    pub sha256: String,
    pub time: f64,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: i64,
    pub name: String,
    /// As stored (see [`Run::status`] for what it means now).
    pub stored_status: String,
    pub started: f64,
    pub ended: Option<f64>,
    pub heartbeat: f64,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub config: Value,
    pub command: Vec<String>,
    pub version: String,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub git_diff: Option<String>,
    pub device: Option<String>,
    pub gpu: Option<String>,
    pub error: Option<String>,
    pub extra: Value,
}

impl Run {
    /// The stored status, except that a `running` run whose process is gone is `died`.
    pub fn status(&self) -> String {
        if self.stored_status == "running" {
            let stale = now() - self.heartbeat > STALE_AFTER_S;
            let gone_here = self.host.as_deref() == Some(hostname().as_str()) && self.pid.is_some_and(|p| !pid_alive(p));
            if stale || gone_here {
                return "died".into();
            }
        }
        self.stored_status.clone()
    }

    /// The JSON of `runs list` (and the head of `runs show`).
    pub fn summary_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "status": self.status(),
            "stored_status": self.stored_status,
            "started": iso_time(self.started),
            "started_unix": self.started,
            "ended": self.ended.map(iso_time),
            "ended_unix": self.ended,
            "duration_s": self.ended.unwrap_or(self.heartbeat.max(self.started)) - self.started,
            "heartbeat_unix": self.heartbeat,
            "pid": self.pid,
            "host": self.host,
            "config": self.config,
            "command": self.command,
            "version": self.version,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "device": self.device,
            "gpu": self.gpu,
            "error": self.error,
            "extra": self.extra,
        })
    }
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// `file` as the store at `db` records it: relative to the store's directory when inside it, else absolute.
pub fn stored_path_for(db: &Path, file: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (file, dir) = (abs(file), abs(dir));
    file.strip_prefix(&dir).map_or_else(|_| file.display().to_string(), |rel| rel.display().to_string())
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Data { path: path.display().to_string(), msg: format!("runs store: {e}") }
}

impl Store {
    /// Open (creating the file, its directory and the schema when missing).
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        }
        let conn = Connection::open(path).map_err(db_err(path))?;
        let store = Store::configure(conn, path)?;
        store.migrate()?;
        Ok(store)
    }

    /// Open a store that must exist already (the `runs` commands).
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(Error::Data {
                path: path.display().to_string(),
                msg: format!("no runs store here (train creates it; choose one with --runs-db or {})", super::RUNS_ENV),
            });
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(db_err(path))?;
        let store = Store::configure(conn, path)?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(conn: Connection, path: &Path) -> Result<Store> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err(path))?;
        // Switching a new store to WAL needs it alone for a moment, and SQLite
        // answers "locked" at once, without the busy wait, when another process
        // opens the store at the same time (two trainings starting): retry.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Ok(mode) => break mode,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => return Err(db_err(path)(e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Data { path: path.display().to_string(), msg: format!("runs store: cannot use WAL mode (got {mode})") });
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;").map_err(db_err(path))?;
        Ok(Store { conn, path: path.to_path_buf() })
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err(&self.path))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Data {
                path: self.path.display().to_string(),
                msg: format!("runs store has schema version {version}; this binary knows up to {SCHEMA_VERSION}"),
            });
        }
        if version < SCHEMA_VERSION {
            // IMMEDIATE takes the write lock up front, waiting on the busy timeout.
            // A deferred transaction reads, then upgrades to write: when two new
            // trainings open a fresh store at once, SQLite fails one of those
            // upgrades at once ("database is locked") instead of waiting.
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate).map_err(db_err(&self.path))?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err(&self.path))?;
            if version < SCHEMA_VERSION {
                tx.execute_batch(SCHEMA).map_err(db_err(&self.path))?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(db_err(&self.path))?;
            }
            tx.commit().map_err(db_err(&self.path))?;
        }
        Ok(())
    }

    /// SQLite's journal mode ("wal").
    pub fn journal_mode(&self) -> Result<String> {
        self.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(db_err(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory a run's files (sample grids, plots) go to: `<store dir>/<store stem>-files/run-<id>`.
    pub fn run_dir(&self, run: i64) -> PathBuf {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "runs".into());
        self.dir().join(format!("{stem}-files")).join(format!("run-{run}"))
    }

    fn dir(&self) -> PathBuf {
        self.path.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// An artifact path as stored (relative to the store's directory when inside it).
    pub fn stored_path(&self, file: &Path) -> String {
        stored_path_for(&self.path, file)
    }

    /// Where a stored artifact path is on disk.
    pub fn resolve(&self, stored: &str) -> PathBuf {
        let p = Path::new(stored);
        if p.is_absolute() { p.to_path_buf() } else { self.dir().join(p) }
    }

    /// Record a new `running` run of this process; returns its id.
    pub fn create_run(&self, new: &NewRun) -> Result<i64> {
        let t = now();
        let err = db_err(&self.path);
        self.conn
            .execute(
                "INSERT INTO runs (name, status, started, heartbeat, pid, host, config, command, version, git_commit, git_dirty, git_diff, device, gpu, extra)
                 VALUES (?1, 'running', ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    new.name,
                    t,
                    std::process::id(),
                    hostname(),
                    new.config.to_string(),
                    serde_json::to_string(&new.command).expect("strings"),
                    new.version,
                    new.git.commit,
                    new.git.dirty,
                    new.git.diff,
                    new.device,
                    new.gpu,
                    if new.extra.is_null() { "{}".to_string() } else { new.extra.to_string() },
                ],
            )
            .map_err(&err)?;
        let id = self.conn.last_insert_rowid();
        if new.name.is_empty() {
            self.conn.execute("UPDATE runs SET name = ?1 WHERE id = ?2", params![format!("run-{id}"), id]).map_err(&err)?;
        }
        Ok(id)
    }

    /// Rename a run.
    pub fn set_name(&self, run: i64, name: &str) -> Result<()> {
        self.conn.execute("UPDATE runs SET name = ?1 WHERE id = ?2", params![name, run]).map_err(db_err(&self.path))?;
        Ok(())
    }

    /// Append `metrics` and `artifacts` of `run` and refresh its heartbeat, in one transaction.
    pub fn append(&mut self, run: i64, metrics: &[MetricRow], artifacts: &[Artifact]) -> Result<()> {
        let err = db_err(&self.path);
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(&err)?;
        {
            let mut m = tx.prepare_cached("INSERT INTO metrics (run, step, epoch, key, value, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(&err)?;
            for r in metrics {
                m.execute(params![run, r.step, r.epoch, r.key, r.value, r.time]).map_err(&err)?;
            }
            let mut a =
                tx.prepare_cached("INSERT INTO artifacts (run, kind, step, epoch, path, sha256, time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").map_err(&err)?;
            for r in artifacts {
                a.execute(params![run, r.kind, r.step, r.epoch, r.path, r.sha256, r.time]).map_err(&err)?;
            }
            tx.execute("UPDATE runs SET heartbeat = ?1 WHERE id = ?2", params![now(), run]).map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Mark `run` finished, failed or interrupted.
    pub fn finish(&self, run: i64, status: &str, error: Option<&str>) -> Result<()> {
        let t = now();
        self.conn
            .execute("UPDATE runs SET status = ?1, ended = ?2, heartbeat = ?2, error = ?3 WHERE id = ?4", params![status, t, error, run])
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<Run> {
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        Ok(Run {
            id: r.get(0)?,
            name: r.get(1)?,
            stored_status: r.get(2)?,
            started: r.get(3)?,
            ended: r.get(4)?,
            heartbeat: r.get(5)?,
            pid: r.get::<_, Option<i64>>(6)?.map(|p| p as u32),
            host: r.get(7)?,
            config: serde_json::from_str(&text(8)?).unwrap_or(Value::Null),
            command: serde_json::from_str(&text(9)?).unwrap_or_default(),
            version: r.get(10)?,
            git_commit: r.get(11)?,
            git_dirty: r.get(12)?,
            git_diff: r.get(13)?,
            device: r.get(14)?,
            gpu: r.get(15)?,
            error: r.get(16)?,
            extra: serde_json::from_str(&text(17)?).unwrap_or(Value::Null),
        })
    }

    const RUN_COLUMNS: &str =
        "id, name, status, started, ended, heartbeat, pid, host, config, command, version, git_commit, git_dirty, git_diff, device, gpu, error, extra";

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<Run>> {
        let err = db_err(&self.path);
        let mut st = self.conn.prepare(&format!("SELECT {} FROM runs ORDER BY id", Self::RUN_COLUMNS)).map_err(&err)?;
        let rows = st.query_map([], Self::run_from_row).map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    /// The run with this id, else the newest run with this name.
    pub fn run(&self, id_or_name: &str) -> Result<Run> {
        let err = db_err(&self.path);
        let by_id = match id_or_name.parse::<i64>() {
            Ok(id) => self
                .conn
                .query_row(&format!("SELECT {} FROM runs WHERE id = ?1", Self::RUN_COLUMNS), [id], Self::run_from_row)
                .optional()
                .map_err(&err)?,
            Err(_) => None,
        };
        let found = match by_id {
            Some(r) => Some(r),
            None => self
                .conn
                .query_row(&format!("SELECT {} FROM runs WHERE name = ?1 ORDER BY id DESC LIMIT 1", Self::RUN_COLUMNS), [id_or_name], Self::run_from_row)
                .optional()
                .map_err(&err)?,
        };
        found.ok_or_else(|| Error::Data { path: self.path.display().to_string(), msg: format!("no run with id or name '{id_or_name}'") })
    }

    /// Every metric of `run`: key → rows ordered by step (then insertion).
    pub fn metrics(&self, run: i64) -> Result<BTreeMap<String, Vec<MetricRow>>> {
        let err = db_err(&self.path);
        let mut st = self.conn.prepare("SELECT step, epoch, key, value, time FROM metrics WHERE run = ?1 ORDER BY key, step, rowid").map_err(&err)?;
        let rows = st
            .query_map([run], |r| Ok(MetricRow { step: r.get(0)?, epoch: r.get(1)?, key: r.get(2)?, value: r.get(3)?, time: r.get(4)? }))
            .map_err(&err)?;
        let mut out: BTreeMap<String, Vec<MetricRow>> = BTreeMap::new();
        for row in rows {
            let row = row.map_err(&err)?;
            out.entry(row.key.clone()).or_default().push(row);
        }
        Ok(out)
    }

    /// How many metric rows `run` has under `key`.
    pub fn metric_count(&self, run: i64, key: &str) -> Result<i64> {
        self.conn.query_row("SELECT COUNT(*) FROM metrics WHERE run = ?1 AND key = ?2", params![run, key], |r| r.get(0)).map_err(db_err(&self.path))
    }

    /// The artifacts of `run` in the order they were made.
    pub fn artifacts(&self, run: i64) -> Result<Vec<Artifact>> {
        let err = db_err(&self.path);
        let mut st = self.conn.prepare("SELECT kind, step, epoch, path, sha256, time FROM artifacts WHERE run = ?1 ORDER BY id").map_err(&err)?;
        let rows = st
            .query_map([run], |r| Ok(Artifact { kind: r.get(0)?, step: r.get(1)?, epoch: r.get(2)?, path: r.get(3)?, sha256: r.get(4)?, time: r.get(5)? }))
            .map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    /// Changes whenever a run, metric or artifact is added or a status changes (for the served page's refresh).
    pub fn state_token(&self) -> Result<String> {
        self.conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM runs) || '-' || (SELECT IFNULL(MAX(rowid), 0) FROM metrics) || '-' ||
                        (SELECT COUNT(*) FROM artifacts) || '-' || (SELECT IFNULL(GROUP_CONCAT(status), '') FROM runs)",
                [],
                |r| r.get(0),
            )
            .map_err(db_err(&self.path))
    }

    /// `runs show --json`: the run, its metrics as key → [[step, value], …] and its artifacts.
    pub fn show_json(&self, run: &Run) -> Result<Value> {
        let mut v = run.summary_json();
        let metrics = self.metrics(run.id)?;
        let m: serde_json::Map<String, Value> =
            metrics.iter().map(|(k, rows)| (k.clone(), Value::Array(rows.iter().map(|r| json!([r.step, r.value])).collect()))).collect();
        let epochs: serde_json::Map<String, Value> =
            metrics.iter().map(|(k, rows)| (k.clone(), Value::Array(rows.iter().map(|r| json!(r.epoch)).collect()))).collect();
        let artifacts: Vec<Value> = self
            .artifacts(run.id)?
            .iter()
            .map(|a| {
                json!({"kind": a.kind, "path": a.path, "resolved_path": self.resolve(&a.path).display().to_string(),
                       "step": a.step, "epoch": a.epoch, "sha256": a.sha256, "time": a.time})
            })
            .collect();
        v["metrics"] = Value::Object(m);
        v["metric_epochs"] = Value::Object(epochs);
        v["artifacts"] = Value::Array(artifacts);
        v["git_diff"] = json!(run.git_diff);
        Ok(v)
    }
}
