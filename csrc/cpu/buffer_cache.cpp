// The CPU buffer cache: Note [CPU buffer cache] in buffer_cache.h.
#include "buffer_cache.h"

#include <pthread.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

namespace fusedrnn {
namespace cpu {
namespace {

constexpr size_t kPage = 4096;

int64_t limit_from_env() {
  const char* env = std::getenv("FUSEDRNN_CPU_CACHE_MB");
  if (!env || !*env) return int64_t(512) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end && *end == '\0' && mb >= 0,
                    "fusedrnn: FUSEDRNN_CPU_CACHE_MB must be a whole number of MiB >= 0, got '",
                    env, "'");
  return static_cast<int64_t>(mb) << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

// Small blocks (Note [Small CPU buffers] in buffer_cache.h): power-of-two classes of 64 B
// (class 0) to kSmallMaxBytes, each a stack of at most small_per_class freed blocks.
constexpr int kSmallClasses = 12;
constexpr size_t kSmallMinBytes = 64;
static_assert((kSmallMinBytes << (kSmallClasses - 1)) == size_t(kSmallMaxBytes),
              "the small classes end at kSmallMaxBytes");
// Freed blocks held per class: 64 up to 16 KiB, then 1 MiB's worth (at least 8).
inline size_t small_per_class(int c) {
  const size_t fit = (size_t(1) << 20) / (kSmallMinBytes << c);
  return fit > 64 ? 64 : (fit < 8 ? 8 : fit);
}

inline int small_class(size_t n) {
  int c = 0;
  while ((kSmallMinBytes << c) < n) ++c;
  return c;
}

class BufferCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, nullptr, c10::Device(c10::kCPU)};
    if (n <= size_t(kSmallMaxBytes)) return allocate_small(small_class(n));
    const size_t bytes = (n + kPage - 1) / kPage * kPage;
    Block b = take(bytes);
    if (!b.ptr) b = {c10::alloc_cpu(bytes), bytes};
    return {b.ptr, new Block(b), &BufferCache::release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  BufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t blocks = static_cast<int64_t>(free_.size());
    for (const auto& stack : small_) blocks += static_cast<int64_t>(stack.size());
    return {cached_, blocks, limit_, hits_, misses_};
  }

  int64_t empty() {
    std::multimap<size_t, void*> blocks;
    std::array<std::vector<void*>, kSmallClasses> small;
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      small.swap(small_);
      released = cached_;
      cached_ = 0;
    }
    for (auto& b : blocks) c10::free_cpu(b.second);
    for (auto& stack : small) {
      for (void* p : stack) c10::free_cpu(p);
    }
    return released;
  }

