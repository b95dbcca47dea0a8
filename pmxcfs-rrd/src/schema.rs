//! The three RRD file layouts of pmxcfs 9.x: data sources, archives, step.
//!
//! These are facts taken from status.c (`rrd_def_node_pve9_0`,
//! `rrd_def_vm_pve9_0`, `rrd_def_storage_pve9_0` and the `*_columns`
//! constants); the files must be byte-compatible with the ones the C daemon
//! creates, because pvestatd, the API and the C daemon on other nodes read
//! and write the same files.

use std::fmt;

/// Step of every file, in seconds (`rrd_create_r(filename, 60, ...)`).
pub const STEP: u64 = 60;

/// Heartbeat of every data source, in seconds.
pub const HEARTBEAT: u32 = 120;

/// What an RRD file describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RrdKind {
    /// A node: `pve-node-9.0/<node>`.
    Node,
    /// A guest (VM or container): `pve-vm-9.0/<vmid>`.
    Vm,
    /// A storage of a node: `pve-storage-9.0/<node>/<storage>`.
    Storage,
}

/// Type of a data source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsType {
    /// Stored as given (any number, `U`, `nan`, `inf`).
    Gauge,
    /// A counter turned into a rate; librrd accepts only `-?[0-9]+` or `U`.
    Derive,
}

impl DsType {
    pub fn as_str(self) -> &'static str {
        match self {
            DsType::Gauge => "GAUGE",
            DsType::Derive => "DERIVE",
        }
    }
}

/// One data source: `DS:<name>:<type>:120:0:U`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSource {
    pub name: &'static str,
    pub ds_type: DsType,
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // min 0, max unknown, for every DS of every layout
        write!(
            f,
            "DS:{}:{}:{}:0:U",
            self.name,
            self.ds_type.as_str(),
            HEARTBEAT
        )
    }
}

/// Consolidation function of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Average,
    Max,
}

/// One archive: `RRA:<cf>:0.5:<steps>:<rows>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rra {
    pub cf: Cf,
    /// Primary data points per row (of [`STEP`] seconds each).
    pub steps: u32,
    pub rows: u32,
}

impl fmt::Display for Rra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cf = match self.cf {
            Cf::Average => "AVERAGE",
            Cf::Max => "MAX",
        };
        write!(f, "RRA:{cf}:0.5:{}:{}", self.steps, self.rows)
    }
}

const fn gauge(name: &'static str) -> DataSource {
    DataSource {
        name,
        ds_type: DsType::Gauge,
    }
}

const fn derive(name: &'static str) -> DataSource {
    DataSource {
        name,
        ds_type: DsType::Derive,
    }
}

const fn rra(cf: Cf, steps: u32, rows: u32) -> Rra {
    Rra { cf, steps, rows }
}

/// status.c `rrd_def_node_pve9_0` (DS part).
const NODE_DS: [DataSource; 19] = [
    gauge("loadavg"),
    gauge("maxcpu"),
    gauge("cpu"),
    gauge("iowait"),
    gauge("memtotal"),
    gauge("memused"),
    gauge("swaptotal"),
    gauge("swapused"),
    gauge("roottotal"),
    gauge("rootused"),
    derive("netin"),
    derive("netout"),
    gauge("memavailable"),
    gauge("arcsize"),
    gauge("pressurecpusome"),
    gauge("pressureiosome"),
    gauge("pressureiofull"),
    gauge("pressurememorysome"),
    gauge("pressurememoryfull"),
];

/// status.c `rrd_def_vm_pve9_0` (DS part).
const VM_DS: [DataSource; 17] = [
    gauge("maxcpu"),
    gauge("cpu"),
    gauge("maxmem"),
    gauge("mem"),
    gauge("maxdisk"),
    gauge("disk"),
    derive("netin"),
    derive("netout"),
    derive("diskread"),
    derive("diskwrite"),
    gauge("memhost"),
    gauge("pressurecpusome"),
    gauge("pressurecpufull"),
    gauge("pressureiosome"),
    gauge("pressureiofull"),
    gauge("pressurememorysome"),
    gauge("pressurememoryfull"),
];

/// status.c `rrd_def_storage_pve9_0` (DS part).
const STORAGE_DS: [DataSource; 2] = [gauge("total"), gauge("used")];

/// The archives, the same for all three layouts: 1 min x 1440 (1 day),
/// 30 min x 1440 (30 days), 6 h x 1440 (~1 year), 1 week x 570 (~10 years),
/// as AVERAGE then as MAX.
pub const RRAS: [Rra; 8] = [
    rra(Cf::Average, 1, 1440),
    rra(Cf::Average, 30, 1440),
    rra(Cf::Average, 360, 1440),
    rra(Cf::Average, 10080, 570),
    rra(Cf::Max, 1, 1440),
    rra(Cf::Max, 30, 1440),
    rra(Cf::Max, 360, 1440),
    rra(Cf::Max, 10080, 570),
];

