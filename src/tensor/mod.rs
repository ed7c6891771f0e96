//! The tensor: a shape, a dtype, a device, shared storage, and (when it takes
//! part in autograd) the node that made it.

mod shape;
mod storage;

pub use shape::Shape;
pub(crate) use shape::for_each_offset2;
pub use storage::{CpuStorage, Storage};

use crate::autograd::{self, Node};
use crate::device::Device;
use crate::error::{Error, Result, shape_err};
use crate::rng::PhiloxStream;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Identity of a tensor in the autograd graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn next() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        TensorId(COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

/// A cheaply clonable handle to an n-dimensional array.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: TensorId,
    shape: Shape,
    storage: Arc<StorageCell>,
    requires_grad: bool,
    node: Option<Node>,
}

/// A tensor's values (shared by its views) and what is derived from them.
struct StorageCell {
    data: RwLock<Storage>,
    /// Bumped by every write access ([`Tensor::storage_mut`]).
    version: AtomicU64,
    /// Values computed from `data` at a version ([`Tensor::derived`]).
    derived: Mutex<Vec<Derived>>,
}

impl StorageCell {
    fn new(storage: Storage) -> Arc<StorageCell> {
        Arc::new(StorageCell { data: RwLock::new(storage), version: AtomicU64::new(0), derived: Mutex::default() })
    }

    fn derived(&self) -> std::sync::MutexGuard<'_, Vec<Derived>> {
        self.derived.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data is being written: what was derived from it is dropped (a
    /// build still under way sees the new version and is not trusted).
    /// Lock order: `data`, then `derived` (never the reverse), so a writer
    /// holding `data` may take `derived`.
    fn stale(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.derived().clear();
    }
}

/// What a derived value is: a name and the parameters it was made with
/// (e.g. a convolution's packed weights: precision, orientation, shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DerivedKey {
    pub what: &'static str,
    pub params: [u64; 4],
}

struct Derived {
    key: DerivedKey,
    version: u64,
    value: Arc<dyn Any + Send + Sync>,
}

