// cuda_emu.h: the subset of CUDA that fir's generated kernels use, emulated on the host (C++17), so that every
// generated translation unit can be compiled with g++ and run on a CPU in tests (tests/cuda_emulator.py).
//
// A launch runs its blocks one at a time; the threads of a block are fibers (cooperative, never preempted):
// each runs until it reaches a barrier or returns. Barriers are checked, not just yielded at:
//  * __syncthreads() releases only when every live thread of the block waits at a block barrier; a thread
//    that exits while others wait there, or a barrier reached after some threads exited, aborts;
//  * __syncwarp(), the warp shuffles and the WMMA *_sync calls synchronise only the lanes of their warp (warps
//    are 32 consecutive linear thread ids, x fastest, then y, then z) named by the mask; lanes of one warp
//    waiting at different kinds of warp barrier, a lane exiting while its warp waits, or a mask naming lanes
//    that do not exist abort;
//  * when no thread can run and some have not finished, the launch deadlocked: abort, saying where each waits.
// Shuffles exchange values through per-warp slots: write, warp barrier, read, warp barrier.
// WMMA fragments are 16x16x16 f16/bf16 -> f32. Accumulators are spread over the lanes as on sm_80 tensor cores
// (lane L holds rows L/4 and L/4 + 8, columns 2(L%4) + {0, 1, 8, 9}), and a lane loads only the rows of A and the
// columns of B its elements need: a lane that skips a WMMA call leaves its part of the result unwritten, and
// reading a tile that other lanes stored needs a __syncwarp, as on a GPU.
// Dynamic shared memory (rewritten by the driver to `T* const name = (T*)emu_dynamic_smem;`) is a per-launch
// buffer of exactly the launch's bytes, filled with 0xFF before each block. Static __shared__ arrays are
// function-local statics: they persist between blocks (and start zeroed).
// Errors print "cuda_emu: ..." on stderr and exit with status 86.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#define EMU_ASAN_START(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_ASAN_FINISH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define EMU_ASAN 0
#define EMU_ASAN_START(save, bottom, size) ((void)0)
#define EMU_ASAN_FINISH(save, bottom, size) ((void)0)
#endif

// Fibers switch through a few lines of assembly on x86-64, through ucontext elsewhere (or with -DEMU_UCONTEXT).
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

// ----------------------------------------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

