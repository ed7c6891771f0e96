//! The A/B switches of the GPU runs (`MINIDIFFUSION_*` variables that pick one
//! of two equivalent or documented code paths): each reads its variable once
//! per process, and a scope on one thread (tests) can override it.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::LocalKey;

/// A switch's value: this thread's setting (tests) if any, else `read` of the
/// environment, once per process.
pub(crate) fn switch(local: &'static LocalKey<Cell<Option<bool>>>, env: &'static OnceLock<bool>, read: fn() -> bool) -> bool {
    local.with(|v| v.get()).unwrap_or_else(|| *env.get_or_init(read))
}

/// Run `f` with `local` set to `on` on this thread.
pub(crate) fn with_switch<R>(local: &'static LocalKey<Cell<Option<bool>>>, on: bool, f: impl FnOnce() -> R) -> R {
    let before = local.with(|v| v.replace(Some(on)));
    let out = f();
    local.with(|v| v.set(before));
    out
}
