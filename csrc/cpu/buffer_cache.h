// Large CPU buffers of the layer functions, reused across calls instead of fresh memory.
//
// Note [CPU buffer cache]
// A training step allocates the same large buffers on every call: the forward's outputs and
// saved activations (y, the gates, the cell states), the backward's gate gradients and the
// weight gradients. glibc serves blocks of this size from fresh pages (mmap, or heap growth
// it gives back with brk when they are freed), so every call page-faults on each 4 KiB it
// writes, and the faults land inside the time loops, where the other thread waits for the
// faulting one at the next barrier. Measured on a 2-core AMD EPYC (Zen 5), LSTM T=128 B=8
// I=64 H=256, forward + backward: 2751 page faults per call (11 MB); the same process with
// glibc's trimming turned off (mallopt, for the measurement only) ran 1.25x faster, and
// forcing every large block onto mmap ran 1.42x slower than that.
//
// Buffers of at least kBufferCacheMinBytes therefore come from this cache: a block freed by
// its last tensor (in whichever thread: autograd frees saved activations in its own) goes to
// a free list by size, and the next request of the same size (rounded up to 4 KiB pages; a
// free block up to 1/8 larger also serves) takes it back with its pages still mapped. Only
// freed blocks are held, at most FUSEDRNN_CPU_CACHE_MB MiB of them (default 512, 0: off);
// a block that would exceed the limit goes back to the system. `fusedrnn.empty_cpu_cache()`
// frees all of them. The tensors are ordinary CPU tensors (resizable, serializable); only
// where their memory comes from differs.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace fusedrnn {
namespace cpu {

// Note [Small CPU buffers]
// A small CPU tensor from at::empty costs 0.45-0.75 us to make and free on the 2-core Xeon
// VM: the dispatcher's call of empty, then posix_memalign, which glibc serves (and frees)
// outside its per-thread caches; from a free list of blocks it costs 0.16-0.21 us (what is
// left is the TensorImpl and StorageImpl). A one-step layer call makes five or six of them
// (the combined bias, the input projection, the output, the states, the step product), a
// training step two dozen. So blocks of at most kSmallMaxBytes come from the cache too, in
// power-of-two classes from 64 B; up to 64 freed blocks are held per class of at most
// 16 KiB, and 1 MiB's worth (at least 8) per larger class: 5 MiB in all at most, counted in
// the same limit. Tensors between kSmallMaxBytes and kBufferCacheMinBytes still come from
// at::empty.
// Measured (2-core Xeon VM, 2 threads, 20-30 rounds in alternating order, time without /
// with): ops.lstm_layer T=1 B=1 I=H=8 no grad 1.23-1.26x, forward+backward 1.06-1.10x;
// ops.gru_layer no grad 1.17-1.22x; LSTMCell I=H=64 B=32 training 1.06x, and the classes
// from 32 KiB to 128 KiB (its gates) added 1.04x to its no-grad call.
constexpr int64_t kBufferCacheMinBytes = 256 << 10;
constexpr int64_t kSmallMaxBytes = 128 << 10;

// at::empty(sizes, opts) for a CPU tensor; from the cache when it is large or small
// (Note [Small CPU buffers]).
at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts);
// at::zeros(sizes, opts), likewise (a contiguous CPU tensor).
at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts);

struct BufferCacheStats {
  int64_t cached_bytes;   // in freed blocks, ready for reuse
  int64_t cached_blocks;
  int64_t limit_bytes;
  int64_t hits, misses;   // requests served from the cache / from new memory
};
BufferCacheStats buffer_cache_stats();
// Returns every freed block to the system; returns the bytes released.
int64_t empty_buffer_cache();
// Sets the limit on freed bytes held (0 turns the cache off and empties it); returns the old
// limit.
int64_t set_buffer_cache_limit(int64_t bytes);

}  // namespace cpu
}  // namespace fusedrnn
