//! Routing of corosync callbacks to their service.
//!
//! rust-corosync calls our callbacks as plain `fn` pointers (no captures),
//! from inside `*_dispatch`, holding its own global handle lock. A callback
//! therefore finds its target through the context value of the handle (a
//! `u64` we chose with `context_set`, or the track user data of cmap) in a
//! registry, does nothing but push into a channel or flip a flag, and never
//! calls back into rust-corosync functions that take that lock
//! (`initialize`, `finalize`, `track_add`, `track_delete`).
//!
//! Lock order: the registry lock is only ever taken for a map operation,
//! never while calling into corosync, so a callback (corosync lock, then
//! registry lock) cannot deadlock with a service thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_CONTEXT: AtomicU64 = AtomicU64::new(1);

/// A context value never handed out before in this process (one per
/// connection, so a stray callback of an old connection finds nothing).
pub(crate) fn new_context() -> u64 {
    NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed)
}

/// Targets of callbacks by context value.
pub(crate) struct Registry<T> {
    map: Mutex<BTreeMap<u64, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Self {
        Registry {
            map: Mutex::new(BTreeMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, Arc<T>>) -> R) -> R {
        // a poisoned lock only means another thread panicked while holding
        // it for a map operation: the map is still consistent
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map)
    }

    pub(crate) fn insert(&self, context: u64, target: Arc<T>) {
        self.with(|m| m.insert(context, target));
    }

    pub(crate) fn remove(&self, context: u64) {
        self.with(|m| m.remove(&context));
    }

    pub(crate) fn get(&self, context: u64) -> Option<Arc<T>> {
        self.with(|m| m.get(&context).cloned())
    }
}

/// Removes a registry entry when dropped (every exit path of a connection).
pub(crate) struct Registration<T: 'static> {
    registry: &'static Registry<T>,
    context: u64,
}

impl<T> Registration<T> {
    /// Registers `target` under a new context value.
    #[cfg(test)]
    pub(crate) fn new(registry: &'static Registry<T>, target: Arc<T>) -> Self {
        Self::with_context(registry, new_context(), target)
    }

    /// Registers `target` under `context` (from [`new_context`]).
    pub(crate) fn with_context(
        registry: &'static Registry<T>,
        context: u64,
        target: Arc<T>,
    ) -> Self {
        registry.insert(context, target);
        Registration { registry, context }
    }

    #[cfg(test)]
    pub(crate) fn context(&self) -> u64 {
        self.context
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        self.registry.remove(self.context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REG: Registry<u32> = Registry::new();

    #[test]
    fn registration_lives_as_long_as_its_guard() {
        let r = Registration::new(&REG, Arc::new(7));
        let ctx = r.context();
        assert_eq!(REG.get(ctx).as_deref(), Some(&7));
        let r2 = Registration::new(&REG, Arc::new(8));
        assert_ne!(r2.context(), ctx);
        drop(r);
        assert!(REG.get(ctx).is_none());
        assert_eq!(REG.get(r2.context()).as_deref(), Some(&8));
    }
}
