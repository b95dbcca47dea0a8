//! pmxcfs: the Proxmox cluster filesystem daemon (Rust implementation).
//!
//! `main` parses the C daemon's options (plus long options for paths),
//! sets up logging and hands over to [`daemon::run`].

#![deny(unsafe_op_in_unsafe_fn)]

mod cluster;
mod corosync_conf;
mod daemon;
mod dcdb;
mod fs;
mod ipc_glue;
mod logging;
mod plugins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use pmxcfs_api_types::paths;

/// Proxmox cluster filesystem
#[derive(Parser, Debug)]
#[command(
    name = "pmxcfs",
    version,
    about = "Proxmox cluster filesystem (Rust implementation)"
)]
pub struct Cli {
    /// Turn on debug messages
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Do not daemonize server
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Force local mode (ignore corosync.conf, force quorum)
    #[arg(short = 'l', long)]
    pub local: bool,
    /// Database file
    #[arg(long, value_name = "PATH", default_value = paths::DB_FILE)]
    pub db: PathBuf,
    /// Instance lock file [default: <directory of --db>/.pmxcfs.lockfile]
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
    /// Mount point
    #[arg(long, value_name = "PATH", default_value = paths::MOUNT_POINT)]
    pub mount: PathBuf,
    /// Run directory (holds the restart flag)
    #[arg(long, value_name = "PATH", default_value = paths::RUN_DIR)]
    pub run_dir: PathBuf,
    /// Pid file
    #[arg(long, value_name = "PATH", default_value = paths::PID_FILE)]
    pub pid_file: PathBuf,
    /// Host corosync configuration
    #[arg(long, value_name = "PATH", default_value = paths::HOST_COROSYNC_CONF)]
    pub corosync_conf: PathBuf,
    /// RRD database directory
    #[arg(long, value_name = "PATH", default_value = paths::RRD_DIR)]
    pub rrd_dir: PathBuf,
    /// rrdcached socket (updates fall back to librrd without it)
    #[arg(long, value_name = "PATH", default_value = paths::RRDCACHED_SOCKET)]
    pub rrdcached_socket: PathBuf,
    /// Node name [default: uname nodename up to the first '.']
    #[arg(long, value_name = "NAME")]
    pub nodename: Option<String>,
    /// Node IP address [default: resolved from the node name; loopback-only is an error]
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<std::net::IpAddr>,
    /// libqb IPC service name
    #[arg(long, value_name = "NAME", default_value = paths::IPC_SERVICE)]
    pub ipc_name: String,
    /// Seconds between the VERIFY rounds of the lowest node (cluster mode)
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub verify_interval: u64,
    /// Print the database's index and its VERIFY checksum as the C daemon
    /// computes them (read-only; the node's daemon may run), then exit
    #[arg(long)]
    pub print_index: bool,
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// `--print-index`: one line per entry in index order (inode, parent,
/// version, writer, mtime, type, size, index digest, name), then the
/// checksum. Two nodes are in sync when their outputs are equal.
fn print_index(db: &std::path::Path) -> ExitCode {
    use std::fmt::Write;
    let ins = match pmxcfs_memdb::inspect(db) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let hex = |b: &[u8]| {
        b.iter().fold(String::new(), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
    };
    let mut out = String::new();
    let header = pmxcfs_memdb::IndexHeader::parse(&ins.index);
    if let Some(h) = header {
        let _ = writeln!(
            out,
            "version {} last_inode {} writer {} mtime {} entries {}",
            h.version, h.last_inode, h.writer, h.mtime, h.size
        );
    }
    for (i, e) in ins.entries.iter().enumerate() {
        let o = pmxcfs_memdb::INDEX_HEADER_SIZE + i * pmxcfs_memdb::INDEX_ENTRY_SIZE + 8;
        let digest = ins.index.get(o..o + 32).map(hex).unwrap_or_default();
        let kind = match e.kind {
            pmxcfs_api_types::FileKind::Dir => 'd',
            pmxcfs_api_types::FileKind::File => 'f',
        };
        let name = if e.inode.0 == 0 {
            "__version__"
        } else {
            &e.name
        };
        let _ = writeln!(
            out,
            "{:016x} {:016x} {} {} {} {kind} {} {digest} {name}",
            e.inode.0,
            e.parent.0,
            e.version,
            e.writer,
            e.mtime,
            e.data.len()
        );
    }
    let _ = writeln!(out, "checksum {}", hex(&ins.checksum));
    print!("{out}");
    ExitCode::SUCCESS
}

/// glibc malloc settings, before any thread starts:
/// - a fixed mmap threshold (128 KiB, glibc's initial value): buffers of
///   large files (a 1 MiB write passes through several) are mapped and
///   unmapped, never left in the heap. Left dynamic, glibc raises the
///   threshold to the largest such buffer freed, and from then on they
///   come from the heap, whose free middle is not given back (measured:
///   44 MB RSS instead of 22 MB after 40 writes of 1 MiB by 4 clients);
/// - at most two arenas: the FUSE and runtime threads would otherwise get
///   one each (glibc allows 8 per CPU), every one keeping its own free
///   memory.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if cli.print_index {
        return print_index(&cli.db);
    }
    let log = logging::init(cli.debug);
    if !cli.extra.is_empty() {
        tracing::error!("too many arguments");
        return ExitCode::from(255);
    }
    match daemon::run(cli, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(255)
        }
    }
}
