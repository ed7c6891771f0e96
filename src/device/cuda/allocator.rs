//! A caching allocator: freed blocks go back to a free list by size class and
//! are handed out again, so a training step in its steady state calls
//! neither cudaMalloc nor cudaFree. Classes: 4 per power of two (≤ 25 % slack),
//! at least 512 bytes.
//!
//! A CUDA graph replays the addresses it was captured with, so the memory its
//! work touches must not be handed to anyone else while the graph lives. As
//! in PyTorch, a graph gets a private [`GraphPool`]: while a thread has a pool
//! active, its allocations come from the pool (which takes unused blocks of
//! the general cache before it calls cudaMalloc) and go back to it when
//! dropped, and blocks of the general cache it drops are held by the pool
//! (the graph may still read them) until the pool is dropped.

use super::driver::Driver;
use crate::error::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// Counters of the allocator (see [`CachingAllocator::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Calls to the driver's malloc (cudaMalloc on a GPU).
    pub device_mallocs: u64,
    /// Calls to the driver's free.
    pub device_frees: u64,
    /// Allocations served from the cache.
    pub reuses: u64,
    /// Bytes held from the driver (in use + cached).
    pub bytes_reserved: usize,
    /// Bytes in live blocks.
    pub bytes_in_use: usize,
}

pub struct CachingAllocator {
    driver: Arc<dyn Driver>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: BTreeMap<usize, Vec<u64>>,
    stats: AllocStats,
    /// Threads drawing from a graph's private pool.
    active_pools: Vec<(ThreadId, Arc<GraphPool>)>,
}

/// A CUDA graph's private memory (see the module doc).
pub struct GraphPool {
    allocator: Arc<CachingAllocator>,
    blocks: Mutex<PoolBlocks>,
}

#[derive(Default)]
struct PoolBlocks {
    /// The pool's own blocks not in use, by size class.
    free: BTreeMap<usize, Vec<u64>>,
    /// Blocks of the general cache dropped while the pool was active.
    held: Vec<(usize, u64)>,
}

impl GraphPool {
    fn blocks(&self) -> std::sync::MutexGuard<'_, PoolBlocks> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for GraphPool {
    /// The graph is gone: every block the pool holds returns to the general cache.
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut *self.blocks());
        let mut state = self.allocator.lock();
        for (class_bytes, ptrs) in blocks.free {
            state.free.entry(class_bytes).or_default().extend(ptrs);
        }
        for (class_bytes, ptr) in blocks.held {
            state.free.entry(class_bytes).or_default().push(ptr);
        }
    }
}

/// A live device allocation; dropping it returns it to the cache (or to the
/// graph pool it came from).
pub struct DeviceBlock {
    ptr: u64,
    class_bytes: usize,
    allocator: Arc<CachingAllocator>,
    pool: Option<Arc<GraphPool>>,
}

impl DeviceBlock {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn capacity_bytes(&self) -> usize {
        self.class_bytes
    }
}

impl Drop for DeviceBlock {
    fn drop(&mut self) {
        let holder = {
            let mut state = self.allocator.lock();
            state.stats.bytes_in_use -= self.class_bytes;
            match &self.pool {
                Some(pool) => Some(pool.clone()),
                None => match state.active_pool() {
                    Some(pool) => Some(pool),
                    None => {
                        state.free.entry(self.class_bytes).or_default().push(self.ptr);
                        None
                    }
                },
            }
        };
        if let Some(pool) = holder {
            let mut blocks = pool.blocks();
            if self.pool.is_some() {
                blocks.free.entry(self.class_bytes).or_default().push(self.ptr);
            } else {
                blocks.held.push((self.class_bytes, self.ptr));
            }
        }
    }
}

impl State {
    /// The pool the calling thread draws from, if any.
    fn active_pool(&self) -> Option<Arc<GraphPool>> {
        let me = std::thread::current().id();
        self.active_pools.iter().find(|(t, _)| *t == me).map(|(_, p)| p.clone())
    }
}

/// The size class that holds `bytes`.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(512);
    let top = usize::BITS - 1 - bytes.leading_zeros(); // floor(log2)
    let step = 1usize << top.saturating_sub(2); // quarter of the octave
    bytes.div_ceil(step) * step
}

impl CachingAllocator {
    pub fn new(driver: Arc<dyn Driver>) -> Arc<CachingAllocator> {
        Arc::new(CachingAllocator { driver, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new, empty pool for a graph's memory.
    pub fn new_pool(self: &Arc<Self>) -> Arc<GraphPool> {
        Arc::new(GraphPool { allocator: self.clone(), blocks: Mutex::default() })
    }

    /// Make `pool` the calling thread's source of memory (None: the general
    /// cache again); returns the pool it replaces.
    pub fn set_active_pool(&self, pool: Option<Arc<GraphPool>>) -> Option<Arc<GraphPool>> {
        let mut state = self.lock();
        let me = std::thread::current().id();
        let previous = state.active_pools.iter().position(|(t, _)| *t == me).map(|i| state.active_pools.swap_remove(i).1);
        if let Some(p) = pool {
            state.active_pools.push((me, p));
        }
        previous
    }

    /// A block of at least `bytes` bytes (contents undefined).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBlock> {
        let class_bytes = if self.driver.exact_blocks() { bytes.max(16).next_multiple_of(16) } else { size_class(bytes) };
        let pool = {
            let mut state = self.lock();
            let pool = state.active_pool();
            // a pool draws on its own blocks, then on the general cache's
            // unused ones (they become the pool's until it is dropped)
            let own = pool.as_ref().and_then(|p| p.blocks().free.get_mut(&class_bytes).and_then(|v| v.pop()));
            let cached = own.or_else(|| state.free.get_mut(&class_bytes).and_then(|v| v.pop()));
            if let Some(ptr) = cached {
                state.stats.reuses += 1;
                state.stats.bytes_in_use += class_bytes;
                return Ok(DeviceBlock { ptr, class_bytes, allocator: self.clone(), pool });
            }
            pool
        };
        let ptr = match self.driver.malloc(class_bytes) {
            Ok(p) => p,
            Err(_) => {
                // out of memory: give the cache back and try once more
                self.empty_cache();
                self.driver.malloc(class_bytes)?
            }
        };
        let mut state = self.lock();
        state.stats.device_mallocs += 1;
        state.stats.bytes_reserved += class_bytes;
        state.stats.bytes_in_use += class_bytes;
        Ok(DeviceBlock { ptr, class_bytes, allocator: self.clone(), pool })
    }

    /// Return every cached (unused) block to the driver.
    pub fn empty_cache(&self) {
        let blocks: Vec<(usize, Vec<u64>)> = std::mem::take(&mut self.lock().free).into_iter().collect();
        let mut freed = 0;
        let mut count = 0;
        for (class_bytes, ptrs) in blocks {
            for p in ptrs {
                self.driver.free(p);
                freed += class_bytes;
                count += 1;
            }
        }
        let mut state = self.lock();
        state.stats.device_frees += count;
        state.stats.bytes_reserved -= freed;
    }

    pub fn stats(&self) -> AllocStats {
        self.lock().stats
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_have_bounded_slack() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 640);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1280);
        for bytes in [700usize, 5000, 123_457, 10_000_000] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c as f64) <= bytes as f64 * 1.25 + 1.0, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
    }
}
