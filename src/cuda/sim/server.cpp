// server.cpp — the simulated device: device memory, kernel launches on runtime.hpp's thread model, and the pipe
// protocol src/cuda/sim.rs speaks. Requests arrive on stdin, replies leave on stdout, both little-endian:
//   'A' u64 bytes                         -> u64 device pointer (256-byte aligned, like cuMemAlloc)
//   'F' u64 ptr                           (no reply)
//   'W' u64 ptr, u64 offset, u64 len, data (no reply)
//   'R' u64 ptr, u64 offset, u64 len       -> data
//   'M' u16 name length, name, u32 bytes  -> u8 status, u32 length, message (the kernel's dynamic shared memory
//                                            limit, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
//   'L' u16 name length, name, u32 grid[3], u32 block[3], u32 dynamic smem, u32 count, count × (u8 kind, u64 bits)
//                                         -> u8 status, u32 length, message
//   'S'                                   -> u64 ldmatrix matrices, u64 extra wavefronts from bank conflicts
//                                            (since the server started)
// A launch error (unknown kernel, wrong arguments, bad geometry) is a status 1 reply and the server goes on, like
// cuLaunchKernel's error codes. A fault inside a kernel or a malformed request ends the server ("sim error: ..." on
// stderr), like a sticky CUDA error.

#include <algorithm>
#include <condition_variable>
#include <cstdarg>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "runtime.hpp"

// Leaks at exit are the client's buffers still allocated when it closes the pipe: not worth a report.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
// The first data race ends the server with its report, like any other fault.
extern "C" const char* __tsan_default_options() { return "halt_on_error=1 exitcode=70"; }

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace sim {

thread_local ThreadState self;
Barrier* block_barrier = nullptr;
std::atomic<unsigned long> progress{0};
std::atomic<unsigned long long> ldmatrix_matrices{0}, ldmatrix_extra_wavefronts{0};

void count_bank_conflicts(const Slot* all) {
    for (int m = 0; m < 4; m++) {
        int hits[32] = {0};
        int worst = 0;
        for (int r = 0; r < 8; r++) {
            const uintptr_t word = (uintptr_t)all[8 * m + r].p / 4;
            for (int w = 0; w < 4; w++) worst = std::max(worst, ++hits[(word + w) % 32]);
        }
        ldmatrix_matrices.fetch_add(1, std::memory_order_relaxed);
        ldmatrix_extra_wavefronts.fetch_add((unsigned long long)(worst - 1), std::memory_order_relaxed);
    }
}

namespace {
const char* g_kernel = "";
void* g_dynamic = nullptr;
size_t g_dynamic_bytes = 0;

// Waiting this long at one barrier means the block can never complete it.
std::chrono::seconds deadlock_timeout() {
    const char* v = std::getenv("CLIPRT_SIM_TIMEOUT_S");
    return std::chrono::seconds(v ? std::atol(v) : 120);
}

std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> r;
    return r;
}
}  // namespace

void fail(const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "sim error: %s: %s (block (%u, %u, %u), thread (%u, %u, %u))\n", g_kernel, msg, blockIdx.x,
                 blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::fflush(stderr);
    std::_Exit(70);
}

const Slot* exchange(const Slot& mine, const char* what) {
    Warp& w = *self.warp;
    const int phase = self.phase;
    self.phase ^= 1;
    w.slots[phase][self.lane] = mine;
    const int lanes = w.barrier.wait();
    if (lanes != 32) fail("%s with %d of 32 lanes (the others exited or the warp is partial)", what, lanes);
    const Slot* all = w.slots[phase];
    for (int l = 0; l < 32; l++) {
        if (all[l].kind != mine.kind) fail("divergent warp: lane %d at %s, lane %d at another collective", self.lane,
                                           what, l);
        if (all[l].mask != 0xffffffffu) fail("%s with mask 0x%08x: only full-warp masks are supported", what,
                                             all[l].mask);
    }
    return all;
}

void cp_async_complete(std::vector<ThreadState::Copy>& group) {
    for (const ThreadState::Copy& c : group) {
        if (c.bytes > 0) std::memcpy(c.dst, c.src, (size_t)c.bytes);
        std::memset((char*)c.dst + c.bytes, 0, 16 - (size_t)c.bytes);
    }
}

void register_kernel(const Kernel& k) { registry()[k.name] = k; }

void* dynamic_shared() { return g_dynamic; }

namespace {

// The watchdog, for the server's lifetime: a launch during which no barrier completes for the timeout has
// threads waiting for each other forever.
std::atomic<bool> running{false};

void watchdog() {
    const auto limit = deadlock_timeout();
    auto last = progress.load();
    auto since = std::chrono::steady_clock::now();
    for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const auto now = progress.load();
        if (now != last || !running.load()) {
            last = now;
            since = std::chrono::steady_clock::now();
        } else if (std::chrono::steady_clock::now() - since > limit) {
            fail("deadlock: no barrier or warp collective completed for %lld s (threads at different barriers, or "
                 "a collective some lanes never reach)",
                 (long long)limit.count());
        }
    }
}

