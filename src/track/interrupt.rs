//! Ctrl-C during training: the first SIGINT sets a flag that the tracking
//! callback checks after each batch (the run stops there, its rows are
//! committed and it is marked `interrupted`); a second one exits at once.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Install the handler (once per process; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping after this batch (Ctrl-C again to exit at once)");
        });
        if let Err(e) = installed {
            eprintln!("warning: cannot handle Ctrl-C ({e}); an interrupted run will read as died");
        }
    });
}

/// Whether Ctrl-C was pressed since the handler was installed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Ask the loop to stop as Ctrl-C does (tests, embedding programs).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The error that stops the loop.
pub fn error() -> crate::Error {
    crate::Error::Argument { op: "train", msg: "interrupted (SIGINT); the run is marked interrupted".into() }
}