// ----------------------------------------------------------------------------------------------- errors
[[noreturn]] inline void emu_fail(const char* fmt, ...) {
  fflush(stdout);
  va_list ap;
  va_start(ap, fmt);
  fputs("cuda_emu: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  _exit(86);
}

// ----------------------------------------------------------------------------------------------- builtins
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// External linkage: a fiber switch is an opaque call, so kernels reload these after every barrier.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

struct float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ----------------------------------------------------------------------------------------------- half / bf16
inline uint32_t emu_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float emu_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// float -> binary16, round to nearest even, subnormals and overflow exact; NaN -> 0x7fff as CUDA does.
inline uint16_t emu_float_to_half_bits(float f) {
  uint32_t x = emu_f2u(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return 0x7fffu;
  if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 (or inf): rounds to infinity
  if (x >= 0x38800000u) {                                     // a normal half (>= 2^-14)
    uint32_t h = ((((x >> 23) - 127 + 15) << 10) | ((x & 0x7fffffu) >> 13));
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  if (x < 0x33000000u) return (uint16_t)sign;  // below 2^-25: zero (2^-25 itself ties to even: zero too)
  int e = (int)(x >> 23) - 127;                 // -25 .. -15
  uint32_t mant = (x & 0x7fffffu) | 0x800000u;
  int s = -(e + 1);                             // value / 2^-24 = mant >> s
  uint32_t h = mant >> s, rem = mant & ((1u << s) - 1), half = 1u << (s - 1);
  if (rem > half || (rem == half && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

inline float emu_half_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return emu_u2f(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    float v = (float)m * 5.9604644775390625e-08f;  // m * 2^-24, exact
    return sign ? -v : v;
  }
  return emu_u2f(sign | ((e - 15 + 127) << 23) | (m << 13));
}

// float -> bfloat16, round to nearest even; NaN -> 0x7fff as CUDA does.
inline uint16_t emu_float_to_bf16_bits(float f) {
  uint32_t u = emu_f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float emu_bf16_bits_to_float(uint16_t b) { return emu_u2f((uint32_t)b << 16); }

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(emu_float_to_half_bits(f)) {}
  operator float() const { return emu_half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(emu_float_to_bf16_bits(f)) {}
  operator float() const { return emu_bf16_bits_to_float(__x); }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage types");

inline __half __float2half_rn(float f) { __half h; h.__x = emu_float_to_half_bits(f); return h; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return emu_half_bits_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { __nv_bfloat16 b; b.__x = emu_float_to_bf16_bits(f); return b; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu_bf16_bits_to_float(b.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }

// ----------------------------------------------------------------------------------------------- math
using std::isfinite;
using std::isinf;
using std::isnan;
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double d) { long long x; memcpy(&x, &d, 8); return x; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ----------------------------------------------------------------------------------------------- atomics
// Fibers are never preempted: a read-modify-write is atomic as written.
inline int atomicCAS(int* p, int cmp, int v) { int old = *p; if (old == cmp) *p = v; return old; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { unsigned old = *p; if (old == cmp) *p = v; return old; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  unsigned long long old = *p; if (old == cmp) *p = v; return old; }
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T> inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <typename T> inline T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }

// ----------------------------------------------------------------------------------------------- fibers
#if EMU_ASM_SWITCH
// emu_switch(save, to): push the callee-saved registers (and the SSE / x87 control words) on the current stack,
// store its pointer in *save, and resume the context whose stack pointer is `to`. No system call, unlike
// swapcontext (which saves the signal mask), so a barrier costs nanoseconds.
asm(R"(
  .text
  .weak emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");
extern "C" void emu_switch(void** save, void* to);
#endif

namespace emu {

enum State { READY, WAIT_BLOCK, WAIT_WARP, DONE };
enum WarpKind { W_NONE, W_SYNCWARP, W_SHFL_WRITE, W_SHFL_READ, W_WMMA_LOAD, W_WMMA_MMA, W_WMMA_STORE };
inline const char* warp_kind_name(int k) {
  static const char* names[] = {"-", "__syncwarp", "a shuffle (write)", "a shuffle (read)",
                                "wmma::load_matrix_sync", "wmma::mma_sync", "wmma::store_matrix_sync"};
  return names[k];
}

struct Thread {
  void* sp;
  char* stack;
  uint3 idx;
  int state;
  int wkind;
  unsigned wmask;
  void* fake_stack;
#if !EMU_ASM_SWITCH
  ucontext_t ctx;
#endif
};

constexpr size_t STACK_BYTES = 256 * 1024;  // per fiber (ASan's redzones make frames larger)
constexpr size_t GUARD_BYTES = 4096;        // an inaccessible page below each stack catches overflows
constexpr int MAX_THREADS = 1024;

inline std::vector<Thread> threads;
inline char* stack_arena;
inline int nthreads, cur = -1, live, waiting_block, exited;
inline void* sched_sp;
inline void* sched_fake;
inline const void* main_bottom;
inline size_t main_size;
inline unsigned warp_arrived[32];
inline int warp_kind[32];
inline unsigned warp_mask[32];
inline unsigned long long shfl_slot[32][32];
inline void (*entry)(void**);
inline void** entry_args;
inline const char* kernel_name = "?";
#if !EMU_ASM_SWITCH
inline ucontext_t sched_ctx;
#endif

inline const char* state_name(const Thread& t) {
  switch (t.state) {
    case READY: return "runnable";
    case WAIT_BLOCK: return "at __syncthreads";
    case WAIT_WARP: return warp_kind_name(t.wkind);
    default: return "exited";
  }
}

[[noreturn]] inline void fail_in_block(const char* what) {
  emu_fail("kernel %s, block (%u, %u, %u): %s", kernel_name, blockIdx.x, blockIdx.y, blockIdx.z, what);
}

extern "C" [[noreturn]] inline void fiber_entry() {
  EMU_ASAN_FINISH(nullptr, &main_bottom, &main_size);
  entry(entry_args);
  Thread& t = threads[cur];
  t.state = DONE;
  EMU_ASAN_START(nullptr, main_bottom, main_size);
#if EMU_ASM_SWITCH
  void* dead;
  emu_switch(&dead, sched_sp);
#else
  setcontext(&sched_ctx);
#endif
  __builtin_unreachable();
}

// The running fiber waits (its state says at what) and the scheduler runs.
inline void yield() {
  Thread& t = threads[cur];
  EMU_ASAN_START(&t.fake_stack, main_bottom, main_size);
#if EMU_ASM_SWITCH
  emu_switch(&t.sp, sched_sp);
#else
  swapcontext(&t.ctx, &sched_ctx);
#endif
  EMU_ASAN_FINISH(t.fake_stack, &main_bottom, &main_size);
}

inline void resume(int i) {
  Thread& t = threads[i];
  cur = i;
  threadIdx = t.idx;
  EMU_ASAN_START(&sched_fake, t.stack, STACK_BYTES);
#if EMU_ASM_SWITCH
  emu_switch(&sched_sp, t.sp);
#else
  swapcontext(&sched_ctx, &t.ctx);
#endif
  EMU_ASAN_FINISH(sched_fake, nullptr, nullptr);
  cur = -1;
}

inline void start_fiber(Thread& t) {
#if EMU_ASAN
  // The last run's fiber_entry frame never returned: its redzones are still poisoned near the top of the stack.
  __asan_unpoison_memory_region(t.stack + STACK_BYTES - 16384, 16384);
#endif
#if EMU_ASM_SWITCH
  // The frame emu_switch pops: control words, r15, r14, r13, r12, rbx, rbp, then `ret` into fiber_entry with
  // the stack aligned as after a call.
  uintptr_t top = ((uintptr_t)(t.stack + STACK_BYTES)) & ~(uintptr_t)15;
  void** sp = (void**)top;
  *--sp = nullptr;                       // fiber_entry's (never used) return address
  *--sp = (void*)&fiber_entry;           // where emu_switch's `ret` goes
  for (int r = 0; r < 6; r++) *--sp = nullptr;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  --sp;
  memcpy((char*)sp, &mxcsr, 4);
  memcpy((char*)sp + 4, &fpucw, 2);
  t.sp = sp;
#else
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = t.stack;
  t.ctx.uc_stack.ss_size = STACK_BYTES;
  t.ctx.uc_link = nullptr;
  makecontext(&t.ctx, (void (*)())fiber_entry, 0);
#endif
}

inline void ensure_stacks() {
  if (stack_arena) return;
  size_t per = STACK_BYTES + GUARD_BYTES;
  void* p = mmap(nullptr, per * MAX_THREADS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) emu_fail("cannot map %zu bytes of fiber stacks", per * MAX_THREADS);
  stack_arena = (char*)p;
  threads.resize(MAX_THREADS);
  for (int i = 0; i < MAX_THREADS; i++) {
    char* base = stack_arena + i * per;
    mprotect(base, GUARD_BYTES, PROT_NONE);
    threads[i].stack = base + GUARD_BYTES;
  }
}

inline int lane_of(int i) { return i & 31; }
inline int linear_id() { return cur; }
inline unsigned lanes_present(int w) {
  int n = nthreads - 32 * w;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1);
}

// The current thread waits at a warp barrier of `kind` with `mask`.
inline void warp_barrier(int kind, unsigned mask) {
  int i = cur, w = i >> 5, lane = i & 31;
  char msg[256];
  if (!((mask >> lane) & 1u)) {
    snprintf(msg, sizeof msg, "thread %d calls %s with mask 0x%08x, which leaves out its own lane %d", i,
             warp_kind_name(kind), mask, lane);
    fail_in_block(msg);
  }
  if (mask & ~lanes_present(w)) {
    snprintf(msg, sizeof msg, "thread %d calls %s with mask 0x%08x, naming lanes beyond the block's %d threads", i,
             warp_kind_name(kind), mask, nthreads);
    fail_in_block(msg);
  }
  for (unsigned m = mask; m; m &= m - 1) {
    int j = 32 * w + __builtin_ctz(m);
    if (threads[j].state == DONE) {
      snprintf(msg, sizeof msg, "thread %d waits at %s for thread %d, which has exited", i, warp_kind_name(kind), j);
      fail_in_block(msg);
    }
  }
  if (warp_arrived[w] == 0) {
    warp_kind[w] = kind;
    warp_mask[w] = mask;
  } else if (warp_kind[w] != kind || warp_mask[w] != mask) {
    int first = 32 * w + __builtin_ctz(warp_arrived[w]);
    snprintf(msg, sizeof msg, "divergent warp barrier: thread %d waits at %s (mask 0x%08x), thread %d at %s (mask 0x%08x)",
             first, warp_kind_name(warp_kind[w]), warp_mask[w], i, warp_kind_name(kind), mask);
    fail_in_block(msg);
  }
  threads[i].state = WAIT_WARP;
  threads[i].wkind = kind;
  threads[i].wmask = mask;
  warp_arrived[w] |= 1u << lane;
  if (warp_arrived[w] == mask) {  // the last lane arrived: all go on (this one without switching)
    for (unsigned m = mask; m; m &= m - 1) threads[32 * w + __builtin_ctz(m)].state = READY;
    warp_arrived[w] = 0;
    return;
  }
  yield();
}

[[noreturn]] inline void deadlock() {
  std::string s = "deadlock: no thread can run, yet not all have exited;";
  int shown = 0;
  for (int i = 0; i < nthreads; i++) {
    if (threads[i].state == DONE) continue;
    if (shown++ == 8) { s += " ..."; break; }
    s += " thread " + std::to_string(i) + " (warp " + std::to_string(i / 32) + ") " + state_name(threads[i]) + ";";
  }
  s += " " + std::to_string(waiting_block) + " wait at __syncthreads, " + std::to_string(exited) + " exited";
  fail_in_block(s.c_str());
}

// Run one block to completion.
inline void run_block() {
  live = nthreads;
  waiting_block = 0;
  exited = 0;
  memset(warp_arrived, 0, sizeof warp_arrived);
  for (int i = 0; i < nthreads; i++) {
    threads[i].state = READY;
    threads[i].wkind = W_NONE;
    start_fiber(threads[i]);
  }
  char msg[256];
  while (live > 0) {
    bool ran = false;
    for (int i = 0; i < nthreads; i++) {
      if (threads[i].state != READY) continue;
      ran = true;
      resume(i);
      Thread& t = threads[i];
      if (t.state == DONE) {
        live--;
        exited++;
        if (waiting_block > 0) {
          snprintf(msg, sizeof msg, "divergent __syncthreads: thread %d exited while %d thread(s) wait at __syncthreads",
                   i, waiting_block);
          fail_in_block(msg);
        }
        int w = i >> 5;
        if (warp_arrived[w] && ((warp_mask[w] >> (i & 31)) & 1u)) {
          snprintf(msg, sizeof msg, "thread %d exited while lanes of its warp wait for it at %s", i,
                   warp_kind_name(warp_kind[w]));
          fail_in_block(msg);
        }
      } else if (t.state == WAIT_BLOCK) {
        if (exited > 0) {
          snprintf(msg, sizeof msg, "divergent __syncthreads: thread %d waits at __syncthreads after %d thread(s) "
                   "of the block exited", i, exited);
          fail_in_block(msg);
        }
        if (++waiting_block == live) {
          for (int j = 0; j < nthreads; j++)
            if (threads[j].state == WAIT_BLOCK) threads[j].state = READY;
          waiting_block = 0;
        }
      }
    }
    if (!ran && live > 0) deadlock();
  }
}

}  // namespace emu

// ----------------------------------------------------------------------------------------------- barriers
inline void __syncthreads() {
  emu::threads[emu::cur].state = emu::WAIT_BLOCK;
  emu::yield();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(emu::W_SYNCWARP, mask); }

template <typename T> inline unsigned long long emu_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffled values are at most 64 bits");
  unsigned long long b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T> inline T emu_from_bits(unsigned long long b) { T v; memcpy(&v, &b, sizeof(T)); return v; }

// Every lane of the mask publishes v, then reads the lane src_of(lane) (its own value when that is -1).
template <typename T, typename F> inline T emu_shuffle(unsigned mask, T v, F src_of) {
  int i = emu::cur, w = i >> 5, lane = i & 31;
  emu::shfl_slot[w][lane] = emu_bits(v);
  emu::warp_barrier(emu::W_SHFL_WRITE, mask);
  int src = src_of(lane);
  T out = v;
  if (src >= 0) {
    if (!((mask >> src) & 1u))
      emu::fail_in_block(("a shuffle in thread " + std::to_string(i) + " reads lane " + std::to_string(src) +
                          ", which is not in its mask").c_str());
    out = emu_from_bits<T>(emu::shfl_slot[w][src]);
  }
  emu::warp_barrier(emu::W_SHFL_READ, mask);
  return out;
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu_shuffle(mask, v, [=](int lane) {
    int src = lane ^ lane_mask;
    return (src / width == lane / width) ? src : lane;  // outside the lane's segment: its own value
  });
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu_shuffle(mask, v, [=](int lane) {
    int src = lane + (int)delta;
    return (src / width == lane / width && src < 32) ? src : -1;
  });
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu_shuffle(mask, v, [=](int lane) {
    int src = lane - (int)delta;
    return (src >= 0 && src / width == lane / width) ? src : -1;
  });
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return emu_shuffle(mask, v, [=](int lane) { return (lane / width) * width + ((src_lane % width + width) % width); });
}

// ----------------------------------------------------------------------------------------------- WMMA
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda_emu emulates 16x16x16 WMMA fragments only");
};
// A and B: the whole 16x16 tile as float (a lane loads only the rows / the column its accumulator elements use).
template <typename T, typename L> struct fragment<matrix_a, 16, 16, 16, T, L> {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "f16 / bf16 operands");
  float m[16][16];
};
template <typename T, typename L> struct fragment<matrix_b, 16, 16, 16, T, L> {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "f16 / bf16 operands");
  float m[16][16];
};
// The accumulator: this lane's 8 elements (acc_row / acc_col say where each is in the 16x16 tile).
template <> struct fragment<accumulator, 16, 16, 16, float, void> {
  static constexpr int num_elements = 8;
  float x[8];
};

inline void check_ptr(const char* fn, const void* p, unsigned ldm, size_t elem) {
  char msg[200];
  if ((uintptr_t)p % 32 != 0) {
    snprintf(msg, sizeof msg, "thread %d: %s pointer %p is not 256-bit (32-byte) aligned", emu::cur, fn, p);
    emu::fail_in_block(msg);
  }
  if ((ldm * elem) % 16 != 0) {
    snprintf(msg, sizeof msg, "thread %d: %s ldm %u is not a multiple of 16 bytes (%zu elements)", emu::cur, fn, ldm,
             16 / elem);
    emu::fail_in_block(msg);
  }
}

inline int lane() { return emu::cur & 31; }
// The sm_80 m16n8k16 accumulator layout, twice along n: element k of lane L.
inline int acc_row(int l, int k) { return l / 4 + 8 * ((k >> 1) & 1); }
inline int acc_col(int l, int k) { return 2 * (l % 4) + (k & 1) + 8 * (k >> 2); }
inline float as_float(__half h) { return __half2float(h); }
inline float as_float(__nv_bfloat16 b) { return __bfloat162float(b); }

template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  emu::warp_barrier(emu::W_WMMA_LOAD, 0xffffffffu);
  check_ptr("wmma::load_matrix_sync (matrix_a)", p, ldm, sizeof(T));
  constexpr bool col = std::is_same<L, col_major>::value;
  for (int r = lane() / 4; r < 16; r += 8)  // the rows of this lane's accumulator elements
    for (int k = 0; k < 16; k++) f.m[r][k] = as_float(col ? p[k * ldm + r] : p[r * ldm + k]);
}
template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  emu::warp_barrier(emu::W_WMMA_LOAD, 0xffffffffu);
  check_ptr("wmma::load_matrix_sync (matrix_b)", p, ldm, sizeof(T));
  constexpr bool col = std::is_same<L, col_major>::value;
  for (int j = 0; j < 4; j++) {  // the columns of this lane's accumulator elements
    int c = 2 * (lane() % 4) + (j & 1) + 8 * (j >> 1);
    for (int k = 0; k < 16; k++) f.m[k][c] = as_float(col ? p[c * ldm + k] : p[k * ldm + c]);
  }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  emu::warp_barrier(emu::W_WMMA_LOAD, 0xffffffffu);
  check_ptr("wmma::load_matrix_sync (accumulator)", p, ldm, sizeof(float));
  for (int k = 0; k < 8; k++) {
    int r = acc_row(lane(), k), c = acc_col(lane(), k);
    f.x[k] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}
template <typename T> inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, T v) {
  for (float& e : f.x) e = (float)v;
}
template <typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  static_assert(std::is_same<TA, TB>::value, "A and B of one mma_sync have one element type");
  emu::warp_barrier(emu::W_WMMA_MMA, 0xffffffffu);
  for (int k = 0; k < 8; k++) {
    int r = acc_row(lane(), k), col = acc_col(lane(), k);
    float s = c.x[k];
    for (int kk = 0; kk < 16; kk++) s += a.m[r][kk] * b.m[kk][col];  // f16/bf16 products are exact in float
    d.x[k] = s;
  }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  emu::warp_barrier(emu::W_WMMA_STORE, 0xffffffffu);
  check_ptr("wmma::store_matrix_sync", p, ldm, sizeof(float));
  for (int k = 0; k < 8; k++) {
    int r = acc_row(lane(), k), c = acc_col(lane(), k);
    p[l == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[k];
  }
}
}  // namespace wmma
}  // namespace nvcuda

// ----------------------------------------------------------------------------------------------- dynamic smem
inline char* emu_dynamic_smem;

// ----------------------------------------------------------------------------------------------- launches
namespace emu {

struct KernelEntry {
  const char* name;
  void (*thunk)(void**);
  int nparams;
};

// Launch `k` on `grid` x `block` with `smem` dynamic shared bytes; args point at its buffers (out first).
inline void launch(const KernelEntry& k, dim3 grid, dim3 block, size_t smem, void** args) {
  ensure_stacks();
  size_t n = (size_t)block.x * block.y * block.z;
  if (n == 0 || n > (size_t)MAX_THREADS || block.z > 64) emu_fail("kernel %s: bad block (%u, %u, %u)", k.name, block.x, block.y, block.z);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    emu_fail("kernel %s: bad grid (%u, %u, %u)", k.name, grid.x, grid.y, grid.z);
  kernel_name = k.name;
  entry = k.thunk;
  entry_args = args;
  nthreads = (int)n;
  for (int i = 0; i < nthreads; i++) {
    threads[i].idx = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y), (unsigned)(i / (block.x * block.y))};
  }
  void* dyn = nullptr;
  if (posix_memalign(&dyn, 128, smem ? smem : 1)) emu_fail("out of memory for %zu bytes of shared memory", smem);
  emu_dynamic_smem = (char*)dyn;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        blockIdx = {x, y, z};
        memset(dyn, 0xff, smem);
        run_block();
      }
  free(dyn);
  emu_dynamic_smem = nullptr;
}

