//! Logging: journald when it is there, stderr too (stderr goes to
//! /dev/null once daemonized), with the level switchable at run time
//! (`-d`, `.debug`).

use std::sync::Arc;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// Switches the log level between info and debug.
#[derive(Clone)]
pub struct LogControl {
    set: Arc<dyn Fn(bool) + Send + Sync>,
}

impl LogControl {
    pub fn set_debug(&self, on: bool) {
        (self.set)(on)
    }
}

fn level(debug: bool) -> LevelFilter {
    if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    }
}

pub fn init(debug: bool) -> LogControl {
    let (filter, handle) = reload::Layer::<LevelFilter, Registry>::new(level(debug));
    let journald = if std::path::Path::new("/run/systemd/journal/socket").exists() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier("pmxcfs".to_string()))
    } else {
        None
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald.map(|l| l.boxed()))
        .with(stderr)
        .try_init();
    LogControl {
        set: Arc::new(move |on| {
            let _ = handle.modify(|f| *f = level(on));
        }),
    }
}
