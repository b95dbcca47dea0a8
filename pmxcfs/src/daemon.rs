//! Daemon lifecycle (pmxcfs.c `main`): checks, instance lock, database,
//! mount, daemonizing, serving, and the orderly teardown on a signal or an
//! external unmount.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::MountOption;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chown, fork, getpid, pipe, setsid, ForkResult, Gid, Group, Pid, Uid};

use pmxcfs_api_types::paths;
use pmxcfs_memdb::{LocalSubmitter, MemDb, Submit};
use pmxcfs_status::Status;

use crate::cluster::{Cluster, ClusterSetup};
use crate::fs::CfsFs;
use crate::logging::LogControl;
use crate::plugins::PluginCtx;
use crate::Cli;

/// The node name: `uname` nodename up to the first dot.
fn uname_nodename() -> Result<String> {
    let uts = nix::sys::utsname::uname().context("Unable to read local node name")?;
    let full = uts.nodename().to_string_lossy().into_owned();
    Ok(full.split('.').next().unwrap_or_default().to_string())
}

/// First address of the node name that is not loopback (`lookup_node_ip`).
fn lookup_node_ip(nodename: &str) -> Option<IpAddr> {
    let addrs = (nodename, 0u16).to_socket_addrs().ok()?;
    addrs.map(|a| a.ip()).find(|ip| match ip {
        IpAddr::V4(v4) => v4.octets()[0] != 127,
        IpAddr::V6(v6) => !v6.is_loopback(),
    })
}

/// Threads serving FUSE requests, each on its own clone of the /dev/fuse
/// descriptor: a request that waits (a commit, later a cluster round trip)
/// holds one of them, the others keep serving.
const FUSE_THREADS: usize = 4;

/// Take the instance lock: 10 retries one second apart (exit 255 after).
fn acquire_lock(path: &Path) -> Result<Flock<File>> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("unable to create lock '{}'", path.display()))?;
    for i in (0..=10).rev() {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((_, e)) if i == 0 => bail!("unable to acquire pmxcfs lock: {e}"),
            Err((f, _)) => {
                file = f;
                if i == 10 {
                    tracing::info!("unable to acquire pmxcfs lock - trying again");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    unreachable!("the loop returns on its last iteration")
}

/// Do both paths name one existing file?
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Write the pid file atomically (0644).
fn write_pidfile(path: &Path, pid: Pid) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("unable to write pid file '{}'", path.display()))
}

fn create_restart_flag(path: &Path, gid: Gid) {
    match OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o440)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(_) => {
            let _ = chown(path, Some(Uid::from_raw(0)), Some(gid));
        }
        Err(e) => tracing::warn!("unable to create restart flag '{}': {e}", path.display()),
    }
}

/// Import the host corosync.conf into a new database (cluster setups).
fn import_corosync_conf(memdb: &Arc<MemDb>, host: &Path) -> Result<()> {
    let Ok(data) = std::fs::read(host) else {
        return Ok(());
    };
    let ops = [
        pmxcfs_api_types::Operation::Create {
            path: "corosync.conf".into(),
        },
        pmxcfs_api_types::Operation::Write {
            path: "corosync.conf".into(),
            offset: 0,
            data,
            truncate: true,
        },
    ];
    let submit = LocalSubmitter::new(memdb.clone());
    for op in ops {
        submit.submit(op).map_err(|e| {
            anyhow::anyhow!("memdb_write failed - unable to import corosync.conf: {e}")
        })?;
    }
    Ok(())
}

