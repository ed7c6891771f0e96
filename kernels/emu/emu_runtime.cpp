// Launch machinery of the CPU emulation of CUDA (see cuda_emu.hpp), and the
// C interface the Rust side calls: malloc/free on the host heap, and launch by
// kernel name with cudaLaunchKernel's `void** args` convention.

#include "emu_registry.hpp"

#include <barrier>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace emu {

thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

namespace {

// The synchronisation state of the block now running.
struct BlockState {
    std::optional<std::barrier<>> block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    std::vector<uint64_t> exchange;  // one slot per thread
    std::vector<uint32_t> fragments;  // mma fragments: two buffers × 12 words per thread
};

thread_local BlockState* current_block = nullptr;
thread_local int linear_tid = 0;
thread_local int mma_calls = 0;  // picks the fragment buffer (alternating)

}  // namespace

void sync_threads() { current_block->block_barrier->arrive_and_wait(); }

void sync_warp() { current_block->warp_barriers[linear_tid / 32]->arrive_and_wait(); }

int lane_id() { return linear_tid % 32; }

uint64_t warp_exchange(uint64_t value, int src_lane) {
    BlockState& b = *current_block;
    int warp = linear_tid / 32;
    int threads = (int)b.exchange.size();
    b.exchange[linear_tid] = value;
    b.warp_barriers[warp]->arrive_and_wait();
    int src = warp * 32 + src_lane;
    uint64_t got = (src >= warp * 32 && src < std::min(warp * 32 + 32, threads)) ? b.exchange[src] : value;
    b.warp_barriers[warp]->arrive_and_wait();
    return got;
}

// The tensor core's f32 accumulation as measured on NVIDIA GPUs (Fasi et al.,
// 2021, "Numerical behavior of NVIDIA tensor cores"): the
// products are exact, the sum (with the accumulator) is rounded toward zero,
// once per instruction; modelled as the sum in double rounded toward zero.
// A long sum of such steps drifts towards zero by up to an ulp a step (the
// parity tolerances, src/testing.rs, are sized for that; an emulator rounding
// to nearest would pass cases the GPU fails).
static float round_toward_zero(double v) {
    float f = (float)v;  // to nearest
    if (std::fabs((double)f) > std::fabs(v)) f = std::nextafter(f, 0.0f);
    return f;
}

void mma_m16n8k8_3xtf32(float (&big)[4], float (&small)[4], const unsigned int (&a_hi)[4], const unsigned int (&a_lo)[4],
                        const unsigned int (&b_hi)[2], const unsigned int (&b_lo)[2]) {
    BlockState& blk = *current_block;
    const int warp = linear_tid / 32, lane = linear_tid % 32;
    const int threads = (int)blk.exchange.size();
    // Two alternating buffers: a lane can only overwrite buffer X two calls
    // later, after every lane has passed the barrier of the call in between
    // and so finished reading X. One barrier per call.
    uint32_t* buf = blk.fragments.data() + (size_t)(mma_calls++ % 2) * threads * 12;
    uint32_t* mine = buf + (size_t)linear_tid * 12;
    for (int i = 0; i < 4; ++i) mine[i] = a_hi[i], mine[4 + i] = a_lo[i];
    for (int i = 0; i < 2; ++i) mine[8 + i] = b_hi[i], mine[10 + i] = b_lo[i];
    blk.warp_barriers[warp]->arrive_and_wait();
    const uint32_t* w = buf + (size_t)warp * 32 * 12;
    auto as_f = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
    // A[r][k] of the hi (0) or lo (4) part: lane (r % 8)·4 + k % 4, register (r ≥ 8) + 2·(k ≥ 4)
    auto A = [&](int part, int r, int k) { return as_f(w[((r % 8) * 4 + k % 4) * 12 + part + (r >= 8) + 2 * (k >= 4)]); };
    // B[k][c] of the hi (8) or lo (10) part: lane c·4 + k % 4, register (k ≥ 4)
    auto B = [&](int part, int k, int c) { return as_f(w[(c * 4 + k % 4) * 12 + part + (k >= 4)]); };
    const int g = lane / 4, t = lane % 4;
    // one mma: c + Σ_k a_k·b_k with exact products, rounded once toward zero
    auto mma = [&](float c_in, int pa, int pb, int r, int c) {
        double sum = c_in;  // tf32 products are exact in double, and so is this sum of 8 (to a few bits)
        for (int k = 0; k < 8; ++k) sum += (double)A(pa, r, k) * (double)B(pb, k, c);
        return round_toward_zero(sum);
    };
    for (int q = 0; q < 4; ++q) {
        const int r = g + 8 * (q / 2), c = 2 * t + q % 2;
        // in the order of kernels/mma.cuh's three instructions
        small[q] = mma(mma(small[q], 4, 8, r, c), 0, 10, r, c);
        big[q] = mma(big[q], 0, 8, r, c);
    }
}

