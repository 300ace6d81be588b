// runtime.hpp — the CUDA subset cliprt's kernels use, executed on the CPU (src/cuda/sim.rs builds and drives it).
//
// Why: most machines that build cliprt have no GPU, yet every kernel must be checked before a scarce GPU run. The
// simulator compiles kernels/*.cu unchanged with the host C++ compiler and runs them with real concurrency:
//   - every CUDA thread of a block is a host thread; __syncthreads is a block barrier;
//   - warp-collective operations (shuffles, ldmatrix, mma.sync) exchange the 32 lanes' operands through a barrier
//     and implement the PTX ISA's fragment layouts, so a wrong lane/fragment mapping gives wrong numbers here too;
//   - cp.async copies are deferred until the cp.async.wait_group that covers them (reading a stage before its wait
//     sees stale data, as on hardware), with their alignment and zero fill checked;
//   - __shared__ arrays are per-launch statics (blocks of a launch run one after another), dynamic shared memory is
//     an exact-size allocation poisoned with NaN before every block;
//   - the server is built with AddressSanitizer and UBSan: an out-of-bounds global or shared access, or a misaligned
//     vector load, stops it with a report; or with ThreadSanitizer, which reports shared- or global-memory races
//     between CUDA threads (barriers, shuffles and collectives are atomics it sees as synchronization).
// Checked and fatal (the server prints "sim error: ..." and exits, like a sticky CUDA fault): a warp collective that
// not all 32 lanes reach, lanes of one warp at different collectives, no barrier completing for a long time
// (deadlock; CLIPRT_SIM_TIMEOUT_S, default 120),
// misaligned ldmatrix / cp.async addresses, cp.async copies never waited for.
// Not modelled: timing, bank conflicts, memory-model races beyond what real concurrency happens to expose.

#pragma once

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#define CLIPRT_SIM 1

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks of one launch run one after another, so a function-local static is exactly one block's shared memory.
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

template <typename T>
inline T min(T a, T b) {
    return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
    return a < b ? b : a;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __int_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

typedef unsigned short half_t;

namespace sim {

// Prints "sim error: <what>" with the failing thread's coordinates and ends the server (a sticky device fault).
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Bumped whenever any barrier completes: the watchdog calls a launch deadlocked when it stops moving.
extern std::atomic<unsigned long> progress;

// A reusable barrier for a changing number of participants: a thread that leaves (exits the kernel) is dropped,
// so the others are not kept waiting for it. Lock-free: (expected, arrived) live in one atomic word, waiters sleep
// on the generation counter (a futex), so the 32 lanes of a warp pass a collective without a mutex convoy.
class Barrier {
public:
    // Only while nobody waits.
    void reset(int n) { state_.store((unsigned long long)(unsigned)n << 32); }

    // Returns how many threads took part in the generation this call completed (fewer than expected at reset when
    // some left meanwhile).
    int wait() {
        const unsigned gen = generation_.load(std::memory_order_acquire);
        unsigned long long s = state_.load(), next;
        int count;
        bool last;
        do {
            const int expected = (int)(s >> 32), arrived = (int)(s & 0xffffffffu) + 1;
            last = arrived == expected;
            count = arrived;
            next = ((unsigned long long)(unsigned)expected << 32) | (last ? 0u : (unsigned)arrived);
        } while (!state_.compare_exchange_weak(s, next));
        if (last) {
            release(count);
            return count;
        }
        while (generation_.load(std::memory_order_acquire) == gen) generation_.wait(gen);
        return last_count_;
    }

    void drop() {
        unsigned long long s = state_.load(), next;
        int count;
        bool last;
        do {
            const int expected = (int)(s >> 32) - 1, arrived = (int)(s & 0xffffffffu);
            last = arrived > 0 && arrived == expected;
            count = arrived;
            next = ((unsigned long long)(unsigned)expected << 32) | (last ? 0u : (unsigned)arrived);
        } while (!state_.compare_exchange_weak(s, next));
        if (last) release(count);
    }

private:
    void release(int count) {
        // A waiter of generation g wakes before generation g + 2 can complete (that needs this waiter to arrive), so
        // last_count_ still describes its generation when it reads it.
        last_count_ = count;
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
        progress.fetch_add(1, std::memory_order_relaxed);
    }
    std::atomic<unsigned long long> state_{0};  // expected << 32 | arrived
    std::atomic<unsigned> generation_{0};
    int last_count_ = 0;
};

enum Collective { SHFL = 1, LDMATRIX, LDMATRIX_TRANS, MMA };

// One lane's operands of a warp-collective operation.
struct Slot {
    int kind;
    unsigned mask;
    unsigned long long v[6];
    const void* p;
};

struct Warp {
    Barrier barrier;
    // Two slot sets, alternating per collective: a lane can only start collective n + 2 after every lane has
    // passed the barrier of collective n + 1, i.e. after every lane finished reading the slots of collective n.
    Slot slots[2][32];
};

// Per CUDA thread state.
struct ThreadState {
    int lane;
    Warp* warp;
    int phase;
    struct Copy {
        void* dst;
        const void* src;
        int bytes;
    };
    std::vector<Copy> open;                 // cp.async issued since the last commit
    std::vector<std::vector<Copy>> groups;  // committed, oldest first
};
extern thread_local ThreadState self;

// Deposits this lane's operands, waits for the whole warp, checks that every lane is at the same collective with
// the full mask, and returns the 32 slots.
const Slot* exchange(const Slot& mine, const char* what);

void cp_async_complete(std::vector<ThreadState::Copy>& group);

}  // namespace sim

inline void __syncthreads();

template <typename T>
inline T sim_shfl(unsigned mask, T v, int src_of_lane_xor, bool xor_mode) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    sim::Slot s{};
    s.kind = sim::SHFL;
    s.mask = mask;
    std::memcpy(&s.v[0], &v, sizeof(T));
    const sim::Slot* all = sim::exchange(s, "__shfl_sync");
    const int src = xor_mode ? (sim::self.lane ^ src_of_lane_xor) & 31 : src_of_lane_xor & 31;
    T out;
    std::memcpy(&out, &all[src].v[0], sizeof(T));
    return out;
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return sim_shfl(mask, v, lane_mask, true);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    return sim_shfl(mask, v, src_lane, false);
}