// ----------------------------------------------------------------------------------------------- job runner
// argv: JOBFILE FIRST_JOB. Each line of JOBFILE: kernel gx gy gz bx by bz smem bound nbufs, then per buffer
// "nbytes path" (the first is the output: zero-filled, written to path afterwards; inputs are read from path).
// Prints "@@start i" before and "@@done i STATUS" after each job on stdout.
constexpr size_t CANARY = 256;

inline int run_jobs(int argc, char** argv, const KernelEntry* table, int ntable, int* status) {
  if (argc < 2) emu_fail("usage: %s JOBFILE [FIRST_JOB]", argv[0]);
  int first = argc > 2 ? atoi(argv[2]) : 0;
  FILE* jf = fopen(argv[1], "r");
  if (!jf) emu_fail("cannot open %s", argv[1]);
  char name[512];
  int job = -1;
  while (fscanf(jf, "%511s", name) == 1) {
    job++;
    unsigned g[3], b[3];
    size_t smem, bound;
    int nbufs;
    if (fscanf(jf, "%u %u %u %u %u %u %zu %zu %d", &g[0], &g[1], &g[2], &b[0], &b[1], &b[2], &smem, &bound,
               &nbufs) != 9)
      emu_fail("bad job line %d", job);
    std::vector<size_t> sizes(nbufs);
    std::vector<std::string> paths(nbufs);
    for (int i = 0; i < nbufs; i++) {
      char path[4096];
      if (fscanf(jf, "%zu %4095s", &sizes[i], path) != 2) emu_fail("bad buffer in job %d", job);
      paths[i] = path;
    }
    if (job < first) continue;
    const KernelEntry* k = nullptr;
    for (int i = 0; i < ntable; i++)
      if (strcmp(table[i].name, name) == 0) k = &table[i];
    if (!k) emu_fail("job %d: no kernel %s in the program", job, name);
    if (k->nparams != nbufs) emu_fail("job %d: kernel %s takes %d buffers, given %d", job, name, k->nparams, nbufs);
    printf("@@start %d\n", job);
    fflush(stdout);
    if ((size_t)b[0] * b[1] * b[2] > bound)
      emu_fail("kernel %s: a block of %u x %u x %u threads exceeds its __launch_bounds__(%zu): the launch fails", name,
               b[0], b[1], b[2], bound);
    if (smem > 227 * 1024) emu_fail("kernel %s: %zu bytes of dynamic shared memory exceed 227 KiB", name, smem);
    // Each buffer exactly its size (ASan flags any access past it); without ASan, 0xA5 canaries on both sides
    // catch stray writes.
    std::vector<void*> blocks(nbufs), args(nbufs);
    for (int i = 0; i < nbufs; i++) {
      size_t pad = EMU_ASAN ? 0 : CANARY;
      void* p = nullptr;
      if (posix_memalign(&p, 256, sizes[i] + 2 * pad + (sizes[i] || pad ? 0 : 1))) emu_fail("out of memory");
      blocks[i] = p;
      char* data = (char*)p + pad;
      args[i] = data;
      memset(p, 0xa5, pad);
      memset(data + sizes[i], 0xa5, pad);
      if (i == 0) {
        memset(data, 0, sizes[i]);
      } else if (sizes[i]) {
        FILE* f = fopen(paths[i].c_str(), "rb");
        if (!f || fread(data, 1, sizes[i], f) != sizes[i]) emu_fail("job %d: cannot read %s", job, paths[i].c_str());
        fclose(f);
      }
    }
    *status = 0;
    launch(*k, dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), smem, args.data());
    for (int i = 0; i < nbufs && !EMU_ASAN; i++) {
      const unsigned char* lo = (const unsigned char*)blocks[i];
      const unsigned char* hi = (const unsigned char*)args[i] + sizes[i];
      for (size_t j = 0; j < CANARY; j++)
        if (lo[j] != 0xa5 || hi[j] != 0xa5)
          emu_fail("kernel %s wrote outside buffer %d (%zu bytes): %zu bytes %s it", name, i, sizes[i],
                   lo[j] != 0xa5 ? CANARY - j : j + 1, lo[j] != 0xa5 ? "before" : "past");
    }
    FILE* f = fopen(paths[0].c_str(), "wb");
    if (!f || fwrite(args[0], 1, sizes[0], f) != sizes[0]) emu_fail("job %d: cannot write %s", job, paths[0].c_str());
    fclose(f);
    for (void* p : blocks) free(p);
    printf("@@done %d %d\n", job, *status);
    fflush(stdout);
  }
  fclose(jf);
  return 0;
}

}  // namespace emu