void ldmatrix_x4(unsigned int (&r)[4], const void* row) {
    BlockState& blk = *current_block;
    const int warp = linear_tid / 32, lane = linear_tid % 32;
    const int threads = (int)blk.exchange.size();
    // the alternating buffers of the mma calls (one barrier a call): each
    // lane's row address in words 0 and 1 of its slot
    uint32_t* buf = blk.fragments.data() + (size_t)(mma_calls++ % 2) * threads * 12;
    const uint64_t mine = (uint64_t)(uintptr_t)row;
    buf[(size_t)linear_tid * 12] = (uint32_t)mine;
    buf[(size_t)linear_tid * 12 + 1] = (uint32_t)(mine >> 32);
    blk.warp_barriers[warp]->arrive_and_wait();
    for (int m = 0; m < 4; ++m) {
        const uint32_t* w = buf + (size_t)(warp * 32 + 8 * m + lane / 4) * 12;
        const uint64_t at = (uint64_t)w[0] | (uint64_t)w[1] << 32;
        std::memcpy(&r[m], reinterpret_cast<const char*>(at) + 4 * (lane % 4), 4);
    }
}

void mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    BlockState& blk = *current_block;
    const int warp = linear_tid / 32, lane = linear_tid % 32;
    const int threads = (int)blk.exchange.size();
    // The alternating fragment buffers of mma_m16n8k8_3xtf32 (6 of 12 words used).
    uint32_t* buf = blk.fragments.data() + (size_t)(mma_calls++ % 2) * threads * 12;
    uint32_t* mine = buf + (size_t)linear_tid * 12;
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
    blk.warp_barriers[warp]->arrive_and_wait();
    const uint32_t* w = buf + (size_t)warp * 32 * 12;
    // bf16 bits → f32: the high half of an f32
    auto half = [](uint32_t word, int k) {
        uint32_t u = (k % 2 ? word >> 16 : word & 0xffffu) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    };
    // A[r][k]: pair kp = k / 2 in lane (r % 8)·4 + kp % 4, register (r ≥ 8) + 2·(kp ≥ 4)
    auto A = [&](int r, int k) {
        const int kp = k / 2;
        return half(w[((r % 8) * 4 + kp % 4) * 12 + (r >= 8) + 2 * (kp >= 4)], k);
    };
    // B[k][c]: pair kp in lane c·4 + kp % 4, register 4 + (kp ≥ 4)
    auto B = [&](int k, int c) {
        const int kp = k / 2;
        return half(w[(c * 4 + kp % 4) * 12 + 4 + (kp >= 4)], k);
    };
    const int g = lane / 4, t = lane % 4;
    for (int q = 0; q < 4; ++q) {
        const int r = g + 8 * (q / 2), c = 2 * t + q % 2;
        double sum = d[q];  // bf16 products are exact; one rounding toward zero, as the tensor core's
        for (int k = 0; k < 16; ++k) sum += (double)A(r, k) * (double)B(k, c);
        d[q] = round_toward_zero(sum);
    }
}

// ---- wgmma: operations recorded per thread, computed when retired ----

