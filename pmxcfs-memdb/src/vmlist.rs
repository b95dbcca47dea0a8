//! The VM list: which node owns which VMID, derived from the guest configs
//! in the tree (`vmlist_*` in status.c, `memdb_recreate_vmlist` in memdb.c).
//!
//! It lives beside the tree because the tree's write path needs it (a VMID
//! may exist on one node with one type only); `.vmlist` renders it.

use std::collections::HashMap;

use pmxcfs_api_types::VmType;

/// One registered guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    pub vmid: u32,
    pub node: String,
    pub vmtype: VmType,
    /// Taken from a global counter on every registration.
    pub version: u64,
}

/// The guest registry with its change counter.
#[derive(Debug, Default)]
pub struct VmList {
    /// Bumped on every register, delete and rebuild (`vmlist_version`).
    pub version: u64,
    entries: HashMap<u32, VmEntry>,
    counter: u64,
}

impl VmList {
    /// True if `vmid` is registered with another (node, type)
    /// (`vmlist_different_vm_exists`).
    pub fn different_vm_exists(&self, vmtype: VmType, vmid: u32, node: &str) -> bool {
        self.entries
            .get(&vmid)
            .is_some_and(|e| !(e.vmtype == vmtype && e.node == node))
    }

    /// Register (or re-register) a guest, bumping both counters.
    pub fn register(&mut self, vmtype: VmType, vmid: u32, node: &str) {
        self.version += 1;
        self.insert(vmtype, vmid, node);
    }

    fn insert(&mut self, vmtype: VmType, vmid: u32, node: &str) {
        self.counter += 1;
        self.entries.insert(
            vmid,
            VmEntry {
                vmid,
                node: node.to_string(),
                vmtype,
                version: self.counter,
            },
        );
    }

    pub fn delete(&mut self, vmid: u32) {
        self.version += 1;
        self.entries.remove(&vmid);
    }

    /// Replace the whole list from a scan of the tree. Returns the VMIDs
    /// that were found more than once (the first one seen is kept).
    pub fn rebuild(&mut self, found: impl IntoIterator<Item = (VmType, u32, String)>) -> Vec<u32> {
        self.version += 1;
        self.entries.clear();
        let mut duplicates = Vec::new();
        for (vmtype, vmid, node) in found {
            if self.entries.contains_key(&vmid) {
                duplicates.push(vmid);
            } else {
                self.insert(vmtype, vmid, &node);
            }
        }
        duplicates
    }

    pub fn get(&self, vmid: u32) -> Option<&VmEntry> {
        self.entries.get(&vmid)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries sorted by VMID.
    pub fn sorted(&self) -> Vec<VmEntry> {
        let mut v: Vec<VmEntry> = self.entries.values().cloned().collect();
        v.sort_by_key(|e| e.vmid);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_and_conflicts() {
        let mut l = VmList::default();
        l.register(VmType::Qemu, 100, "a");
        assert_eq!(l.version, 1);
        assert!(!l.different_vm_exists(VmType::Qemu, 100, "a"));
        assert!(l.different_vm_exists(VmType::Lxc, 100, "a"));
        assert!(l.different_vm_exists(VmType::Qemu, 100, "b"));
        l.register(VmType::Qemu, 100, "a");
        assert_eq!(l.get(100).map(|e| e.version), Some(2));
        l.delete(100);
        assert!(l.is_empty());
        assert_eq!(l.version, 3);
        let dups = l.rebuild([
            (VmType::Qemu, 1, "a".to_string()),
            (VmType::Lxc, 1, "b".to_string()),
        ]);
        assert_eq!(dups, vec![1]);
        assert_eq!(l.get(1).map(|e| e.node.as_str()), Some("a"));
    }
}