/// Fork; the parent waits until the child serves, writes the pid file and
/// exits 0 (or 255 if the child failed). Returns the pipe end the child
/// uses to say it is ready.
fn daemonize(pid_file: &Path) -> Result<OwnedFd> {
    let (rd, wr) = pipe().context("pipe error")?;
    // SAFETY: no other thread exists yet (the runtime and the FUSE thread
    // are started in the child), so the child may run arbitrary code.
    match unsafe { fork() }.context("failed to daemonize program")? {
        ForkResult::Parent { child } => {
            drop(wr);
            let mut buf = [0u8; 1];
            let mut rd = File::from(rd);
            let ok = matches!(rd.read(&mut buf), Ok(1)) && buf[0] == b'1';
            let code = if ok {
                match write_pidfile(pid_file, child) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        255
                    }
                }
            } else {
                tracing::error!("child failed to send '1'");
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                255
            };
            // Leave without running destructors: the mount belongs to the child.
            // SAFETY: _exit only ends this process.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Child => {
            drop(rd);
            let _ = setsid();
            let _ = std::env::set_current_dir("/");
            Ok(wr)
        }
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit (systemd gives services
/// 1024 soft, 524288 hard; an unlimited hard limit means fs.nr_open): every
/// IPC connection holds a descriptor, and the IPC server fits its connection
/// caps to this limit.
fn raise_nofile_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    let soft = r.rlim_cur;
    r.rlim_cur = if r.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        r.rlim_max
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if soft < r.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        tracing::warn!(
            "unable to raise RLIMIT_NOFILE from {soft} to {}",
            r.rlim_cur
        );
    }
}