namespace {

struct WgmmaOp {
    float* d;
    int n;
    uint64_t desc_a, desc_b;
    const unsigned char *a, *b;
};
thread_local std::vector<WgmmaOp> wgmma_ops;     // issued, not yet retired (oldest first)
thread_local std::vector<size_t> wgmma_groups;   // wgmma_ops' size at each commit (oldest first)
thread_local std::string wgmma_error;            // the first misuse seen, reported by the launch

void wgmma_fail(const std::string& what) {
    if (wgmma_error.empty()) wgmma_error = what;
}

// A bf16 operand's element (row, k) of a K-major, unswizzled layout from its
// descriptor: core matrices of 8 rows × 16 bytes, k halves LBO apart, 8-row
// groups SBO apart.
float wgmma_element(const unsigned char* base, uint64_t desc, int row, int k) {
    const uint64_t lbo = (desc >> 16 & 0x3fff) << 4, sbo = (desc >> 32 & 0x3fff) << 4;
    const unsigned char* p = base + (row / 8) * sbo + (row % 8) * 16 + (k / 8) * lbo + (k % 8) * 2;
    uint16_t h;
    std::memcpy(&h, p, 2);
    const uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

void wgmma_check_desc(uint64_t desc, const void* p, const char* which) {
    const uint64_t start = desc & 0x3fff;
    if (start != (((uintptr_t)p & 0x3ffff) >> 4) || (uintptr_t)p % 16 != 0)
        wgmma_fail(std::string("wgmma: the ") + which + " descriptor's address is not its operand's (16-byte aligned)");
    if (desc >> 62 != 0) wgmma_fail(std::string("wgmma: the ") + which + " descriptor asks for a swizzle (emulated: none)");
    if ((desc >> 49 & 7) != 0) wgmma_fail(std::string("wgmma: the ") + which + " descriptor has a base offset");
}

// d += A·B for this thread's accumulators, each n8 block's k16 sum rounded
// once toward zero (as mma_m16n8k16_bf16: the tensor core's accumulation).
void wgmma_run(const WgmmaOp& op) {
    const int w = linear_tid / 32 % 4, lane = linear_tid % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < op.n / 8; ++i)
        for (int q = 0; q < 4; ++q) {
            const int row = 16 * w + g + 8 * (q / 2), col = 8 * i + 2 * t + q % 2;
            double sum = op.d[4 * i + q];
            for (int k = 0; k < 16; ++k)
                sum += (double)wgmma_element(op.a, op.desc_a, row, k) * (double)wgmma_element(op.b, op.desc_b, col, k);
            op.d[4 * i + q] = round_toward_zero(sum);
        }
}

}  // namespace

unsigned int shared_address(const void* p) { return (unsigned int)(uintptr_t)p; }

void wgmma_bf16_ss(float* d, int n, uint64_t desc_a, const void* a, uint64_t desc_b, const void* b) {
    if (current_block->exchange.size() % 128 != 0) wgmma_fail("wgmma: the block is not whole warpgroups of 128 threads");
    if (n < 8 || n > 256 || n % 8 != 0) wgmma_fail("wgmma: N is not a multiple of 8 in 8…256");
    wgmma_check_desc(desc_a, a, "A");
    wgmma_check_desc(desc_b, b, "B");
    wgmma_ops.push_back(WgmmaOp{d, n, desc_a, desc_b, (const unsigned char*)a, (const unsigned char*)b});
}

void wgmma_commit() { wgmma_groups.push_back(wgmma_ops.size()); }

void wgmma_wait(int pending) {
    if (!wgmma_groups.empty() && wgmma_groups.back() != wgmma_ops.size())
        wgmma_fail("wgmma: a wait with operations issued after the last commit");
    const int groups = (int)wgmma_groups.size();
    if (groups <= pending) return;
    const size_t done = wgmma_groups[groups - pending - 1];
    for (size_t i = 0; i < done; ++i) wgmma_run(wgmma_ops[i]);
    wgmma_ops.erase(wgmma_ops.begin(), wgmma_ops.begin() + (long)done);
    wgmma_groups.erase(wgmma_groups.begin(), wgmma_groups.begin() + (groups - pending));
    for (auto& end : wgmma_groups) end -= done;
}

// After a thread's kernel returns: its misuse of wgmma, if any ("" if none),
// with operations left unretired counted as one. Resets the thread's state.
std::string wgmma_finish() {
    if (!wgmma_ops.empty()) wgmma_fail("wgmma: the kernel returned with operations not waited for");
    std::string e;
    std::swap(e, wgmma_error);
    wgmma_ops.clear();
    wgmma_groups.clear();
    return e;
}

}  // namespace emu

struct KernelEntry {
    Trampoline call;
    std::vector<size_t> arg_sizes;
    unsigned max_threads;  // __launch_bounds__'s first argument, or 1024
};

static std::map<std::string, KernelEntry>& registry() {
    static std::map<std::string, KernelEntry> r;
    return r;
}

void emu_register(const char* name, Trampoline call, std::vector<size_t> arg_sizes, unsigned max_threads) {
    registry()[name] = KernelEntry{std::move(call), std::move(arg_sizes), max_threads};
}

static std::mutex launch_mutex;
static std::mutex mappings_mutex;
// block pointer → (mapping base, mapping length)
static std::map<void*, std::pair<void*, size_t>>& mappings() {
    static std::map<void*, std::pair<void*, size_t>> m;
    return m;
}
static thread_local std::string last_error;