impl Drop for Inner {
    /// Frees a graph iteratively: a long chain of ops would otherwise recurse
    /// once per node while dropping and overflow the stack.
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        let mut stack = vec![node];
        while let Some(Node { inputs, backward, .. }) = stack.pop() {
            drop(backward); // releases captured clones first, so `inputs` may hold the last reference
            for input in inputs {
                if let Ok(mut inner) = Arc::try_unwrap(input.0) {
                    if let Some(next) = inner.node.take() {
                        stack.push(next);
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(id={}, shape={}, {:?}, {}", self.0.id.0, self.0.shape, self.dtype(), self.device())?;
        if let Some(node) = &self.0.node {
            write!(f, ", grad_fn={}", node.op)?;
        } else if self.0.requires_grad {
            write!(f, ", requires_grad")?;
        }
        write!(f, ")")
    }
}

impl Tensor {
    /// A leaf tensor from host values.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return shape_err("from_vec", format!("{} values do not fill shape {}", data.len(), shape));
        }
        Ok(Tensor::from_storage(Storage::Cpu(CpuStorage::F32(data)), shape))
    }

    /// A leaf tensor over existing storage (its length must match the shape).
    pub fn from_storage(storage: Storage, shape: Shape) -> Tensor {
        debug_assert_eq!(storage.len(), shape.numel());
        Tensor::make(StorageCell::new(storage), shape, false, None)
    }

    fn make(storage: Arc<StorageCell>, shape: Shape, requires_grad: bool, node: Option<Node>) -> Tensor {
        Tensor(Arc::new(Inner { id: TensorId::next(), shape, storage, requires_grad, node }))
    }

    /// The result of an op. When grad mode is on, `node` builds the op's tape
    /// entry; it gets a detached handle to the output's storage for backward
    /// rules that reuse the output (capturing the output itself would be a cycle).
    /// The entry is kept only if some input requires grad.
    pub(crate) fn from_op(storage: Storage, shape: Shape, node: impl FnOnce(Tensor) -> Node) -> Tensor {
        let storage = StorageCell::new(storage);
        let node = if autograd::is_grad_enabled() {
            let saved_output = Tensor::make(storage.clone(), shape.clone(), false, None);
            Some(node(saved_output)).filter(|n| n.inputs.iter().any(|t| t.requires_grad()))
        } else {
            None
        };
        let requires_grad = node.is_some();
        Tensor::make(storage, shape, requires_grad, node)
    }

    /// A result that shares this tensor's storage (zero-copy reshape).
    pub(crate) fn view_op(&self, shape: Shape, node: impl FnOnce() -> Node) -> Tensor {
        let node = if autograd::is_grad_enabled() && self.requires_grad() { Some(node()) } else { None };
        let requires_grad = node.is_some();
        Tensor::make(self.0.storage.clone(), shape, requires_grad, node)
    }

    /// Zeros on the CPU.
    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(0.0, shape)
    }

    /// `value` everywhere, on `device`.
    pub fn full_on(value: f32, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let storage = match device {
            Device::Cpu => cpu_f32_storage(vec![value; shape.numel()]),
            Device::Cuda(d) => Storage::Cuda(crate::ops::binary::cuda::fill(&crate::device::cuda::backend(d)?, shape.numel(), value)?),
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    /// Zeros on `device`.
    pub fn zeros_on(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full_on(0.0, shape, device)
    }

    /// Host values placed on `device`.
    pub fn from_vec_on(data: Vec<f32>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_vec(data, shape)?.to_device(device)
    }

    /// The same values on `device` (a copy unless already there), in the
    /// same dtype (f16 becomes f32 on CUDA, which stores f32 and bf16).
    /// Recorded: the gradient goes back to the source device.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let source = self.device();
        if source == device {
            return Ok(self.clone());
        }
        let dtype = self.dtype();
        let storage = match device {
            Device::Cpu if dtype == DType::F32 => cpu_f32_storage(self.try_to_vec()?),
            Device::Cpu => self.storage().to_dtype(dtype)?,
            Device::Cuda(d) => {
                let f32_buffer = crate::device::cuda::backend(d)?.upload(&self.try_to_vec()?)?;
                match dtype {
                    DType::BF16 => Storage::Cuda(crate::ops::cast::cuda::cast(&f32_buffer, DType::BF16)?),
                    _ => Storage::Cuda(f32_buffer),
                }
            }
        };
        Ok(Tensor::from_op(storage, self.shape().clone(), |_| {
            Node::new("to_device", vec![self.clone()], move |g| Ok(vec![Some(g.to_device(source)?)]))
        }))
    }

    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(1.0, shape)
    }

    pub fn full(value: f32, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        Tensor::from_storage(Storage::Cpu(CpuStorage::F32(vec![value; shape.numel()])), shape)
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::full(value, ())
    }

    /// Standard normal values from the Philox stream (seed, offset).
    pub fn randn(shape: impl Into<Shape>, seed: u64, offset: u64) -> Tensor {
        let shape = shape.into();
        let mut data = vec![0.0; shape.numel()];
        PhiloxStream::new(seed, offset).fill_normal(0, &mut data);
        Tensor::from_storage(Storage::Cpu(CpuStorage::F32(data)), shape)
    }

    /// Uniform values in [lo, hi) from the Philox stream (seed, offset).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64, offset: u64) -> Tensor {
        let shape = shape.into();
        let mut data = vec![0.0; shape.numel()];
        PhiloxStream::new(seed, offset).fill_uniform(0, &mut data);
        data.iter_mut().for_each(|x| *x = lo + (hi - lo) * *x);
        Tensor::from_storage(Storage::Cpu(CpuStorage::F32(data)), shape)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }
    pub fn device(&self) -> Device {
        self.storage().device()
    }
    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }
    /// True for parameters (leaves marked trainable) and anything computed from them with grad on.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// True for tensors that no op made (inputs and parameters).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }
    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }

    /// A trainable leaf over the same storage (a new identity on the tape).
    pub fn requires_grad_(self) -> Tensor {
        Tensor::make(self.0.storage.clone(), self.0.shape.clone(), true, None)
    }

    /// The same values, cut from the tape.
    pub fn detach(&self) -> Tensor {
        Tensor::make(self.0.storage.clone(), self.0.shape.clone(), false, None)
    }

    /// A copy with its own storage on the same device (cut from the tape).
    pub fn deep_clone(&self) -> Result<Tensor> {
        let storage = self.storage().try_clone()?;
        Ok(Tensor::from_storage(storage, self.0.shape.clone()))
    }

    /// Read access to the storage. Whoever writes through it says so
    /// ([`Tensor::written_in_place`]); other in-place writes take
    /// [`Tensor::storage_mut`].
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access, for in-place updates outside the tape (optimisers,
    /// running statistics, a sampler's x): what was [`Tensor::derived`] from
    /// the values before is stale from here on.
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        let guard = self.0.storage.data.write().unwrap_or_else(|e| e.into_inner());
        self.0.storage.stale();
        guard
    }

    /// Say that device work queued through a read guard writes this tensor's
    /// storage in place (where two write guards could deadlock: batch norm's
    /// running statistics, a sampler's x): what was derived is stale.
    pub(crate) fn written_in_place(&self) {
        self.0.storage.stale();
    }

    /// A value computed by `build` from this tensor's storage, kept with the
    /// storage under `key` and built again only after a write
    /// ([`Tensor::storage_mut`]) or for another key: a convolution's weights
    /// packed once for all the steps of a sampling run. At most one value a
    /// key (a stale one is replaced); dropped with the storage.
    pub(crate) fn derived<T: Any + Send + Sync>(&self, key: DerivedKey, build: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let cell = &self.0.storage;
        // the version before building: a write during the build makes the
        // value older than the storage, so it is returned but not kept
        let version = cell.version.load(Ordering::Acquire);
        let found = cell.derived().iter().find(|d| d.key == key && d.version == version).map(|d| d.value.clone());
        if let Some(value) = found.and_then(|v| v.downcast::<T>().ok()) {
            return Ok(value);
        }
        let value = Arc::new(build()?);
        let mut derived = cell.derived();
        if cell.version.load(Ordering::Acquire) == version {
            derived.retain(|d| d.key != key);
            derived.push(Derived { key, version, value: value.clone() });
        }
        Ok(value)
    }

    /// Its storage's identity and write count: the same while neither the
    /// buffer nor its values change (a value derived from several tensors
    /// checks the others' stamps, [`Tensor::derived`] watching only its own).
    pub(crate) fn storage_stamp(&self) -> (usize, u64) {
        (Arc::as_ptr(&self.0.storage) as usize, self.0.storage.version.load(Ordering::Acquire))
    }

    /// Whether [`Tensor::derived`] holds a value for `key` at the current version.
    pub(crate) fn has_derived(&self, key: DerivedKey) -> bool {
        let cell = &self.0.storage;
        let version = cell.version.load(Ordering::Acquire);
        cell.derived().iter().any(|d| d.key == key && d.version == version)
    }

    /// True when both handles share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Values as f32 on the host (a device copy for CUDA tensors).
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        self.storage().to_f32_vec()
    }

    /// Values as f32 on the host. Panics only if a CUDA device fails the copy;
    /// use [`Tensor::try_to_vec`] where that must be handled.
    pub fn to_vec(&self) -> Vec<f32> {
        self.try_to_vec().unwrap_or_else(|e| panic!("copying a tensor to the host failed: {e}"))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return shape_err("item", format!("tensor of shape {} has {} elements, not 1", self.shape(), self.numel()));
        }
        Ok(self.try_to_vec()?[0])
    }

    /// Start copying the values to the host without waiting for the device
    /// (a CUDA tensor's copy is queued behind the work that computes it);
    /// [`HostValues::wait`] returns them.
    pub fn to_host_async(&self) -> Result<HostValues> {
        Ok(match &*self.storage() {
            Storage::Cuda(b) => HostValues::Pending(b.download_async()?),
            cpu => HostValues::Ready(cpu.to_f32_vec()?),
        })
    }

    /// Overwrite the values in place (shape must match); not recorded.
    pub fn copy_from_slice(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.numel() {
            return shape_err("copy_from_slice", format!("{} values for shape {}", values.len(), self.shape()));
        }
        let mut storage = self.storage_mut();
        match &mut *storage {
            Storage::Cuda(b) => b.upload_from(values),
            other => {
                other.cpu_f32_mut("copy_from_slice")?.copy_from_slice(values);
                Ok(())
            }
        }
    }

    /// A host copy converted to `dtype` (cut from the tape).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let storage = self.storage().to_dtype(dtype)?;
        Ok(Tensor::from_storage(storage, self.0.shape.clone()))
    }

    /// The device shared by all `tensors`, or an error naming `op`.
    pub(crate) fn common_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
        let first = tensors[0].device();
        for t in &tensors[1..] {
            if t.device() != first {
                return Err(Error::DeviceMismatch { op, a: first, b: t.device() });
            }
        }
        Ok(first)
    }
}