  int64_t set_limit(int64_t bytes) {
    TORCH_CHECK_VALUE(bytes >= 0, "fusedrnn: the CPU buffer cache limit must be >= 0, got ",
                      bytes);
    int64_t old;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old = limit_;
      limit_ = bytes;
      enabled_.store(bytes > 0, std::memory_order_relaxed);
    }
    empty();  // the blocks held under the old limit are not necessarily wanted now
    return old;
  }

  // (An atomic: every small allocation asks, and the lock would double its cost.)
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  static BufferCache& get() {
    // Never destroyed: tensors may be freed after static destruction began.
    static BufferCache* cache = new BufferCache();
    return *cache;
  }

 private:
  BufferCache() : limit_(limit_from_env()) {
    enabled_.store(limit_ > 0, std::memory_order_relaxed);
    // A fork while another thread held the lock (a DataLoader worker started during a
    // layer call in another Python thread) would leave the child's copy locked forever.
    pthread_atfork(nullptr, nullptr, [] { new (&get().mutex_) std::mutex(); });
  }

  // A free block of at least `bytes` and at most 1/8 more, or {nullptr, 0}.
  Block take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 8) {
      ++misses_;
      return {nullptr, 0};
    }
    ++hits_;
    const Block b{it->second, it->first};
    cached_ -= static_cast<int64_t>(b.bytes);
    free_.erase(it);
    return b;
  }

  static void release(void* ctx) {
    Block* b = static_cast<Block*>(ctx);
    get().give_back(b->ptr, b->bytes);
    delete b;
  }

  void give_back(void* ptr, size_t bytes) {
    if (!ptr) return;  // a zero-byte allocation (resize to 0 of a fresh storage)
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + static_cast<int64_t>(bytes) <= limit_) {
        free_.emplace(bytes, ptr);
        cached_ += static_cast<int64_t>(bytes);
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  c10::DataPtr allocate_small(int c) {
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& stack = small_[c];
      if (!stack.empty()) {
        p = stack.back();
        stack.pop_back();
        cached_ -= static_cast<int64_t>(kSmallMinBytes << c);
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (!p) p = c10::alloc_cpu(kSmallMinBytes << c);
    return {p, p, small_release(c), c10::Device(c10::kCPU)};
  }

  void give_back_small(int c, void* ptr) {
    const size_t bytes = kSmallMinBytes << c;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& stack = small_[c];
      if (stack.size() < small_per_class(c) && cached_ + static_cast<int64_t>(bytes) <= limit_) {
        if (stack.capacity() == 0) stack.reserve(small_per_class(c));
        stack.push_back(ptr);
        cached_ += static_cast<int64_t>(bytes);
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  // The deleter of class c's blocks: the class is in the function, the block in its context.
  template <int C>
  static void release_small_class(void* ptr) {
    get().give_back_small(C, ptr);
  }
  template <size_t... C>
  static c10::DeleterFnPtr small_release_of(int c, std::index_sequence<C...>) {
    static constexpr c10::DeleterFnPtr fns[] = {&release_small_class<static_cast<int>(C)>...};
    return fns[c];
  }
  static c10::DeleterFnPtr small_release(int c) {
    return small_release_of(c, std::make_index_sequence<kSmallClasses>());
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // freed blocks by size
  std::array<std::vector<void*>, kSmallClasses> small_;  // freed small blocks by class
  int64_t cached_ = 0, limit_;
  std::atomic<bool> enabled_{false};
  int64_t hits_ = 0, misses_ = 0;
};

at::Tensor empty_from_cache(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::Tensor(at::detail::empty_generic(sizes, &BufferCache::get(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()), std::nullopt));
}

bool cached_size(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (opts.device().type() != c10::kCPU || opts.layout() != c10::kStrided) return false;
  int64_t n = static_cast<int64_t>(opts.dtype().itemsize());
  for (int64_t s : sizes) n *= s;
  return (n >= kBufferCacheMinBytes || n <= kSmallMaxBytes) && BufferCache::get().enabled();
}

}  // namespace

at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return cached_size(sizes, opts) ? empty_from_cache(sizes, opts) : at::empty(sizes, opts);
}

at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  // A memset, not zero_: at::zeros' zero_ (a TensorIterator set up for a few floats) costs
  // more than the fill in a tiny call (Note [Direct products for small calls]); a large
  // buffer's zero_ runs in parallel.
  if (cached_size(sizes, opts)) {
    at::Tensor out = empty_from_cache(sizes, opts);
    if (out.nbytes() >= size_t(kBufferCacheMinBytes)) return out.zero_();
    if (out.nbytes() > 0) std::memset(out.data_ptr(), 0, out.nbytes());
    return out;
  }
  at::Tensor out = at::empty(sizes, opts);
  if (out.nbytes() > 0) std::memset(out.data_ptr(), 0, out.nbytes());
  return out;
}

BufferCacheStats buffer_cache_stats() { return BufferCache::get().stats(); }

int64_t empty_buffer_cache() { return BufferCache::get().empty(); }

int64_t set_buffer_cache_limit(int64_t bytes) { return BufferCache::get().set_limit(bytes); }

}  // namespace cpu
}  // namespace fusedrnn