extern "C" {

const char* emu_last_error() { return last_error.c_str(); }

// Device memory: fresh zeroed pages per block, placed so that the block ends
// where an inaccessible guard page begins — a kernel that reads or writes
// past a buffer's end (beyond its 16-byte rounding) faults at once instead of
// touching a neighbour (the allocator asks for exact sizes: exact_blocks).
void* emu_malloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t used = (bytes ? bytes : 1) + 15 & ~(size_t)15;
    const size_t data = (used + page - 1) / page * page;
    void* base = mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect((char*)base + data, page, PROT_NONE);
    std::lock_guard<std::mutex> lock(mappings_mutex);
    void* p = (char*)base + (data - used);
    mappings()[p] = {base, data + page};
    return p;
}

void emu_free(void* p) {
    std::lock_guard<std::mutex> lock(mappings_mutex);
    auto it = mappings().find(p);
    if (it == mappings().end()) return;
    munmap(it->second.first, it->second.second);
    mappings().erase(it);
}

// Returns 0 on success; otherwise emu_last_error() says why.
int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
               void** args, const size_t* arg_sizes, size_t nargs) {
    static std::once_flag registered;
    std::call_once(registered, emu_register_all);
    auto it = registry().find(name);
    if (it == registry().end()) {
        last_error = std::string("no kernel named ") + name;
        return 1;
    }
    const KernelEntry& k = it->second;
    if (k.arg_sizes.size() != nargs) {
        last_error = std::string(name) + ": " + std::to_string(nargs) + " arguments given, kernel takes " +
                     std::to_string(k.arg_sizes.size());
        return 2;
    }
    for (size_t i = 0; i < nargs; ++i) {
        if (k.arg_sizes[i] != arg_sizes[i]) {
            last_error = std::string(name) + ": argument " + std::to_string(i) + " has " + std::to_string(arg_sizes[i]) +
                         " bytes, kernel expects " + std::to_string(k.arg_sizes[i]);
            return 3;
        }
    }
    const unsigned threads = bx * by * bz;
    if (threads == 0 || threads > 1024 || gx == 0 || gy == 0 || gz == 0) {
        last_error = std::string(name) + ": invalid launch configuration";
        return 4;
    }
    if (threads > k.max_threads) {
        last_error = std::string(name) + ": " + std::to_string(threads) + " threads a block, its __launch_bounds__ allow " +
                     std::to_string(k.max_threads) + " (a GPU refuses the launch)";
        return 4;
    }
    // one launch at a time: function-local statics are the shared memory
    std::lock_guard<std::mutex> guard(launch_mutex);
    emu::BlockState block;
    block.exchange.assign(threads, 0);
    block.fragments.assign((size_t)threads * 24, 0);
    const unsigned blocks = gx * gy * gz;
    // workers persist over the blocks of this launch; `start` and `finish`
    // bracket each block, the coordinator resets the block's barriers between
    std::barrier<> start(threads + 1);
    std::barrier<> finish(threads + 1);
    std::mutex wgmma_error_mutex;
    std::string wgmma_error;  // the first thread's misuse of wgmma
    auto reset = [&]() {
        block.block_barrier.emplace(threads);
        block.warp_barriers.clear();
        for (unsigned w = 0; w * 32 < threads; ++w) {
            block.warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w * 32)));
        }
    };
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        workers.emplace_back([&, t]() {
            emu::current_block = &block;
            emu::linear_tid = (int)t;
            emu::mma_calls = 0;
            emu::thread_idx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
            emu::block_dim = dim3{bx, by, bz};
            emu::grid_dim = dim3{gx, gy, gz};
            for (unsigned b = 0; b < blocks; ++b) {
                start.arrive_and_wait();
                emu::block_idx = uint3{b % gx, (b / gx) % gy, b / (gx * gy)};
                k.call(args);
                if (std::string e = emu::wgmma_finish(); !e.empty()) {
                    std::lock_guard<std::mutex> g(wgmma_error_mutex);
                    if (wgmma_error.empty()) wgmma_error = e;
                }
                block.block_barrier->arrive_and_drop();
                block.warp_barriers[t / 32]->arrive_and_drop();
                finish.arrive_and_wait();
            }
        });
    }
    for (unsigned b = 0; b < blocks; ++b) {
        reset();
        start.arrive_and_wait();
        finish.arrive_and_wait();
    }
    for (auto& w : workers) w.join();
    if (!wgmma_error.empty()) {
        last_error = std::string(name) + ": " + wgmma_error;
        return 5;
    }
    return 0;
}

}  // extern "C"