/// The f32 storage of a new host result.
pub(crate) fn cpu_f32_storage(values: Vec<f32>) -> Storage {
    Storage::Cpu(CpuStorage::F32(values))
}

/// A tensor's values on their way to the host ([`Tensor::to_host_async`]).
pub enum HostValues {
    Ready(Vec<f32>),
    Pending(crate::device::cuda::PendingDownload),
}

impl HostValues {
    /// The values, waiting for the copy if it is still queued.
    pub fn wait(self) -> Result<Vec<f32>> {
        match self {
            HostValues::Ready(v) => Ok(v),
            HostValues::Pending(p) => p.wait(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: DerivedKey = DerivedKey { what: "test", params: [1, 2, 3, 4] };

    /// Builds a sum of the values, counting the builds.
    fn sum_of(t: &Tensor, key: DerivedKey, builds: &std::cell::Cell<u32>) -> f32 {
        *t.derived(key, || {
            builds.set(builds.get() + 1);
            Ok(t.to_vec().iter().sum::<f32>())
        })
        .unwrap()
    }

    #[test]
    fn derived_values_are_kept_until_a_write() {
        let t = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3]).unwrap();
        let builds = std::cell::Cell::new(0);
        assert_eq!(sum_of(&t, KEY, &builds), 6.0);
        assert_eq!(sum_of(&t, KEY, &builds), 6.0);
        assert_eq!(builds.get(), 1, "kept");
        assert!(t.has_derived(KEY));
        // a view shares the storage and what is derived from it; its clones too
        let view = crate::ops::reshape(&t, [1, 3]).unwrap();
        assert_eq!(sum_of(&view, KEY, &builds), 6.0);
        assert_eq!(sum_of(&t.clone(), KEY, &builds), 6.0);
        assert_eq!(builds.get(), 1);
        // another key is another value; both are kept
        let other = DerivedKey { params: [1, 2, 3, 5], ..KEY };
        assert_eq!(sum_of(&t, other, &builds), 6.0);
        assert_eq!(sum_of(&t, KEY, &builds), 6.0);
        assert_eq!(builds.get(), 2);
        // every kind of write makes them stale
        t.copy_from_slice(&[1.0, 1.0, 1.0]).unwrap();
        assert!(!t.has_derived(KEY) && !t.has_derived(other));
        assert_eq!(sum_of(&view, KEY, &builds), 3.0);
        assert_eq!(builds.get(), 3);
        t.storage_mut().cpu_f32_mut("test").unwrap()[0] = 5.0;
        assert_eq!(sum_of(&t, KEY, &builds), 7.0);
        t.written_in_place();
        assert_eq!(sum_of(&t, KEY, &builds), 7.0);
        assert_eq!(builds.get(), 5);
        // a copy has its own storage: nothing derived
        let copy = t.deep_clone().unwrap();
        assert!(!copy.has_derived(KEY));
    }

    #[test]
    fn a_failed_build_keeps_nothing() {
        let t = Tensor::from_vec(vec![1.0], [1]).unwrap();
        let err = t.derived::<f32>(KEY, || Err(Error::Data { path: "x".into(), msg: "no".into() }));
        assert!(err.is_err());
        assert!(!t.has_derived(KEY));
        assert_eq!(*t.derived(KEY, || Ok(2.0f32)).unwrap(), 2.0);
    }
}
