//! Page-locked (pinned) host blocks for the GPU's small copies.
//!
//! A copy from pageable memory may synchronise with the stream (the driver
//! stages it), so every upload used to wait for all queued work: a training
//! step's batch indices and ᾱ values drained the GPU before its forward pass
//! was even enqueued. A copy from pinned memory is queued like a kernel. Each
//! block keeps an event recorded after the last copy that used it and is
//! handed out again only once that event has completed, so a block is never
//! overwritten while the GPU may still read it (or write a read-back into it).
//! The choice of block is [`pick`], plain logic tested on its own.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, result as cu};
use std::sync::{Arc, Mutex};

/// Copies up to this size go through a pinned block (a classifier batch,
/// 1024 images of 28×28, is 3.2 MB); larger ones (the dataset, the weights:
/// once per run) are staged by the driver.
pub const PINNED_MAX_BYTES: usize = 16 << 20;

/// At most this many blocks: past it a busy block is waited for and reused.
const MAX_BLOCKS: usize = 64;

/// The size a block for `need` bytes is allocated with (a power of two, ≥ 4 KiB).
pub fn size_class(need: usize) -> usize {
    need.next_power_of_two().max(4096)
}

/// A block as [`pick`] sees it: its size and whether a copy may still use it.
#[derive(Clone, Copy, Debug)]
pub struct BlockState {
    pub bytes: usize,
    pub busy: bool,
}

/// What to do for a copy of `need` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Take the idle block at this index.
    Reuse(usize),
    /// Allocate a new block of this size.
    Allocate(usize),
    /// Wait for the block at this index, then take it.
    WaitFor(usize),
    /// Wait for the block at this index if busy, free it and allocate this size.
    Replace(usize, usize),
}

/// The block for a copy of `need` bytes among `blocks` (oldest first): the
/// smallest idle one that fits; else a new one while there are fewer than
/// `max_blocks`; else the oldest busy one that fits; else the oldest is replaced.
pub fn pick(blocks: &[BlockState], need: usize, max_blocks: usize) -> Pick {
    let fits = |b: &&BlockState| b.bytes >= need;
    let idle = blocks.iter().enumerate().filter(|(_, b)| !b.busy && fits(b)).min_by_key(|(_, b)| b.bytes);
    if let Some((i, _)) = idle {
        return Pick::Reuse(i);
    }
    if blocks.len() < max_blocks || blocks.is_empty() {
        return Pick::Allocate(size_class(need));
    }
    match blocks.iter().position(|b| fits(&b)) {
        Some(i) => Pick::WaitFor(i),
        None => Pick::Replace(0, size_class(need)),
    }
}

/// One pinned host block and the event after the last copy that used it.
pub struct PinnedBlock {
    ptr: *mut u8,
    bytes: usize,
    done: CudaEvent,
}

// SAFETY: the block is owned by one holder at a time (the pool or a copy);
// the pointer is page-locked host memory valid until the pool frees it.
unsafe impl Send for PinnedBlock {}

impl PinnedBlock {
    /// The first `len` bytes (len ≤ the block's size).
    pub fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.bytes, "pinned block of {} bytes, {len} asked", self.bytes);
        // SAFETY: ptr holds `bytes` bytes and no copy using it is in flight (the pool waited).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    /// Mark the block busy until the stream has passed this point.
    pub fn record(&self, stream: &CudaStream) -> Result<()> {
        self.done.record(stream).map_err(|e| Error::Cuda(format!("recording an event: {e:?}")))
    }

    /// Wait until the copies recorded on the block are done.
    pub fn wait(&self) -> Result<()> {
        self.done.synchronize().map_err(|e| Error::Cuda(format!("waiting for a copy: {e:?}")))
    }
}

/// The GPU driver's pinned blocks; see the module documentation.
pub struct PinnedPool {
    ctx: Arc<CudaContext>,
    blocks: Mutex<Vec<PinnedBlock>>,
}

impl PinnedPool {
    pub fn new(ctx: Arc<CudaContext>) -> PinnedPool {
        PinnedPool { ctx, blocks: Mutex::new(Vec::new()) }
    }