// The host threads that play CUDA threads, kept for the server's lifetime: creating a block's worth of threads
// per launch (under AddressSanitizer) cost more than most simulated kernels.
class Pool {
public:
    // Runs job(0) .. job(n - 1) on n pool threads and waits for all of them.
    void run(unsigned n, const std::function<void(unsigned)>& job) {
        {
            std::unique_lock<std::mutex> l(m_);
            while (workers_.size() < n) {
                const unsigned id = (unsigned)workers_.size();
                workers_.emplace_back([this, id] { work(id); });
            }
            job_ = &job;
            active_ = n;
            remaining_ = n;
            generation_++;
        }
        start_.notify_all();
        std::unique_lock<std::mutex> l(m_);
        done_.wait(l, [&] { return remaining_ == 0; });
        job_ = nullptr;
    }

private:
    void work(unsigned id) {
        unsigned long seen = 0;
        std::unique_lock<std::mutex> l(m_);
        for (;;) {
            start_.wait(l, [&] { return generation_ != seen; });
            seen = generation_;
            if (id >= active_) continue;
            const std::function<void(unsigned)>* job = job_;
            l.unlock();
            (*job)(id);
            l.lock();
            if (--remaining_ == 0) done_.notify_one();
        }
    }
    std::mutex m_;
    std::condition_variable start_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned active_ = 0, remaining_ = 0;
    unsigned long generation_ = 0;
};

Pool& pool() {
    // Never destroyed: its threads wait for work until the process exits.
    static Pool* p = new Pool();
    return *p;
}

// Runs every block of one launch. Threads persist across the blocks; blocks run one at a time because __shared__
// arrays are statics.
void run_launch(const Kernel& k, dim3 grid, dim3 block, size_t dynamic_bytes, void** args) {
    const unsigned threads = block.x * block.y * block.z;
    const unsigned warps = (threads + 31) / 32;
    std::vector<Warp> warp(warps);
    Barrier blk, launch;
    block_barrier = &blk;
    g_kernel = k.name;
    launch.reset((int)threads);
    g_dynamic_bytes = dynamic_bytes;
    // Exact size (at least one byte), so AddressSanitizer sees an access past the requested amount.
    g_dynamic = std::aligned_alloc(16, ((dynamic_bytes ? dynamic_bytes : 1) + 15) / 16 * 16);
    if (g_dynamic == nullptr) fail("out of host memory for %zu bytes of dynamic shared memory", dynamic_bytes);

    auto prepare_block = [&] {
        blk.reset((int)threads);
        for (unsigned w = 0; w < warps; w++) {
            const int lanes = (int)std::min(32u, threads - 32 * w);
            warp[w].barrier.reset(lanes);
        }
        // NaN in every f16 and f32 position: a kernel that reads shared memory it never wrote sees poison.
        std::memset(g_dynamic, 0xff, dynamic_bytes);
    };
    prepare_block();

    std::function<void(unsigned)> body = [&](unsigned tid) {
        threadIdx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
        blockDim = block;
        gridDim = grid;
        self.lane = (int)(tid % 32);
        self.warp = &warp[tid / 32];
        for (unsigned bz = 0; bz < grid.z; bz++)
            for (unsigned by = 0; by < grid.y; by++)
                for (unsigned bx = 0; bx < grid.x; bx++) {
                    blockIdx = uint3{bx, by, bz};
                    self.phase = 0;
                    self.open.clear();
                    self.groups.clear();
                    k.call(k.fn, args);
                    if (!self.open.empty() || !self.groups.empty())
                        fail("thread exited with cp.async copies it never waited for");
                    // This thread has left the block: nobody waits for it any more.
                    self.warp->barrier.drop();
                    blk.drop();
                    launch.wait();
                    if (tid == 0) prepare_block();
                    launch.wait();
                }
    };
    running.store(true);
    pool().run(threads, body);
    running.store(false);
    std::free(g_dynamic);
    g_dynamic = nullptr;
    block_barrier = nullptr;
}

// ---- protocol ----

void read_exact(void* p, size_t n) {
    if (n > 0 && std::fread(p, 1, n, stdin) != n) {
        // The client closed the pipe: a normal shutdown when it happens between requests.
        std::exit(0);
    }
}
template <typename T>
T get() {
    T v;
    read_exact(&v, sizeof v);
    return v;
}
void put(const void* p, size_t n) { std::fwrite(p, 1, n, stdout); }
template <typename T>
void put(T v) {
    put(&v, sizeof v);
}
void reply(bool ok, const std::string& msg) {
    put<uint8_t>(ok ? 0 : 1);
    put<uint32_t>((uint32_t)msg.size());
    put(msg.data(), msg.size());
    std::fflush(stdout);
}

