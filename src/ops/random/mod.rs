//! Random tensors from the Philox stream, on any device (in progress).
