//! `runs serve`: the report page over HTTP, on 127.0.0.1 only. Each request
//! re-reads the store; the page polls `/state` every 2 s (at most 1,800
//! times) and reloads when a run, metric, artifact or status was added.
//!
//! Routes: `/` (the page), `/state` (the store's state token), `/runs.json`
//! (the `runs list --json` array). Requests whose Host header is not
//! localhost/127.0.0.1 are refused (DNS rebinding); only GET and HEAD.

use super::report::{self, ReportOptions};
use super::store::Store;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Connections handled at once at most (others get 503).
const MAX_CONNECTIONS: usize = 16;

/// What to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub db: PathBuf,
    /// Runs to show (ids or names); empty: the newest ones, re-chosen at each request.
    pub runs: Vec<String>,
    /// 0: any free port.
    pub port: u16,
    /// Stop after this long (None: until killed).
    pub max_duration: Option<Duration>,
}

/// Bind 127.0.0.1:`port`, call `ready` with the address, then serve until `max_duration` passes.
pub fn serve(opts: &ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    Store::open_existing(&opts.db)?;
    let io = |e: std::io::Error| Error::Io { path: format!("127.0.0.1:{}", opts.port), source: e };
    let listener = TcpListener::bind(("127.0.0.1", opts.port)).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    ready(addr);
    let started = Instant::now();
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        if opts.max_duration.is_some_and(|m| started.elapsed() >= m) {
            return Ok(());
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = respond(&stream, "503 Service Unavailable", "text/plain", b"busy", false);
                    continue;
                }
                let (active, db, runs) = (active.clone(), opts.db.clone(), opts.runs.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &db, &runs, addr.port());
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(25)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

fn respond(mut stream: &TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn handle(stream: TcpStream, db: &Path, runs: &[String], port: u16) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    let mut host = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.by_ref().take(8192).read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("host")
        {
            host = Some(v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&stream, "405 Method Not Allowed", "text/plain", b"GET only", false);
    }
    let allowed = [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "127.0.0.1".into(), "localhost".into()];
    if !host.as_deref().is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h))) {
        return respond(&stream, "403 Forbidden", "text/plain", b"localhost only", head_only);
    }
    let path = target.split('?').next().unwrap_or("/");
    let page = || -> Result<(String, &'static str)> {
        let store = Store::open_existing(db)?;
        Ok(match path {
            "/" | "/index.html" => {
                let token = store.state_token()?;
                let chosen = report::select(&store, runs)?;
                let opts = ReportOptions { title: "minidiffusion runs (live)".into(), live_token: Some(token) };
                (report::render(&store, &chosen, &opts)?, "text/html; charset=utf-8")
            }
            "/state" => (store.state_token()?, "text/plain; charset=utf-8"),
            "/runs.json" => {
                let list: Vec<serde_json::Value> = store.runs()?.iter().map(|r| r.summary_json()).collect();
                (serde_json::Value::Array(list).to_string(), "application/json")
            }
            _ => return Err(Error::Data { path: path.into(), msg: "not found".into() }),
        })
    };
    match page() {
        Ok((body, ctype)) => respond(&stream, "200 OK", ctype, body.as_bytes(), head_only),
        Err(Error::Data { msg, .. }) if msg == "not found" => respond(&stream, "404 Not Found", "text/plain", b"not found", head_only),
        Err(e) => respond(&stream, "500 Internal Server Error", "text/plain", e.to_string().as_bytes(), head_only),
    }
}