pub fn run(cli: Cli, log: LogControl) -> Result<()> {
    raise_nofile_limit();
    let nodename = match &cli.nodename {
        Some(n) => n.clone(),
        None => uname_nodename()?,
    };
    if nodename.is_empty() {
        bail!("Unable to read local node name");
    }
    let ip = match cli.node_ip {
        Some(ip) => ip,
        None => lookup_node_ip(&nodename).with_context(|| {
            format!(
                "Unable to resolve node name '{nodename}' to a non-loopback IP address - \
                 missing entry in '/etc/hosts' or DNS? (or give --node-ip)"
            )
        })?,
    };
    tracing::info!("resolved node name '{nodename}' to '{ip}' for default node IP address");

    let gid = Group::from_name("www-data")
        .ok()
        .flatten()
        .context("Unable to get www-data group ID")?
        .gid;

    umask(Mode::from_bits_truncate(0o027));
    let db_dir = cli
        .db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let _ = std::fs::DirBuilder::new().mode(0o750).create(&db_dir);
    let _ = std::fs::DirBuilder::new().mode(0o750).create(&cli.run_dir);
    let _ = chown(&cli.run_dir, Some(Uid::from_raw(0)), Some(gid));

    // The database itself is protected by the lock file beside it (the one
    // the C daemon takes), whatever --lock-file names; a different
    // --lock-file is taken as well.
    let db_lock_path = db_dir.join(paths::LOCK_FILE_NAME);
    let _db_lock = acquire_lock(&db_lock_path)?;
    let _lock = match &cli.lock_file {
        Some(p) if !same_file(p, &db_lock_path) => Some(acquire_lock(p)?),
        _ => None,
    };

    let rrd = pmxcfs_rrd::RrdWriter::new(&cli.rrd_dir, Some(cli.rrdcached_socket.clone()));
    let status = Arc::new(Status::with_rrd(&nodename, Some(rrd)));
    let clog = Arc::new(std::sync::Mutex::new(pmxcfs_logger::ClusterLog::new()));
    {
        let now = pmxcfs_api_types::now_secs();
        let mut log = clog.lock().unwrap_or_else(|p| p.into_inner());
        let _ = log.add(
            &nodename,
            "root",
            "cluster",
            std::process::id(),
            6,
            now,
            "starting cluster log",
        );
    }
    let create = !cli.db.exists();
    let memdb = Arc::new(MemDb::open(&cli.db, Some(status.clone())).with_context(|| {
        format!(
            "memdb_open failed - unable to open database '{}'",
            cli.db.display()
        )
    })?);
    if create && !cli.local {
        import_corosync_conf(&memdb, &cli.corosync_conf)?;
    }
    // cluster mode when the database holds corosync.conf (pmxcfs.c)
    let cluster = if memdb.read("corosync.conf").is_some() && !cli.local {
        let setup = ClusterSetup::new(
            memdb.clone(),
            status.clone(),
            clog.clone(),
            cli.corosync_conf.clone(),
            ip.to_string(),
            Duration::from_secs(cli.verify_interval.max(1)),
        );
        setup.sync_corosync_conf();
        Some(setup)
    } else {
        if cli.local && memdb.read("corosync.conf").is_some() {
            tracing::info!("forcing local mode (although corosync.conf exists)");
        }
        status.set_quorate(true);
        None
    };

    let submit: Arc<dyn Submit> = match &cluster {
        Some(c) => c.submitter(),
        None => Arc::new(LocalSubmitter::new(memdb.clone())),
    };
    let ctx = PluginCtx {
        memdb: memdb.clone(),
        status: status.clone(),
        clog: clog.clone(),
        nodename: nodename.clone(),
        debug: Arc::new(AtomicBool::new(cli.debug)),
        set_debug: Box::new(move |on| log.set_debug(on)),
    };
    let fs = CfsFs::new(submit, ctx, gid.as_raw());

    let _ = nix::mount::umount2(&cli.mount, nix::mount::MntFlags::MNT_FORCE);
    let _ = std::fs::DirBuilder::new().mode(0o750).create(&cli.mount);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("/dev/fuse".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All; // allow_other
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, &cli.mount, &config)
        .with_context(|| format!("fuse_mount error on '{}'", cli.mount.display()))?;
    let unmounter = session.unmount_callable();

    let ready = if cli.foreground {
        write_pidfile(&cli.pid_file, getpid())?;
        None
    } else {
        Some(daemonize(&cli.pid_file)?)
    };

    let restart_flag = cli.run_dir.join(paths::RESTART_FLAG_NAME);
    // One worker: the IPC tasks never block (RRD I/O and shm set-up go to
    // spawn_blocking), and with one worker a request costs one wake-up and
    // one recv (bench-ipc: 4-client p99 0.84-0.96x C's, against 1.17-1.56x
    // with two workers that steal each other's connections).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("unable to start the runtime")?;
    let kv_broadcast = cluster.as_ref().map(ClusterSetup::kvstore_sender);
    let inflight = cluster.as_ref().map(ClusterSetup::inflight);
    // after the fork: threads do not survive it
    let cluster = match cluster {
        Some(setup) => Some(setup.start().context("unable to start cluster services")?),
        None => None,
    };
    let ipc = IpcSetup {
        config: pmxcfs_ipc::ServerConfig {
            service_name: cli.ipc_name.clone(),
            www_data_gid: gid.as_raw(),
            max_msg_size: pmxcfs_ipc::DEFAULT_MAX_MSG_SIZE,
            ..Default::default()
        },
        memdb: memdb.clone(),
        ops: Arc::new(crate::ipc_glue::StatusBridge {
            memdb: memdb.clone(),
            status: status.clone(),
            clog: clog.clone(),
            nodename: nodename.clone(),
            kvstore: kv_broadcast.map(std::sync::Mutex::new),
            inflight,
        }),
    };
    let served = Serve {
        session,
        unmounter,
        mount: &cli.mount,
        ready,
        restart_flag: &restart_flag,
        gid,
        ipc,
        cluster,
    };
    let result = rt.block_on(serve(served));

    memdb.checkpoint();
    drop(memdb);
    let _ = std::fs::remove_file(&cli.pid_file);
    match &result {
        Ok(()) => tracing::info!("exit proxmox configuration filesystem (0)"),
        Err(e) => tracing::error!("exit proxmox configuration filesystem: {e:#}"),
    }
    result
}

/// The FUSE connection id (minor device number) of the mount at `mount`,
/// from /proc/self/mountinfo; used to abort a connection that a busy lazy
/// unmount leaves open.
fn fuse_connection_id(mount: &Path) -> Option<u32> {
    let mount = std::fs::canonicalize(mount).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        if f.get(4).map(Path::new) == Some(mount.as_path()) {
            f.get(2)?.split(':').nth(1)?.parse().ok()
        } else {
            None
        }
    })
}