impl RrdKind {
    /// Directory of the current layout, relative to the RRD directory.
    pub fn dir(self) -> &'static str {
        match self {
            RrdKind::Node => "pve-node-9.0",
            RrdKind::Vm => "pve-vm-9.0",
            RrdKind::Storage => "pve-storage-9.0",
        }
    }

    /// The data sources, in column order.
    pub fn data_sources(self) -> &'static [DataSource] {
        match self {
            RrdKind::Node => &NODE_DS,
            RrdKind::Vm => &VM_DS,
            RrdKind::Storage => &STORAGE_DS,
        }
    }

    /// Number of data columns after the timestamp (`rrd_def_*_pve9_0_columns`).
    pub fn columns(self) -> usize {
        self.data_sources().len()
    }

    /// Number of data columns of the pre-9.0 key format (`pve2-node`: 12,
    /// `pve2.3-vm`: 10, `pve2-storage`: 2, as `rrd_def_*_columns_pve2`).
    pub fn legacy_columns(self) -> usize {
        match self {
            RrdKind::Node => 12,
            RrdKind::Vm => 10,
            RrdKind::Storage => 2,
        }
    }

    /// Leading fields of the value that are live data, not archived (node:
    /// uptime, sublevel; guest: uptime, name, status, template).
    pub fn skipped_fields(self) -> usize {
        match self {
            RrdKind::Node => 2,
            RrdKind::Vm => 4,
            RrdKind::Storage => 0,
        }
    }

    /// The `DS:...` and `RRA:...` arguments of `rrd_create_r`, in the order
    /// of status.c.
    pub fn create_args(self) -> Vec<String> {
        self.data_sources()
            .iter()
            .map(ToString::to_string)
            .chain(RRAS.iter().map(ToString::to_string))
            .collect()
    }
}

impl fmt::Display for RrdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RrdKind::Node => "node",
            RrdKind::Vm => "vm",
            RrdKind::Storage => "storage",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RRA_LINES: [&str; 8] = [
        "RRA:AVERAGE:0.5:1:1440",
        "RRA:AVERAGE:0.5:30:1440",
        "RRA:AVERAGE:0.5:360:1440",
        "RRA:AVERAGE:0.5:10080:570",
        "RRA:MAX:0.5:1:1440",
        "RRA:MAX:0.5:30:1440",
        "RRA:MAX:0.5:360:1440",
        "RRA:MAX:0.5:10080:570",
    ];

    fn expected(ds: &[&str]) -> Vec<String> {
        ds.iter()
            .chain(RRA_LINES.iter())
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn node_definition_matches_status_c() {
        let ds = [
            "DS:loadavg:GAUGE:120:0:U",
            "DS:maxcpu:GAUGE:120:0:U",
            "DS:cpu:GAUGE:120:0:U",
            "DS:iowait:GAUGE:120:0:U",
            "DS:memtotal:GAUGE:120:0:U",
            "DS:memused:GAUGE:120:0:U",
            "DS:swaptotal:GAUGE:120:0:U",
            "DS:swapused:GAUGE:120:0:U",
            "DS:roottotal:GAUGE:120:0:U",
            "DS:rootused:GAUGE:120:0:U",
            "DS:netin:DERIVE:120:0:U",
            "DS:netout:DERIVE:120:0:U",
            "DS:memavailable:GAUGE:120:0:U",
            "DS:arcsize:GAUGE:120:0:U",
            "DS:pressurecpusome:GAUGE:120:0:U",
            "DS:pressureiosome:GAUGE:120:0:U",
            "DS:pressureiofull:GAUGE:120:0:U",
            "DS:pressurememorysome:GAUGE:120:0:U",
            "DS:pressurememoryfull:GAUGE:120:0:U",
        ];
        assert_eq!(RrdKind::Node.create_args(), expected(&ds));
        assert_eq!(RrdKind::Node.columns(), 19);
        assert_eq!(RrdKind::Node.legacy_columns(), 12);
        assert_eq!(RrdKind::Node.skipped_fields(), 2);
    }

    #[test]
    fn vm_definition_matches_status_c() {
        let ds = [
            "DS:maxcpu:GAUGE:120:0:U",
            "DS:cpu:GAUGE:120:0:U",
            "DS:maxmem:GAUGE:120:0:U",
            "DS:mem:GAUGE:120:0:U",
            "DS:maxdisk:GAUGE:120:0:U",
            "DS:disk:GAUGE:120:0:U",
            "DS:netin:DERIVE:120:0:U",
            "DS:netout:DERIVE:120:0:U",
            "DS:diskread:DERIVE:120:0:U",
            "DS:diskwrite:DERIVE:120:0:U",
            "DS:memhost:GAUGE:120:0:U",
            "DS:pressurecpusome:GAUGE:120:0:U",
            "DS:pressurecpufull:GAUGE:120:0:U",
            "DS:pressureiosome:GAUGE:120:0:U",
            "DS:pressureiofull:GAUGE:120:0:U",
            "DS:pressurememorysome:GAUGE:120:0:U",
            "DS:pressurememoryfull:GAUGE:120:0:U",
        ];
        assert_eq!(RrdKind::Vm.create_args(), expected(&ds));
        assert_eq!(RrdKind::Vm.columns(), 17);
        assert_eq!(RrdKind::Vm.legacy_columns(), 10);
        assert_eq!(RrdKind::Vm.skipped_fields(), 4);
    }

    #[test]
    fn storage_definition_matches_status_c() {
        let ds = ["DS:total:GAUGE:120:0:U", "DS:used:GAUGE:120:0:U"];
        assert_eq!(RrdKind::Storage.create_args(), expected(&ds));
        assert_eq!(RrdKind::Storage.columns(), 2);
        assert_eq!(RrdKind::Storage.skipped_fields(), 0);
    }

    #[test]
    fn ds_names_fit_librrd() {
        // librrd: DS names are 1 to 19 characters [a-zA-Z0-9_]
        for kind in [RrdKind::Node, RrdKind::Vm, RrdKind::Storage] {
            for ds in kind.data_sources() {
                assert!((1..=19).contains(&ds.name.len()), "{}", ds.name);
                assert!(ds.name.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }
    }
}
