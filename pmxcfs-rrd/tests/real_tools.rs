//! RrdWriter against the real tools: a private rrdcached (Debian's
//! `rrdcached`), librrd, and `rrdtool info` / `rrdtool fetch` to read the
//! files back. These tests fail (never skip) when a tool is missing.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{fetch, info, local_midnight_by_date, now, Rrdcached};
use pmxcfs_rrd::{parse_update, RrdUpdate, RrdWriter, UpdateVia};

/// status.c `rrd_def_node_pve9_0`, DS part: (name, type).
const NODE_DS: [(&str, &str); 19] = [
    ("loadavg", "GAUGE"),
    ("maxcpu", "GAUGE"),
    ("cpu", "GAUGE"),
    ("iowait", "GAUGE"),
    ("memtotal", "GAUGE"),
    ("memused", "GAUGE"),
    ("swaptotal", "GAUGE"),
    ("swapused", "GAUGE"),
    ("roottotal", "GAUGE"),
    ("rootused", "GAUGE"),
    ("netin", "DERIVE"),
    ("netout", "DERIVE"),
    ("memavailable", "GAUGE"),
    ("arcsize", "GAUGE"),
    ("pressurecpusome", "GAUGE"),
    ("pressureiosome", "GAUGE"),
    ("pressureiofull", "GAUGE"),
    ("pressurememorysome", "GAUGE"),
    ("pressurememoryfull", "GAUGE"),
];

/// status.c `rrd_def_vm_pve9_0`, DS part.
const VM_DS: [(&str, &str); 17] = [
    ("maxcpu", "GAUGE"),
    ("cpu", "GAUGE"),
    ("maxmem", "GAUGE"),
    ("mem", "GAUGE"),
    ("maxdisk", "GAUGE"),
    ("disk", "GAUGE"),
    ("netin", "DERIVE"),
    ("netout", "DERIVE"),
    ("diskread", "DERIVE"),
    ("diskwrite", "DERIVE"),
    ("memhost", "GAUGE"),
    ("pressurecpusome", "GAUGE"),
    ("pressurecpufull", "GAUGE"),
    ("pressureiosome", "GAUGE"),
    ("pressureiofull", "GAUGE"),
    ("pressurememorysome", "GAUGE"),
    ("pressurememoryfull", "GAUGE"),
];

/// status.c `rrd_def_storage_pve9_0`, DS part.
const STORAGE_DS: [(&str, &str); 2] = [("total", "GAUGE"), ("used", "GAUGE")];

/// The RRAs of all three layouts: (cf, pdp_per_row, rows).
const RRAS: [(&str, u32, u32); 8] = [
    ("AVERAGE", 1, 1440),
    ("AVERAGE", 30, 1440),
    ("AVERAGE", 360, 1440),
    ("AVERAGE", 10080, 570),
    ("MAX", 1, 1440),
    ("MAX", 30, 1440),
    ("MAX", 360, 1440),
    ("MAX", 10080, 570),
];

const NAN: f64 = f64::NAN;

/// One series of updates: a key, its status data at step `k` (time
/// `t0 + 60 k`), its file, its layout, and the values `rrdtool fetch` must
/// show for the row ending at step `k >= 1`.
struct Series {
    key: &'static str,
    file: &'static str,
    ds: &'static [(&'static str, &'static str)],
    data: fn(u64, u64) -> String,
    expect: fn(u64) -> Vec<f64>,
}

const SERIES: [Series; 5] = [
    // old node format: 12 columns, 7 padded with U
    Series {
        key: "pve2-node/testnode",
        file: "pve-node-9.0/testnode",
        ds: &NODE_DS,
        data: |t, k| {
            format!(
                "86400:0:{t}:{}:4:0.25:0.125:8000:{}:1000:0:50000:25000:{}:{}",
                0.5 + k as f64,
                4000 + k,
                1000 + 6000 * k,
                600 * k
            )
        },
        expect: |k| {
            let mut v = vec![
                0.5 + k as f64,
                4.0,
                0.25,
                0.125,
                8000.0,
                (4000 + k) as f64,
                1000.0,
                0.0,
                50000.0,
                25000.0,
                100.0, // (6000 bytes / 60 s)
                10.0,
            ];
            v.extend([NAN; 7]);
            v
        },
    },
    // current guest format: 4 live columns skipped, 17 kept
    Series {
        key: "pve-vm-9.0/100",
        file: "pve-vm-9.0/100",
        ds: &VM_DS,
        data: |t, k| {
            format!(
                "3600:vm100:running:0:{t}:2:0.5:2048:{}:10000:5000:{}:{}:{}:0:900:0.1:0.2:0.3:0.4:0.5:0.6",
                1024 + k,
                120 * k,
                60 * k,
                600 * k
            )
        },
        expect: |k| {
            vec![
                2.0,
                0.5,
                2048.0,
                (1024 + k) as f64,
                10000.0,
                5000.0,
                2.0,
                1.0,
                10.0,
                0.0,
                900.0,
                0.1,
                0.2,
                0.3,
                0.4,
                0.5,
                0.6,
            ]
        },
    },
    // old guest format: 10 columns, 7 padded
    Series {
        key: "pve2.3-vm/101",
        file: "pve-vm-9.0/101",
        ds: &VM_DS,
        data: |t, k| format!("60:ct101:running:0:{t}:1:0.75:512:256:8:4:{}:0:0:0", 60 * k),
        expect: |_| {
            let mut v = vec![1.0, 0.75, 512.0, 256.0, 8.0, 4.0, 1.0, 0.0, 0.0, 0.0];
            v.extend([NAN; 7]);
            v
        },
    },
    Series {
        key: "pve2-storage/testnode/local",
        file: "pve-storage-9.0/testnode/local",
        ds: &STORAGE_DS,
        data: |t, k| format!("{t}:1000:{}", 400 + k),
        expect: |k| vec![1000.0, (400 + k) as f64],
    },
    // a newer storage format with two more columns: cut
    Series {
        key: "pve-storage-9.5/testnode/big-store",
        file: "pve-storage-9.0/testnode/big-store",
        ds: &STORAGE_DS,
        data: |t, _| format!("{t}:2000:300:999:888"),
        expect: |_| vec![2000.0, 300.0],
    },
];

