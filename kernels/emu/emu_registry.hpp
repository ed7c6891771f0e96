// Registration of emulated kernels by name (see cuda_emu.hpp). The build
// generates one translation unit that includes every kernels/*.cu and calls
// emu_register_kernel for each `extern "C" __global__` function in them.
#pragma once

#include "cuda_emu.hpp"

#include <functional>
#include <utility>
#include <vector>

using Trampoline = std::function<void(void**)>;

void emu_register(const char* name, Trampoline call, std::vector<size_t> arg_sizes, unsigned max_threads);

// Defined by the generated translation unit.
void emu_register_all();

template <typename... A, size_t... I>
void emu_call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

// Register `kernel` under `name`; launches unpack cudaLaunchKernel-style
// `void** args` into its typed parameters, after checking count and sizes,
// and refuse blocks of more than `max_threads` (its __launch_bounds__, as a
// GPU refuses them; 1024 without).
template <typename... A>
void emu_register_kernel(const char* name, void (*kernel)(A...), unsigned max_threads) {
    emu_register(
        name, [kernel](void** args) { emu_call_with(kernel, args, std::index_sequence_for<A...>{}); }, {sizeof(A)...},
        max_threads);
}