// ---- the hardware primitives of kernels/common.cuh (its PTX versions are compiled out under CLIPRT_SIM) ----

__device__ __forceinline__ float h2f(half_t h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
}

// Round to nearest even, as cvt.rn.f16.f32.
__device__ __forceinline__ half_t f2h(float x) {
    _Float16 f = (_Float16)x;
    half_t h;
    std::memcpy(&h, &f, 2);
    return h;
}

namespace sim {
// Shared-memory bank statistics of the running server (reported by the 'S' request): ldmatrix matrices loaded,
// and the extra wavefronts their bank conflicts cost.
extern std::atomic<unsigned long long> ldmatrix_matrices, ldmatrix_extra_wavefronts;

// Each 8×8 matrix of an ldmatrix is 8 rows of 16 bytes, one wavefront when the rows cover distinct banks (32 banks
// of 4 bytes); every row sharing a bank with another costs one more. Only address differences matter, so the
// host addresses of the simulated shared memory give the same answer as the device's.
void count_bank_conflicts(const Slot* all);

inline half_t half_at(const void* row, int col) {
    half_t h;
    std::memcpy(&h, (const char*)row + 2 * col, 2);
    return h;
}
inline unsigned pack(half_t lo, half_t hi) { return (unsigned)lo | ((unsigned)hi << 16); }

// ldmatrix .m8n8 .x4 .b16: lanes 8i..8i+7 address the rows of matrix i (16-byte aligned). Without .trans, lane l
// receives row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i in register i; with .trans, the transposed matrix's:
// rows 2(l%4) and 2(l%4)+1 of column l/4.
inline void ldmatrix(unsigned r[4], const half_t* p, bool trans) {
    if ((uintptr_t)p % 16 != 0) fail("ldmatrix row address %p is not 16-byte aligned", (const void*)p);
    Slot s{};
    s.kind = trans ? LDMATRIX_TRANS : LDMATRIX;
    s.mask = 0xffffffffu;
    s.p = p;
    const Slot* all = exchange(s, trans ? "ldmatrix.trans" : "ldmatrix");
    if (self.lane == 0) count_bank_conflicts(all);
    const int g = self.lane >> 2, t = self.lane & 3;
    for (int i = 0; i < 4; i++) {
        if (trans) {
            r[i] = pack(half_at(all[8 * i + 2 * t].p, g), half_at(all[8 * i + 2 * t + 1].p, g));
        } else {
            const void* row = all[8 * i + g].p;
            r[i] = pack(half_at(row, 2 * t), half_at(row, 2 * t + 1));
        }
    }
}

// An f16 value of a packed register: element `which` (0 = low half).
inline float reg_half(unsigned long long reg, int which) { return h2f((half_t)(reg >> (16 * which))); }
}  // namespace sim

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const half_t* p) { sim::ldmatrix(r, p, false); }
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const half_t* p) { sim::ldmatrix(r, p, true); }

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 with the PTX ISA fragment layouts (groupID g = lane/4,
// threadID_in_group t = lane%4):
//   A (16×16): register 0 = row g, cols 2t, 2t+1; 1 = row g+8, same cols; 2 = row g, cols 2t+8, 2t+9; 3 = row g+8.
//   B (16×8):  register 0 = rows 2t, 2t+1 of column g; register 1 = rows 2t+8, 2t+9.
//   C/D (16×8 f32): d0, d1 = row g, cols 2t, 2t+1; d2, d3 = row g+8.
// Products of two f16 are exact in f32; the sum runs in f32 in k order.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    sim::Slot s{};
    s.kind = sim::MMA;
    s.mask = 0xffffffffu;
    for (int i = 0; i < 4; i++) s.v[i] = a[i];
    s.v[4] = b[0];
    s.v[5] = b[1];
    const sim::Slot* all = sim::exchange(s, "mma.sync");
    const int g = sim::self.lane >> 2, t = sim::self.lane & 3;
    auto A = [&](int row, int k) {
        const int lane = (row & 7) * 4 + ((k & 7) >> 1);
        const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return sim::reg_half(all[lane].v[reg], k & 1);
    };
    auto B = [&](int k, int col) {
        const int lane = col * 4 + ((k & 7) >> 1);
        return sim::reg_half(all[lane].v[4 + (k >= 8 ? 1 : 0)], k & 1);
    };
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        float acc = d[e];
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        d[e] = acc;
    }
}

