// A team of threads that runs one body concurrently, with a spin barrier: the persistent
// parallel region of the CPU time-loop engine (Note [CPU time-loop engine]).
//
// Note [Thread team]
// run_team(want, body) calls body(tid, n, barrier) once on each of n threads at the same
// time, 1 <= n <= want, tid = 0..n-1, and returns when all have returned. The threads are
// ATen's own intra-op pool (torch's OpenMP runtime: fusedrnn._C is built with -fopenmp and
// its libgomp.so.1 resolves to the copy torch already loaded, so there is one pool and no
// oversubscription). n is what the runtime actually gives, never assumed: inside another
// parallel region (an outer at::parallel_for or OpenMP region), in a build without OpenMP,
// or with one intra-op thread, n == 1 and the body runs on the caller alone, so the body's
// barriers never wait for a thread that does not exist.
//
// Rules for bodies:
//   - never throw (a throwing thread would leave the others waiting at the barrier forever);
//     check everything before run_team;
//   - results must not depend on n (partition work so that every output element is computed
//     by the same arithmetic in the same order whatever the split): this is what makes the
//     engine bitwise deterministic for any thread count;
//   - ATen's parallel functions called inside run serially (the body counts as a parallel
//     region, as in at::parallel_for).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace cpu {

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A reusable barrier for n threads that spins (a step of the time loop takes microseconds;
// sleeping would cost more than the step), yielding the core after a while so that an
// oversubscribed machine still makes progress.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  SpinBarrier(const SpinBarrier&) = delete;
  SpinBarrier& operator=(const SpinBarrier&) = delete;

  int size() const { return n_; }

  // Every write made by any thread before wait() is visible to every thread after it.
  void wait() {
    if (n_ <= 1) return;
    const unsigned gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(gen + 1, std::memory_order_release);
      return;
    }
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == gen) {
      if (++spins < kSpinsBeforeYield) {
        spin_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  // A pause is 10-140 cycles depending on the core: 2048 of them bound a wait that is not
  // going to end soon (another thread descheduled) to well under a millisecond.
  static constexpr int kSpinsBeforeYield = 1 << 11;
  const int n_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> generation_{0};
};

// How many threads a team would get at most (at::get_num_threads(), 1 inside a parallel
// region).
inline int team_capacity() {
  if (at::in_parallel_region()) return 1;
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  return std::max(1, at::get_num_threads());
#else
  return 1;
#endif
}

// See Note [Thread team]. body: void(int tid, int n, SpinBarrier& barrier).
template <class Body>
void run_team(int want, const Body& body) {
  want = std::max(1, std::min(want, team_capacity()));
  if (want == 1) {
    SpinBarrier single(1);
    c10::ParallelGuard guard(true);
    body(0, 1, single);
    return;
  }
#ifdef _OPENMP
  // The team size is fixed once inside the region (the runtime may give fewer threads than
  // asked); the barrier is built for that size before any thread uses it.
  alignas(64) std::atomic<int> size{0};
  alignas(64) unsigned char storage[sizeof(SpinBarrier)];
  SpinBarrier* barrier = nullptr;
  // No num_threads clause: like at::parallel_for (ATen's invoke_parallel), the region takes
  // the pool's size, and extra threads simply skip the body.
#pragma omp parallel
  {
#pragma omp single
    {
      const int n = std::min(want, omp_get_num_threads());
      barrier = new (storage) SpinBarrier(n);
      size.store(n, std::memory_order_release);
    }  // implicit barrier: every thread sees `barrier` and `size`
    const int n = size.load(std::memory_order_acquire);
    const int tid = omp_get_thread_num();
    if (tid < n) {
      at::internal::ThreadIdGuard tid_guard(tid);
      c10::ParallelGuard guard(true);
      body(tid, n, *barrier);
    }
  }
  barrier->~SpinBarrier();
#endif
}

// The slice [begin, end) of `units` items that thread tid of n owns, in chunks of `align`
// items (the last chunk may be short), as evenly as chunks allow.
inline void team_slice(int64_t units, int64_t align, int tid, int n, int64_t* begin,
                       int64_t* end) {
  const int64_t chunks = (units + align - 1) / align;
  const int64_t lo = chunks * tid / n, hi = chunks * (tid + 1) / n;
  *begin = std::min(units, lo * align);
  *end = std::min(units, hi * align);
}

}  // namespace cpu
}  // namespace fusedrnn