fn update_for(s: &Series, t0: u64, k: u64) -> RrdUpdate {
    let data = format!("{}\0", (s.data)(t0 + 60 * k, k));
    parse_update(s.key, data.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", s.key))
}

/// A timestamp aligned to the step, in the future (so after the files'
/// start at today's midnight).
fn start_time() -> u64 {
    (now() / 60 + 5) * 60
}

fn check_layout(path: &Path, ds: &[(&str, &str)]) {
    let info = info(path);
    let get = |k: &str| {
        info.get(k)
            .unwrap_or_else(|| panic!("{}: no {k} in rrdtool info", path.display()))
            .as_str()
    };
    assert_eq!(get("step"), "60");
    let ds_count = info
        .keys()
        .filter(|k| k.starts_with("ds[") && k.ends_with("].index"))
        .count();
    assert_eq!(ds_count, ds.len(), "{}", path.display());
    for (i, (name, ty)) in ds.iter().enumerate() {
        assert_eq!(get(&format!("ds[{name}].index")), i.to_string());
        assert_eq!(get(&format!("ds[{name}].type")), format!("\"{ty}\""));
        assert_eq!(get(&format!("ds[{name}].minimal_heartbeat")), "120");
        assert_eq!(get(&format!("ds[{name}].min")), "0.0000000000e+00");
        assert_eq!(get(&format!("ds[{name}].max")), "NaN");
    }
    for (i, (cf, pdp, rows)) in RRAS.iter().enumerate() {
        assert_eq!(get(&format!("rra[{i}].cf")), format!("\"{cf}\""));
        assert_eq!(get(&format!("rra[{i}].pdp_per_row")), pdp.to_string());
        assert_eq!(get(&format!("rra[{i}].rows")), rows.to_string());
        assert_eq!(get(&format!("rra[{i}].xff")), "5.0000000000e-01");
    }
    assert!(!info.contains_key(&format!("rra[{}].cf", RRAS.len())));
}

fn last_update(path: &Path) -> u64 {
    info(path)["last_update"].parse().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// The AVERAGE and MAX rows ending at step `k` hold the expected values.
fn check_row(db: &Path, s: &Series, t0: u64, k: u64) {
    let path = db.join(s.file);
    let t = t0 + 60 * k;
    for cf in ["AVERAGE", "MAX"] {
        let (names, rows) = fetch(&path, cf, t - 60, t);
        let expected_names: Vec<&str> = s.ds.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, expected_names, "{}", s.file);
        let row = rows
            .get(&t)
            .unwrap_or_else(|| panic!("{} {cf}: no row at {t}: {rows:?}", s.file));
        let expected = (s.expect)(k);
        assert_eq!(row.len(), expected.len());
        for ((got, want), name) in row.iter().zip(&expected).zip(&names) {
            assert!(
                close(*got, *want),
                "{} {cf} {name} at step {k}: got {got}, want {want}",
                s.file
            );
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn db_dir(tmp: &Path) -> std::path::PathBuf {
    let db = tmp.join("db");
    std::fs::create_dir(&db).unwrap();
    db
}

#[test]
fn updates_through_rrdcached_then_directly_once_it_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_dir(tmp.path());
    let mut daemon = Rrdcached::start(tmp.path(), &db);
    let writer = RrdWriter::new(&db, Some(daemon.socket.clone()));
    let t0 = start_time();

    for k in 0..3 {
        for s in &SERIES {
            let via = writer.update(&update_for(s, t0, k)).unwrap();
            assert_eq!(via, UpdateVia::Rrdcached, "{} step {k}", s.key);
        }
    }

    // the files were created by us, the values are still in rrdcached
    let midnight = local_midnight_by_date();
    for s in &SERIES {
        let path = db.join(s.file);
        check_layout(&path, s.ds);
        assert_eq!(
            last_update(&path),
            midnight,
            "{}: start of the file",
            s.file
        );
    }
    for kind_dir in [
        "pve-node-9.0",
        "pve-vm-9.0",
        "pve-storage-9.0",
        "pve-storage-9.0/testnode",
    ] {
        let m = mode(&db.join(kind_dir));
        assert_eq!(m & !0o750, 0, "{kind_dir}: mode {m:o}");
    }

    // FLUSH writes them out
    for s in &SERIES {
        writer.flush(&update_for(s, t0, 0)).unwrap();
        assert_eq!(last_update(&db.join(s.file)), t0 + 120, "{}", s.file);
        check_row(&db, s, t0, 1);
        check_row(&db, s, t0, 2);
    }

    // rrdcached gone (killed): the same writer falls back to librrd
    daemon.stop();
    for s in &SERIES {
        let via = writer.update(&update_for(s, t0, 3)).unwrap();
        assert_eq!(via, UpdateVia::Direct, "{}", s.key);
        assert_eq!(last_update(&db.join(s.file)), t0 + 180, "{}", s.file);
        check_row(&db, s, t0, 3);
    }
}

#[test]
fn updates_directly_when_rrdcached_is_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_dir(tmp.path());
    let writer = RrdWriter::new(&db, Some(tmp.path().join("rrdcached.sock")));
    let t0 = start_time();
    for k in 0..3 {
        for s in &SERIES {
            let via = writer.update(&update_for(s, t0, k)).unwrap();
            assert_eq!(via, UpdateVia::Direct, "{} step {k}", s.key);
        }
    }
    for s in &SERIES {
        check_layout(&db.join(s.file), s.ds);
        assert_eq!(last_update(&db.join(s.file)), t0 + 120);
        check_row(&db, s, t0, 1);
        check_row(&db, s, t0, 2);
    }
    // librrd refuses an old timestamp; the error says why
    let e = writer.update(&update_for(&SERIES[3], t0, 1)).unwrap_err();
    assert!(e.to_string().contains("illegal attempt to update"), "{e}");
}

#[test]
fn refused_by_rrdcached_falls_back_to_librrd() {
    // rrdcached restricted (-B) to another base directory answers
    // "-1 ...: Permission denied" for our files
    let tmp = tempfile::tempdir().unwrap();
    let db = db_dir(tmp.path());
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let daemon = Rrdcached::start(tmp.path(), &other);
    let writer = RrdWriter::new(&db, Some(daemon.socket.clone()));
    let t0 = start_time();
    let s = &SERIES[3];
    for k in 0..2 {
        assert_eq!(
            writer.update(&update_for(s, t0, k)).unwrap(),
            UpdateVia::Direct
        );
    }
    check_row(&db, s, t0, 1);
    drop(daemon);
}

#[test]
fn reconnects_after_an_rrdcached_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_dir(tmp.path());
    let mut daemon = Rrdcached::start(tmp.path(), &db);
    let writer = RrdWriter::new(&db, Some(daemon.socket.clone()));
    let t0 = start_time();
    let s = &SERIES[0];
    assert_eq!(
        writer.update(&update_for(s, t0, 0)).unwrap(),
        UpdateVia::Rrdcached
    );
    daemon.stop();
    let _ = std::fs::remove_file(&daemon.socket);
    // the kept connection is dead; the next update reconnects to the new one
    let daemon = Rrdcached::start(tmp.path(), &db);
    for k in 1..3 {
        assert_eq!(
            writer.update(&update_for(s, t0, k)).unwrap(),
            UpdateVia::Rrdcached
        );
    }
    writer.flush(&update_for(s, t0, 1)).unwrap();
    assert_eq!(last_update(&db.join(s.file)), t0 + 120);
    check_row(&db, s, t0, 2);
    drop(daemon);
}

#[test]
fn invalid_updates_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_dir(tmp.path());
    let daemon = Rrdcached::start(tmp.path(), &db);
    let writer = RrdWriter::new(&db, Some(daemon.socket.clone()));
    // refused by the parser: nothing reaches the writer, no file appears
    let bad: HashMap<&str, &[u8]> = HashMap::from([
        ("pve2-node/n1", &b"1:0:1700000000:1:2\0"[..]),
        ("pve2-storage/n1/s", b"1700000000:1:2\nFLUSHALL\0"),
        ("pve2-storage//s", b"1700000000:1:2\0"),
        ("pve2-node/..", b"1:0:1700000000:1:1:1:1:1:1:1:1:1:1:1:1\0"),
    ]);
    for (key, data) in bad {
        assert!(parse_update(key, data).is_err(), "{key}");
    }
    assert_eq!(std::fs::read_dir(&db).unwrap().count(), 0);
    drop(writer);
    drop(daemon);
}