/// Unmount and make the FUSE session end even if the mount is busy:
/// plain unmount, else lazy unmount (as libfuse does), and if the session
/// still runs after that, abort the connection.
async fn stop_fuse(
    unmounter: &mut fuser::SessionUnmounter,
    mount: &Path,
    conn: Option<u32>,
    done: &mut tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = unmounter.unmount() {
        tracing::debug!("unmount: {e}");
    }
    // A busy mount stays after the plain unmount (fuser only logs that):
    // detach it lazily, as libfuse does. EINVAL when already gone.
    let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
    let wait = |done: &mut tokio::sync::watch::Receiver<bool>| {
        let mut done = done.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(2), done.wait_for(|d| *d))
                .await
                .is_ok()
        }
    };
    if wait(done).await {
        return;
    }
    if let Some(id) = conn {
        tracing::info!("FUSE session still busy, aborting connection {id}");
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
        wait(done).await;
    }
}

/// What the IPC server is started with.
struct IpcSetup {
    config: pmxcfs_ipc::ServerConfig,
    memdb: Arc<MemDb>,
    ops: Arc<dyn pmxcfs_ipc::StatusOps>,
}

/// Everything `serve` runs and tears down.
struct Serve<'a> {
    session: fuser::Session<CfsFs>,
    unmounter: fuser::SessionUnmounter,
    mount: &'a Path,
    ready: Option<OwnedFd>,
    restart_flag: &'a Path,
    gid: Gid,
    ipc: IpcSetup,
    cluster: Option<Cluster>,
}

async fn serve(s: Serve<'_>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let Serve {
        session,
        mut unmounter,
        mount,
        ready,
        restart_flag,
        gid,
        ipc,
        cluster,
    } = s;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;

    let conn = fuse_connection_id(mount);
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let fuse = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            // runs FUSE_THREADS threads; unmounts and returns at the end
            let r = session.run();
            let _ = done_tx.send(true);
            r
        })
        .context("unable to start the FUSE thread")?;

    let server = match pmxcfs_ipc::Server::start(ipc.config, ipc.memdb, ipc.ops) {
        Ok(server) => server,
        Err(e) => {
            stop_fuse(&mut unmounter, mount, conn, &mut done_rx).await;
            return Err(anyhow::anyhow!("unable to start the IPC server: {e}"));
        }
    };
    let _ = std::fs::remove_file(restart_flag);
    if let Some(fd) = ready {
        let mut f = File::from(fd);
        let _ = f.write_all(b"1");
        drop(f);
        redirect_stdio_to_null();
    }
    tracing::info!("pmxcfs is serving");

    let mut ended = done_rx.clone();
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
        _ = hup.recv() => tracing::info!("received SIGHUP"),
        _ = ended.wait_for(|d| *d) => tracing::info!("filesystem was unmounted"),
    }

    create_restart_flag(restart_flag, gid);
    tracing::info!("teardown filesystem");
    server.stop().await;
    // before the unmount: requests waiting for their delivery get EACCES
    if let Some(c) = cluster {
        tokio::task::spawn_blocking(move || c.stop()).await.ok();
    }
    stop_fuse(&mut unmounter, mount, conn, &mut done_rx).await;
    // The thread ends right after it reported the end of the session.
    for _ in 0..50 {
        if fuse.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !fuse.is_finished() {
        // Still held open by a process inside the detached mount (and no
        // fusectl to abort it): leave the thread; process exit closes
        // /dev/fuse, which ends the connection.
        tracing::info!("FUSE session still busy; the connection ends with the process");
        return Ok(());
    }
    match fuse.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("FUSE session failed: {e}")),
        Err(_) => Err(anyhow::anyhow!("FUSE thread panicked")),
    }
}