std::map<uintptr_t, size_t> g_allocs;
std::map<std::string, uint32_t> g_smem_limit;

// The allocation that holds [ptr + offset, ptr + offset + len), or a fatal error.
char* region(uint64_t ptr, uint64_t offset, uint64_t len, const char* what) {
    auto it = g_allocs.find((uintptr_t)ptr);
    if (it == g_allocs.end()) fail("%s: 0x%llx is not a device allocation", what, (unsigned long long)ptr);
    if (offset > it->second || len > it->second - offset)
        fail("%s: bytes [%llu, %llu) outside an allocation of %zu", what, (unsigned long long)offset,
             (unsigned long long)(offset + len), it->second);
    return (char*)ptr + offset;
}

std::string name_arg() {
    const uint16_t n = get<uint16_t>();
    std::string s(n, '\0');
    read_exact(s.data(), n);
    return s;
}

void launch_request() {
    const std::string name = name_arg();
    uint32_t g[3], b[3];
    for (uint32_t& v : g) v = get<uint32_t>();
    for (uint32_t& v : b) v = get<uint32_t>();
    const uint32_t smem = get<uint32_t>();
    const uint32_t count = get<uint32_t>();
    if (count > 64) fail("launch of %s with %u arguments", name.c_str(), count);
    std::vector<uint64_t> bits(count);
    std::string kinds;
    for (uint32_t i = 0; i < count; i++) {
        kinds.push_back((char)get<uint8_t>());
        bits[i] = get<uint64_t>();
    }
    auto it = registry().find(name);
    if (it == registry().end()) return reply(false, "no kernel named " + name);
    const Kernel& k = it->second;
    if (kinds != k.signature)
        return reply(false, name + " takes arguments (" + k.signature + "), the launch passed (" + kinds + ")");
    const uint64_t threads = (uint64_t)b[0] * b[1] * b[2];
    if (threads == 0 || threads > 1024 || b[2] > 64) return reply(false, name + ": invalid block dimensions");
    if (g[0] == 0 || g[1] == 0 || g[2] == 0 || g[1] > 65535 || g[2] > 65535)
        return reply(false, name + ": invalid grid dimensions");
    const uint32_t limit = g_smem_limit.count(name) ? g_smem_limit[name] : 48 * 1024;
    if (smem > limit)
        return reply(false, name + ": " + std::to_string(smem) + " bytes of dynamic shared memory exceed its limit of " +
                                std::to_string(limit) + " (CUDA_ERROR_INVALID_VALUE)");
    std::vector<void*> args(count);
    for (uint32_t i = 0; i < count; i++) args[i] = &bits[i];  // little-endian: an int or float is the low bytes
    run_launch(k, dim3{g[0], g[1], g[2]}, dim3{b[0], b[1], b[2]}, smem, args.data());
    reply(true, "");
}

}  // namespace
}  // namespace sim

int main() {
    using namespace sim;
    std::thread(watchdog).detach();
    for (;;) {
        const uint8_t op = get<uint8_t>();
        switch (op) {
            case 'A': {
                const uint64_t bytes = get<uint64_t>();
                void* p = nullptr;
                // Exact size for AddressSanitizer; 256-byte alignment like device allocations.
                if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) p = nullptr;
                if (p) g_allocs[(uintptr_t)p] = bytes;
                put<uint64_t>((uint64_t)(uintptr_t)p);
                std::fflush(stdout);
                break;
            }
            case 'F': {
                const uint64_t ptr = get<uint64_t>();
                region(ptr, 0, 0, "free");
                g_allocs.erase((uintptr_t)ptr);
                std::free((void*)(uintptr_t)ptr);
                break;
            }
            case 'W': {
                const uint64_t ptr = get<uint64_t>(), off = get<uint64_t>(), len = get<uint64_t>();
                read_exact(region(ptr, off, len, "write"), len);
                break;
            }
            case 'R': {
                const uint64_t ptr = get<uint64_t>(), off = get<uint64_t>(), len = get<uint64_t>();
                put(region(ptr, off, len, "read"), len);
                std::fflush(stdout);
                break;
            }
            case 'M': {
                const std::string name = name_arg();
                const uint32_t bytes = get<uint32_t>();
                if (!registry().count(name)) {
                    reply(false, "no kernel named " + name);
                } else if (bytes > 227 * 1024) {
                    reply(false, name + ": " + std::to_string(bytes) + " bytes exceed the 227 KiB per block");
                } else {
                    g_smem_limit[name] = bytes;
                    reply(true, "");
                }
                break;
            }
            case 'L':
                launch_request();
                break;
            case 'S':
                put<uint64_t>(ldmatrix_matrices.load());
                put<uint64_t>(ldmatrix_extra_wavefronts.load());
                std::fflush(stdout);
                break;
            default:
                fail("malformed request (op byte 0x%02x)", op);
        }
    }
}
