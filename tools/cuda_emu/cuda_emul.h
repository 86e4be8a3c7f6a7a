// Host emulation of the few CUDA features the fusedrnn kernels use: a developer tool, not a
// GPU model (see tools/cuda_emu/README.md). Force-included (-include) before every source of
// the emulated build by tools/cuda_emu/build.py.
//
// Note [Emulated launch]
// A launch runs the blocks of the grid one after another; inside a block every CUDA thread is
// a std::thread, __syncthreads() is a std::barrier over the block's threads, __shared__
// variables are function-local statics (one copy, shared by the block's threads; blocks do not
// overlap in time, so one copy suffices) and __shfl_down_sync goes through a shared buffer
// with a barrier on each side. What this checks: indexing, barrier ordering, the reductions'
// arithmetic. What it does not: warp-synchronous timing, memory ordering without a barrier,
// the real half/bf16 intrinsics (they come from the CUDA headers' host fallbacks).
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline

namespace emu {
inline thread_local dim3 blockIdx_, threadIdx_, blockDim_, gridDim_;
inline std::barrier<>* bar = nullptr;  // the running block's barrier (one block at a time)
inline unsigned char shfl[1024 * 8];   // __shfl_down_sync exchange: 1024 threads x 8 bytes
inline void sync() { bar->arrive_and_wait(); }

// kernel<<<grid, block, 0, stream>>>(args) becomes emu::launch(grid, block, [&] { ... }).
template <class F>
void launch(dim3 grid, dim3 block, F&& fn) {
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> b(block.x);
      bar = &b;
      std::vector<std::thread> ts;
      for (unsigned tx = 0; tx < block.x; ++tx)
        ts.emplace_back([&, tx] {
          blockIdx_ = dim3(bx, by, 0);
          threadIdx_ = dim3(tx, 0, 0);
          blockDim_ = block;
          gridDim_ = grid;
          fn();
        });
      for (auto& t : ts) t.join();
      bar = nullptr;
    }
}
}  // namespace emu

#define blockIdx emu::blockIdx_
#define threadIdx emu::threadIdx_
#define blockDim emu::blockDim_
#define gridDim emu::gridDim_
inline void __syncthreads() { emu::sync(); }

// Every thread of the block must call it (as in the kernels: full-warp masks, whole blocks).
template <class A>
A __shfl_down_sync(unsigned, A v, int off) {
  static_assert(sizeof(A) <= 8, "emulated __shfl_down_sync: values of at most 8 bytes");
  A* buf = reinterpret_cast<A*>(emu::shfl);
  const unsigned t = threadIdx.x;
  buf[t] = v;
  emu::sync();
  const unsigned lane = t & 31;
  A r = (lane + off < 32) ? buf[t + off] : v;
  emu::sync();
  return r;
}