// cp.async.cg 16 bytes with zero fill past src_bytes: recorded now, performed by the wait that covers it.
__device__ __forceinline__ void cp_async_16(half_t* dst, const half_t* src, int src_bytes) {
    if ((uintptr_t)dst % 16 != 0) sim::fail("cp.async destination %p is not 16-byte aligned", (void*)dst);
    if (src_bytes < 0 || src_bytes > 16) sim::fail("cp.async src-size %d outside 0..16", src_bytes);
    if (src_bytes > 0 && (uintptr_t)src % 16 != 0)
        sim::fail("cp.async source %p is not 16-byte aligned", (const void*)src);
    sim::self.open.push_back({dst, src, src_bytes});
}

__device__ __forceinline__ void cp_async_commit() {
    sim::self.groups.push_back(std::move(sim::self.open));
    sim::self.open.clear();
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    while (sim::self.groups.size() > (size_t)N) {
        sim::cp_async_complete(sim::self.groups.front());
        sim::self.groups.erase(sim::self.groups.begin());
    }
}

__device__ __forceinline__ void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait<0>();
}

namespace sim {
// The block barrier of the running block.
extern Barrier* block_barrier;
// The running block's dynamic shared memory (kernels' `extern __shared__ T name[];` is rewritten to use it).
void* dynamic_shared();
}  // namespace sim

inline void __syncthreads() { sim::block_barrier->wait(); }

// ---- kernel registry: name -> a caller that unpacks cuLaunchKernel-style argument pointers ----
namespace sim {

typedef void (*Caller)(void* fn, void** args);

struct Kernel {
    const char* name;
    void* fn;
    Caller call;
    const char* signature;  // one letter per parameter: p pointer, i int, u unsigned, f float
};

void register_kernel(const Kernel& k);

template <typename T>
constexpr char kind_of() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, unsigned>) return 'u';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else static_assert(sizeof(T) == 0, "kernel parameter of a type the simulator does not pass");
}

template <typename... A>
struct Signature {
    static constexpr char value[sizeof...(A) + 1] = {kind_of<A>()..., '\0'};
};

template <typename... A, size_t... I>
void call_unpacked(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
void call(void* fn, void** args) {
    call_unpacked(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

template <typename... A>
Kernel kernel(const char* name, void (*f)(A...)) {
    return Kernel{name, reinterpret_cast<void*>(f), &call<A...>, Signature<A...>::value};
}

struct Registrar {
    explicit Registrar(const Kernel& k) { register_kernel(k); }
};

}  // namespace sim

#define SIM_REGISTER(symbol) static sim::Registrar sim_registrar_##symbol(sim::kernel(#symbol, &symbol));