    fn allocate(&self, bytes: usize) -> Result<PinnedBlock> {
        let err = |what: &str, e: cudarc::driver::DriverError| Error::Cuda(format!("{what}: {e:?}"));
        self.ctx.bind_to_thread().map_err(|e| err("binding the CUDA context", e))?;
        // SAFETY: a plain page-locked allocation on the bound context, freed in `free`.
        let ptr = unsafe { cu::malloc_host(bytes, 0) }.map_err(|e| err(&format!("allocating {bytes} bytes of pinned host memory"), e))?;
        let done = self.ctx.new_event(None).map_err(|e| err("creating an event", e))?;
        Ok(PinnedBlock { ptr: ptr as *mut u8, bytes, done })
    }

    fn free(&self, block: PinnedBlock) {
        if block.wait().is_ok() && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: ptr came from malloc_host and no copy uses it any more.
            let _ = unsafe { cu::free_host(block.ptr as *mut std::ffi::c_void) };
        }
    }

    /// A block of at least `need` bytes that no queued copy uses.
    pub fn take(&self, need: usize) -> Result<PinnedBlock> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let states = blocks
            .iter()
            .map(|b| {
                let complete = b.done.try_is_complete().map_err(|e| Error::Cuda(format!("querying an event: {e:?}")))?;
                Ok(BlockState { bytes: b.bytes, busy: !complete })
            })
            .collect::<Result<Vec<_>>>()?;
        match pick(&states, need, MAX_BLOCKS) {
            Pick::Reuse(i) => Ok(blocks.remove(i)),
            Pick::Allocate(bytes) => {
                drop(blocks);
                self.allocate(bytes)
            }
            Pick::WaitFor(i) => {
                let block = blocks.remove(i);
                drop(blocks);
                block.wait()?;
                Ok(block)
            }
            Pick::Replace(i, bytes) => {
                let old = blocks.remove(i);
                drop(blocks);
                self.free(old);
                self.allocate(bytes)
            }
        }
    }

    /// Return a block (busy until its recorded event completes).
    pub fn give_back(&self, block: PinnedBlock) {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).push(block);
    }
}

impl Drop for PinnedPool {
    fn drop(&mut self) {
        for block in std::mem::take(&mut *self.blocks.lock().unwrap_or_else(|e| e.into_inner())) {
            self.free(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bytes: usize, busy: bool) -> BlockState {
        BlockState { bytes, busy }
    }

    #[test]
    fn reuses_the_smallest_idle_block_that_fits() {
        let blocks = [state(8192, false), state(4096, true), state(4096, false), state(65536, false)];
        assert_eq!(pick(&blocks, 3000, 64), Pick::Reuse(2));
        assert_eq!(pick(&blocks, 5000, 64), Pick::Reuse(0));
        assert_eq!(pick(&blocks, 60000, 64), Pick::Reuse(3));
    }

    #[test]
    fn never_hands_out_a_busy_block_without_waiting() {
        let blocks = [state(4096, true), state(8192, true)];
        assert_eq!(pick(&blocks, 100, 64), Pick::Allocate(4096));
        // at the cap: the oldest busy block that fits is waited for
        assert_eq!(pick(&blocks, 100, 2), Pick::WaitFor(0));
        assert_eq!(pick(&blocks, 5000, 2), Pick::WaitFor(1));
    }

    #[test]
    fn at_the_cap_without_a_fitting_block_the_oldest_is_replaced() {
        let blocks = [state(4096, false), state(8192, true)];
        assert_eq!(pick(&blocks, 10_000, 2), Pick::Replace(0, 16384));
        assert_eq!(pick(&[], 1, 0), Pick::Allocate(4096));
    }

    #[test]
    fn sizes_are_powers_of_two_from_4_kib() {
        assert_eq!(size_class(1), 4096);
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(4097), 8192);
        assert_eq!(size_class(PINNED_MAX_BYTES), PINNED_MAX_BYTES);
    }
}
