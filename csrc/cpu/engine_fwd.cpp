// The CPU forward engine: the whole time loop of one layer call (one direction) in one
// parallel region, float32, LSTM (with projection) and GRU.
//
// Note [CPU time-loop engine]
// The per-step loop (lstm_cpu.cpp, gru_cpu.cpp) runs one GEMM h_{t-1} W_hh^T per step (oneDNN
// or MKL) and then a separate parallel pass for the pointwise math. At small batch that is
// all overhead: the GEMM call, waking the pool twice per step, and reading W_hh (4H x R
// floats, 1 MiB at H = 256) from wherever the last GEMM left it. The engine instead:
//
//  - Slices. run_team (team.h) starts one region for the whole call. Thread tid of n owns
//    the hidden units team_slice(H, W, tid, n) (W = SIMD lanes of the capability) and ALL
//    gates of those units, so its gate math needs no other thread's results: the only data
//    shared between threads is the state h_{t-1}, which every thread reads whole. (From
//    four rows per thread on, a thread owns batch rows with all units instead: Note
//    [Engine row split] below; then nothing is shared and the loop has no barrier.)
//  - Packing. Each thread packs its units' rows of W_hh once per call, inside the region
//    (so its slice is in the cache of the core that reads it every step), into one panel
//    set up before the region (a workspace the calling thread keeps for its next call), in
//    the layout of Note [Engine panel layout] (engine_fwd.h): per block of W units, K
//    columns of G vectors. At B = 1 a step is bound by streaming this slice from L2 (a thread's share is
//    4H R / n floats: 512 KiB at H = 256 on two threads, in a 2 MiB L2), at larger B by the
//    FMAs.
//  - Steps. Per step a thread runs register blocks (engine_fwd_impl.h): a few rows x G gates
//    x one to four unit blocks of accumulators, k = 0..R-1 with one FMA chain per output;
//    then, while the gate sums are in registers, adds the x part (computed in the same
//    register blocks just before, Note [Engine input part] below, or read from the
//    all-steps GEMM x W_ih^T + b done before by oneDNN/MKL), applies the activations, the cell update and
//    clip and h, and writes h_out and its units of h_t (act and c_raw when saving for a
//    backward). Then one barrier per step. The state lives in two buffers (h_{t-1} is read
//    by all threads while each writes its units of h_t) that swap every step; the barrier
//    at the end of step s both publishes h_s and guarantees that nobody still reads the
//    buffer step s+1 overwrites.
//    Rows a step does not have (packed input) or that have ended (lengths) copy their units
//    of the state to the other buffer.
//  - Projection. h_t (H wide) goes to h_pre; after a barrier the threads split the P outputs
//    r_t = h_t W_hr^T the same way (a G = 1 panel of W_hr), write y and the projected state,
//    and meet at a second barrier.
//  - Order of the sums. Each gate value is (sum_k h_{t-1}[k] W[g,u,k], from zero, k
//    ascending) + x part: the same order as the per-step loop's beta = 0 GEMM followed by
//    the pointwise add. Starting the chain from the x part instead (like a beta = 1 GEMM)
//    measurably biases the float32 recurrence (Note [Recurrent gradient buffers] in
//    rnn_params.h). And because every output is one chain whose order depends on neither
//    the row blocking nor the unit split, results are bitwise identical for any number of
//    threads.
//
// Where it stands (2-core AVX-512 Xeon, 2 MiB L2 per core; measured there: L2 reads ~150 GB/s
// and ~210 GFLOP/s of FMA per core). One thread's half of an H = 256 LSTM step (W_hh slice
// 512 KiB), kernel alone, best of 2000: M = 1 row 5.2 us (floor: the slice from L2, 3.5 us),
// M = 8 18 us and M = 32 66 us (floors: the FMAs, 10 and 40 us); the gap at larger M is
// mostly the pointwise epilogue (~180 cycles per row and unit block: 5 exp, 5 divisions)
// and the second pass over the panel when the rows do not fit one register block.
//
// Note [Engine row split]
// Rows of a batch never meet in the recurrence: a thread that owns some rows with ALL units
// (instead of some units of all rows) needs nothing from the other threads, so its time
// loop runs without any barrier, and the state h_{t-1} it reads is what it wrote itself (in
// its own core's cache) rather than the other threads' halves. The price: every thread
// streams the whole W_hh panel once per register block of its rows, not its share of it,
// which a thread with few rows cannot repay. So the driver splits rows when (a) the whole
// panel fits one thread's L2 budget, (b) the rows are not packed (a packed batch
// ends its rows one by one: the threads owning the long sequences would run alone), and
// (c) each thread gets at least kMinRowsPerThread rows. (a) reads the machine: the budget is
// 3/4 of one core's L2 (1.5 MiB on the 2 MiB-L2 Xeon below); a panel beyond it but within
// kL2Slice still splits rows from kManyRowsPerThread rows per thread on. On a 2-core AMD
// EPYC (Zen 5, 1 MiB L2 per core), where the LSTM's H=256 panel (W_hh and the input part's
// W_ih: 1.25 MiB at I=64) no longer fits, unit split time / row split time, inference,
// paired in one process: LSTM T=128 H=256 B=8 0.84, B=16 0.88, B=32 1.01, GRU B=8 0.91, B=16
// 1.00, B=32 0.98; training 1.00, 0.95, 1.04 (LSTM), 1.00, 1.00, 1.03 (GRU)
// (benchmarks/results/amd-epyc-2026-12-02-row-split-l2-ab.md). Where this rule is in
// doubt, "auto" measures both splits instead (Note [Measured row split] in row_split.cpp).
// Both threads still pack half the panel each, then meet at one barrier before the loop.
// The arithmetic of every output is the same either way (one chain per output, see "Order
// of the sums" above), so both splits give bitwise the same results.
// Measured (2-core AVX-512 Xeon, 2 threads, inference, unit split time / row split time,
// paired in one process): LSTM H=256 I=64 T=128 B=2..4 0.93-0.94, B=8 1.16, B=16 1.06,
// B=32 1.24, B=64 1.03, B=128 1.03; H=128 B=2 0.93, B=12 1.16; T=64 B=32 I=1 H=64 1.38;
// T=24 B=16 I=8 H=32 1.35. GRU H=256 B=4 0.96, B=8 1.03, B=16 1.13, B=32 1.10, B=64 1.15;
// T=64 B=32 I=1 H=64 1.32. Training, with the backward engine split the same way
// (bwd_engine.cpp): LSTM T=128 B=8 1.17, B=32 1.10, T=64 B=32 I=1 H=64 1.44, GRU 1.15-1.48
// (benchmarks/results/intel-xeon-2026-12-02-row-split-ab.md).
//
// The saved tensors (act, c_raw, h_pre; GRU saved) have exactly the per-step loop's layout
// and meaning, so either backward consumes them. float64 stays on the per-step loop; which
// loop a float32 call takes is decided in use_forward_engine (the crossover rule is there).
#include "engine_fwd_run.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "dispatch.h"
#include "engine_fwd.h"
#include "row_split.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

namespace {

// The engine kernels of the capability the pointwise kernels use (dispatch.h), so that
// _set_cpu_capability switches both.
const EngineFwdKernels& engine_kernels() { return capability_kernels().engine_fwd; }

// How many threads to start: one per chunk of W units at most, and one when a step is so
// small that a barrier would cost more than the split saves.
int team_size(const LayerSizes& s, int64_t G, int64_t W) {
  const int64_t chunks = (s.H + W - 1) / W;
  const int64_t macs = s.B * G * s.H * s.R;  // per step
  constexpr int64_t kMinMacsPerThread = 16 << 10;
  const int64_t by_work = std::max<int64_t>(1, macs / kMinMacsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min(chunks, by_work)));
}

// The panels of one call live in a buffer of the calling thread that the next call on that
// thread reuses: a fresh allocation of this size is mmap'ed, and its page faults (one per
// 4 KiB, in the first step that touches them) cost more than the packing itself (~0.5 ms
// for the 1 MiB of H = 256). Per calling thread, so concurrent calls from several threads
// never share one.
class Workspace {
 public:
  ~Workspace() { std::free(data_); }
  float* get(int64_t floats) {
    if (floats > size_) {
      std::free(data_);
      const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      TORCH_CHECK(data_ != nullptr, "fusedrnn: cannot allocate ", bytes, " bytes of engine workspace");
      size_ = floats;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0;
};

float* workspace(int64_t floats) {
  thread_local Workspace ws;
  return ws.get(floats);
}

float* ptr(at::Tensor& t) { return t.data_ptr<float>(); }
const float* cptr(const at::Tensor& t) { return t.data_ptr<float>(); }

// A thread's share of the packed weights that its L2 keeps across steps (2 MiB per core on
// the machines measured): Note [Forward engine crossover], Note [Engine row split].
constexpr int64_t kL2Slice = 3 << 19;  // 1.5 MiB

// The two state buffers [2][B, R]: buffer step % 2 is read by step `step`. `state` holds the
// initial state and must end up holding the final one (after T steps: buffer T % 2), so it
// is used as that buffer, and the initial state is copied where step 0 reads it.
struct StateBuffers {
  at::Tensor scratch;
  float* buf[2];
  StateBuffers(at::Tensor& state, int64_t T) {
    scratch = at::empty_like(state);
    if (T % 2 == 0) {
      buf[0] = ptr(state);
      buf[1] = ptr(scratch);
    } else {
      scratch.copy_(state);
      buf[0] = ptr(scratch);
      buf[1] = ptr(state);
    }
  }
};

// The call-wide fields of EngineInput (Note [Engine input part]; x is set per step): none
// without `input`.
EngineInput call_input(const EngineInputArgs* input, const float* panel) {
  EngineInput in{};
  if (input) {
    in.panel = panel;
    in.bias = input->bias ? cptr(*input->bias) : nullptr;
    in.K = input->x.size(1);
  }
  return in;
}

// The L2 cache of one core, in bytes (glibc's sysconf, else sysfs, else 2 MiB).
int64_t l2_bytes_per_core() {
  static const int64_t bytes = [] {
    long n = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (n <= 0) {
      if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index2/size", "r")) {
        long v = 0;
        char unit = 0;
        if (std::fscanf(f, "%ld%c", &v, &unit) >= 1) {
          n = unit == 'K' ? v << 10 : (unit == 'M' ? v << 20 : v);
        }
        std::fclose(f);
      }
    }
    return n > 0 ? static_cast<int64_t>(n) : int64_t(2) << 20;
  }();
  return bytes;
}

constexpr int64_t kMinRowsPerThread = 4, kManyRowsPerThread = 16;

// Whether the row split may apply at all: two threads or more, padded rows, and at least
// kMinRowsPerThread rows per thread.
bool rows_to_split(const LayerSizes& s, int n) {
  return n >= 2 && !s.packed && (s.B + n - 1) / n >= kMinRowsPerThread;
}

// The threads an engine call of this shape starts (run_team caps the request at the pool).
int64_t engine_threads(const LayerSizes& s, int64_t G) {
  return std::min<int64_t>(team_size(s, G, engine_kernels().width), team_capacity());
}

// Bytes of one thread's panels with the input part: its share of W_hh, W_ih and W_hr.
int64_t input_part_panel_bytes(const LayerSizes& s, int64_t G, int64_t P) {
  return (G * s.H * (s.R + s.I) + P * s.H) * int64_t(sizeof(float)) / engine_threads(s, G);
}

}  // namespace

// Note [Engine row split] (row_split.h). The split modes other than "auto" and "rule" are
// plan_split's (row_split.cpp).
bool split_rows(const LayerSizes& s, int64_t panel_bytes, int n) {
  if (!rows_to_split(s, n)) return false;
  const int64_t rows = (s.B + n - 1) / n;
  // The whole panel within 3/4 of this core's L2; or, up to kL2Slice, enough rows per
  // thread to repay reading it from L3.
  return panel_bytes <= l2_bytes_per_core() * 3 / 4 ||
         (panel_bytes <= kL2Slice && rows >= kManyRowsPerThread);
}

// Note [Measured row split] (row_split.cpp): a panel beyond a quarter of L2 but within the
// rule's budget, where what stays in L2 between steps depends on the host, not the shape.
bool row_split_doubtful(const LayerSizes& s, int64_t panel_bytes, int n) {
  if (!rows_to_split(s, n)) return false;
  const int64_t l2 = l2_bytes_per_core();
  return panel_bytes > l2 / 4 && panel_bytes <= std::max(l2 * 3 / 4, kL2Slice);
}

// Note [Forward engine crossover]
// Measured on the 2-core AVX-512 Xeon (2 MiB L2 per core) with T = 32..64, min of rounds,
// engine time / per-step loop time as "x faster" (per-step loop = oneDNN/MKL GEMM + pointwise):
//   H = 128, 256 (slice <= 1 MiB per thread): the engine wins at every B from 1 to 128:
//     2 threads LSTM H=256: B=1 1.65x, 8 1.42x, 32 1.38x, 64 1.17x, 128 1.05x; GRU 1.79x ..
//     1.12x; 1 thread alike (H=256 LSTM B=128 1.08x). The margin shrinks with B (the GEMM
//     reaches ~180 GFLOP/s per core, the engine's blocks ~130 with the pointwise math).
//   H = 512 (LSTM slice 2 MiB per thread at 2 threads, 4 MiB at 1; GRU 1.5 / 3 MiB): the
//     slice streams from L3 every step; the engine still wins at B <= 8-16 (LSTM 2 threads
//     B=8 1.62x, 1 thread 1.28x) and loses from B = 32-64 on (0.86-0.93x).
//   H = 1024 (slices 6-8 MiB): even within noise at B <= 32 (0.8x-1.2x).
//   Measured again on 2026-12-03 (the same Xeon host class, after the input part, the row
//   split and the row prefetch; paired medians of 9 interleaved rounds, T=100 H=512, old
//   rule time / new rule time): without a backward the engine now wins at B = 32-64 as well
//   (LSTM I=512 B=32 1.07, B=64 1.05, I=64 B=32 1.19, B=64 1.12; GRU 0.98-1.02, even), and
//   is even at B = 128 (LSTM I=512 1.00); with a backward it lost at B = 64 (LSTM 0.96, GRU
//   0.88: the saved activations add to what streams every step); on one thread (the whole
//   W_hh, 4 MiB, per thread) the engine won at I=512 (LSTM B=32 1.03, B=64 1.04, GRU B=64
//   1.10) but lost at I=64 B=64 without the input part (0.88): there the x part comes from
//   the all-steps buffer, which the per-step loop instead projects in chunks that stay in
//   cache (benchmarks/results/intel-xeon-2026-12-03-medium-slices-ab.md).
// Hence: the engine when a thread's share of the weights (W_hh, and W_hr with projection)
// fits in L2 with room to spare, up to B = 128; beyond that, with slices up to 4 MiB, up to
// B = 16, and up to B = 64 without a backward where the engine computes the input part or
// I >= H / 2. The portable build (one lane per vector) always takes the per-step loop.
// One step (T = 1: the cells) rarely repays packing W_hh: the per-step loop's one GEMM reads
// it in place. LSTMCell / GRUCell on the Xeon, no grad, 2 threads, per-step loop vs engine
// (torch.nn time / ours): B=8 H=256 I=128 LSTM 1.41x vs 0.71x, GRU 1.14x vs 0.80x; B=32
// 1.28x vs 0.97x; B=97 1.25x vs 1.04x; B=1..97 H=64 I=32 1.36-1.48x vs 1.20-1.40x. The
// exception, on other CPUs: Note [One step on the engine].

// Note [One step on the engine]
// A single step (T = 1: the cells) has nothing to spread the weight copy over, so the
// engine pays for it only where its fused blocks save more than the copy costs: without a
// backward, from 32 rows, while a thread's panels (W_hh and W_ih, W_hr) stay within 256 KiB.
// The per-step loop runs the x and h products as two small GEMMs, each too small for the
// BLAS's two threads to pay; the engine runs both in the same register blocks. Measured on
// the 2-core Zen 4 EPYC (no grad, 2 threads, float32, per-step loop time / engine time,
// benchmarks/results/amd-epyc-2026-12-04-b1-training-paired-ab.md):
//   - calls alternating one by one, 4,000 each, medians: H = I = 64, B = 32 / 64 / 97:
//     LSTMCell 1.09 / 1.12 / 1.14, GRUCell 1.14 / 1.15 / 1.15; with a torch.nn cell call
//     before each (the weights colder): LSTMCell 1.12-1.13 / 1.15-1.18 / 1.21-1.22, GRUCell
//     0.94 / 1.19 / 1.26; B=16: LSTMCell 1.04, GRUCell 0.73; H = I = 128 (256 KiB of
//     LSTM panels per thread) LSTMCell B=8 0.94, 32 1.07, 64 1.11. Beyond 256 KiB, H=256
//     I=128 (576 / 768 KiB): GRUCell B=32 0.79, 64 1.00, 97 1.01; LSTMCell B=8 0.33, 32
//     0.76, 64 0.94;
//   - rounds of 300 calls each, GRUCell: H = I = 64 B=8 1.00, 32 1.10, 64 1.17, 97 1.13-1.25;
//     H = I = 128 B=32 1.07, 64 1.02.
// Calls with a backward showed no steady gain (0.92-1.12), nor did the Xeon (Note [Forward
// engine crossover]): they, and Intel CPUs, keep the per-step loop. So do the AVX2 kernels
// (8 lanes): on the same CPU with `_set_cpu_capability("avx2")`, call by call, H = I = 64,
// B = 16 / 32 / 97: LSTMCell 1.01 / 1.05 / 0.96, GRUCell 1.02 / 1.06 / 1.14.
bool one_step_engine(const LayerSizes& s, int64_t G, int64_t P, bool save) {
  if (save || intel_cpu() || engine_kernels().width < 16 || s.B < 32 || s.B > 128) return false;
  return input_part_panel_bytes(s, G, P) <= (256 << 10);
}

// Note [Forward engine crossover] above.
bool use_forward_engine(const LayerSizes& s, int64_t G, int64_t P, bool save) {
  const EngineMode mode = engine_mode();
  if (mode == EngineMode::Steps || s.B == 0) return false;
  if (mode == EngineMode::Engine) return true;
  if (engine_kernels().width == 1) return false;
  if (s.T == 1) return one_step_engine(s, G, P, save);
  constexpr int64_t kMaxSlice = 4 << 20;   // 4 MiB
  const int64_t slice = (G * s.H * s.R + P * s.H) * int64_t(sizeof(float)) / engine_threads(s, G);
  if (slice <= kL2Slice) return s.B <= 128;
  if (slice > kMaxSlice) return false;
  if (s.B <= 16) return true;
  // 17-64 rows, without a backward only: where the engine computes the x part itself, or
  // where I >= H / 2 (reading the x part from the all-steps buffer, in memory at these
  // sizes, while the per-step loop projects chunks of steps that stay in cache).
  return !save && s.B <= 64 && (engine_input_part(s, G, P) || 2 * s.I >= s.H);
}

// Note [Engine input part]
// The x part of a step's gates, x_t W_ih^T + b_ih + b_hh, used to come from one GEMM over
// all steps before the loop: a buffer of T * B * 4H floats (16 MiB at T=128, B=32, H=256)
// written once and read back a step at a time by the epilogue, from memory. On the 2-core
// AMD EPYC (Zen 5) that read was the larger part of the epilogue: at T=128 B=32 inference a
// build that skipped it ran 100 -> 68 us per step. So the engines (LSTM and GRU; the GRU's
// x part is xg = x W_ih^T + b_ih + (b_hr, b_hz, 0)) compute the x part themselves:
// each thread packs its units' rows of W_ih beside its W_hh panel, and every register block
// first runs the same rows and units against x_t (EngineInput in run_blocks, the same
// micro-kernel with K = I), keeps the result plus the bias in a small buffer in L1, then runs
// the recurrent product, whose epilogue adds the two as before (recurrent sum first, then
// the x part). No all-steps GEMM and no gates buffer without a backward; with one, the
// epilogue still stores the activations there. Each x part is one chain over I from zero,
// then + bias, whatever the blocking and the thread split, so results stay bitwise the same
// for any thread count and for both splits. It costs one more panel to stream per step:
// at B = 1 with I > H that is more than the GEMM it replaces, hence the rule below.
// Measured (2-core AMD EPYC Zen 5, 2 threads, no grad, paired in one process, old time /
// new time): LSTM H=256 I=64 T=128 B=32 1.54x, B=8 1.18x, B=1 1.18x; I=256 B=32 1.35x;
// I=512 B=32 1.25x, B=8 1.08x, B=1 0.60x; H=128 I=128 B=16 1.23x; T=64 B=32 I=1 H=64 1.28x;
// T=24 B=16 I=8 H=32 1.24x; training 0.97-1.10x
// (benchmarks/results/amd-epyc-2026-12-02-engine-input-ab.md). GRU, the same way, after the
// gate_block inlining fix: T=128 I=64 H=256 B=32 1.10x, B=8 1.06x, B=1 0.88x; T=64 B=32 I=1
// H=64 1.26x; T=24 B=16 I=8 H=32 1.19x; training B=32 1.08x, B=8 1.05x: so the GRU takes
// it from 8 rows on only. On the 2-core Xeon (2026-12-03; all-steps GEMM time / engine
// time, LSTM T=128 no grad, min of 25 interleaved runs): H=256 B=1 I=64 1.10, I=128 1.02,
// I=192 0.94, I=256 0.87 (training 0.89); H=128 B=1 I=128 1.00, H=64 B=1 I=64 0.95; B=2
// I=256 1.02, B=4 I=256 1.18, B=8 I=64 1.32
// (benchmarks/results/intel-xeon-2026-12-03-input-part-ab.md): a single row takes the
// input part only up to I = R / 2.
// The input part streams the thread's slice of W_ih every step beside its W_hh. Where the
// two together (and W_hr) exceed 1.5x the core's L2 they come from L3 every step, and where
// W_ih is a large share of that stream (I >= R / 2) on a small step (B <= 16), or at least
// as large as W_hh (I >= R) whatever the step, reading the x part from the all-steps buffer
// costs less. Xeon, no grad, all-steps buffer time / input part time (paired medians, 9-11
// rounds; MiB = a thread's W_hh + W_ih): 2 threads, H=512: LSTM I=512 (4 MiB) B=8 0.68-0.75,
// B=16 0.97, B=64 0.95; I=384 (3.5 MiB) B=8 0.79, B=32 1.00; GRU I=512 (3 MiB, kept) B=8
// 0.81, B=64 1.00; LSTM I=64 (2.25 MiB) B=8 1.10, B=64 1.41; GRU I=64 B=64 1.33; H=384 I=256
// (1.9 MiB) B=32 1.09, B=64 1.16. One thread: LSTM H=512 I=512 (8 MiB) B=8 0.84; I=64 (4.5
// MiB) B=8 1.10, B=16 1.17, B=32 1.20, B=64 1.29; H=384 I=256 (3.75 MiB) B=32 1.09, B=64
// 1.05; I=128 B=8 0.98; GRU H=512 I=64 B=8 1.07, H=384 I=256 B=32 1.03
// (benchmarks/results/intel-xeon-2026-12-03-medium-slices-ab.md). The AMD EPYC figures
// above (1 MiB L2; H=256 I=512: 1.5 MiB at 2 threads) stay on the input part too.
// That exception is the Xeon's: its L3 gave one core ~18 GB/s, so a second panel streamed
// from it every step cost more than the all-steps GEMM saves. On the 2-core AMD EPYC (Zen 4,
// 1 MiB L2, L3 reads ~97 GB/s per core) the same shapes run faster on the input part, which
// also leaves out the all-steps buffer, fresh pages on every call (50 MiB at T=100 B=64
// H=512: 12,801 page faults a call, 9% of its perf samples in the kernel). All-steps buffer
// time / input part time, 2 threads, paired, 9 rounds: no grad LSTM H=512 I=512 B=8 1.09,
// B=32 1.07, B=64 1.13, GRU B=16 1.03, B=64 1.15; training LSTM B=8 1.04, B=64 1.00, GRU
// B=64 1.04 (and H=384 I=256 B=32, outside the exception, 1.12 without grad)
// (benchmarks/results/amd-epyc-2026-12-04-input-part-beyond-l2-ab.md). So the exception
// holds on Intel CPUs only.
bool engine_input_part(const LayerSizes& s, int64_t G, int64_t P) {
  const int64_t panels = input_part_panel_bytes(s, G, P);
  if (intel_cpu() && panels > l2_bytes_per_core() * 3 / 2 && 2 * s.I >= s.R &&
      (s.B <= 16 || s.I >= s.R)) {
    return false;
  }
  if (G == 3 && s.B > 2) return s.B >= 8;  // at B <= 2: in chunks, as the LSTM's
  if (s.B >= 8) return true;
  return s.B == 1 ? 2 * s.I <= s.R : s.I <= s.R;
}

// Note [Chunked input part]
// With one or two rows a step, the input part of Note [Engine input part] is bound by
// streaming the thread's slice of W_ih from L2 every step, beside W_hh: at H = 256, I = 64
// that is 128 of the 640 KiB a thread reads per step, for 64 multiply-adds per row and
// weight. So at B <= 2 each thread computes the x part of its units for a chunk of steps
// at once (kChunkRows rows: 32 steps at B = 1), on the same register blocks with up to
// max_rows rows (FMA-bound, the W_ih panel read once per chunk), into a [rows, G H] buffer:
// for the LSTM the gates buffer when saving for a backward (the epilogue reads its x part
// there and overwrites it with the activations, as on the all-steps path), otherwise, and
// for the GRU (whose saved values have another layout), a workspace of the chunk. The
// steps then take their x part from that buffer. (The GRU takes the per-step input part
// from 8 rows on only; at B <= 2 it now takes it in chunks, not from an all-steps product.)
// Each value is the same chain over I from zero plus the bias, read back unchanged, so
// results are bitwise those of the per-step input part (a thread reads only the columns it
// wrote itself: no barrier).
// Only with the unit split: a row split needs at least kMinRowsPerThread rows.
// Measured (2-core AVX-512 Xeon, LSTM T=128 I=64 H=256, 2 threads, paired and interleaved
// in one process, medians of 21 rounds, per-step input part time / chunked time): no grad
// B=1 1.09-1.10 (chunks of 16 or 32 steps), B=2 1.04 (16 steps) 1.00 (32), B=4 1.00-1.02,
// B=8 1.00-1.02; training B=1 1.02-1.10, B=8 0.98-1.00
// (benchmarks/results/intel-xeon-2026-12-03-chunked-input-ab.md). GRU, chunks against its
// all-steps product: B=1 no grad 1.12, training 1.03; B=2 1.11 / 1.04; T=64 B=1 H=64 I=1
// and I=8 1.09-1.11 / 1.03-1.09 (same record).
namespace {

int64_t input_chunk_steps(const LayerSizes& s) {
  constexpr int64_t kChunkRows = 32;
  return s.B >= 1 && s.B <= 2 ? kChunkRows / s.B : 0;
}

// The rows [row0, row0 + rows) of the chunk of C steps that starts at loop step `step`
// (steps run backwards in time when reversed).
struct ChunkRows {
  int64_t row0, rows;
};

ChunkRows chunk_rows(const LayerSizes& s, int64_t step, int64_t C, bool reverse) {
  const int64_t n = std::min(C, s.T - step);
  const int64_t t_lo = reverse ? s.T - step - n : step, t_hi = t_lo + n - 1;
  return {s.offset[t_lo], s.offset[t_hi] + s.rows[t_hi] - s.offset[t_lo]};
}

// The x parts of the chunk's rows for units [u0, u1), row after row at `out` (ld G * H).
void chunk_input(const EngineFwdKernels& k, const EngineInput& base, const float* x, int64_t G,
                 int64_t H, const ChunkRows& c, int64_t u0, int64_t u1, float* out) {
  if (u0 >= u1) return;
  EngineInput in = base;
  in.x = x + c.row0 * in.K;
  k.input_rows(in, G, c.rows, H, u0, u1, out, G * H);
}

}  // namespace

// Note [Panel prefetch]
// The forward micro-kernel (gate_block, engine_fwd_impl.h) can ask for its panel
// kPrefetchColumns columns ahead with software prefetches, one per cache line it will load:
// with few rows a step is bound by streaming the panel from L2, and on the Xeon the
// hardware prefetchers alone kept too few lines in flight (so the kernel was written; no
// paired record of that is kept). On the 2-core AMD EPYC (Zen 4) the prefetches cost more
// than they bring: with them off, whole calls without grad ran faster at few rows and the
// same at many (paired, one process, old / new time, 25-31 rounds: LSTM T=128 I=64 H=256
// B=1 1.05-1.07x, B=8 1.03x, B=32 1.00x; GRU B=1 0.99-1.08x; LSTM T=64 B=1 I=1 H=64 1.05x;
// T=100 B=64 I=512 H=512 0.99x; training B=1 0.99x;
// benchmarks/results/amd-epyc-2026-12-04-panel-prefetch-ab.md), and a standalone kernel
// of the B=1 step's access pattern streamed 512 KiB per thread and step as fast without
// them (5.0 us) as with them (5.1-5.6 us). So the kernel prefetches on Intel CPUs only.
bool engine_panel_prefetch() { return intel_cpu(); }

void lstm_forward_engine(const LayerSizes& s, at::Tensor& gates, const at::Tensor& w_hh,
                         const OptTensor& w_hr, at::Tensor& y, at::Tensor& h, at::Tensor& c,
                         at::Tensor& c_raw, at::Tensor& h_pre, bool reverse,
                         std::optional<double> cell_clip, bool save,
                         const EngineInputArgs* input, const OptTensor& x_bias) {
  count_engine_run(EngineRun::LstmForward);
  if (input) count_engine_run(EngineRun::LstmForwardInput);
  const EngineFwdKernels& k = engine_kernels();
  const int64_t T = s.T, B = s.B, H = s.H, R = s.R, W = k.width;
  const int64_t P = w_hr ? R : 0;
  const at::Tensor whh = w_hh.contiguous();
  const at::Tensor whr = w_hr ? w_hr->contiguous() : at::Tensor();
  // Workspace of the whole call: the panels of W_hh, W_hr and (Note [Engine input part])
  // W_ih, filled inside the region.
  const int64_t hh_floats = panel_floats(4, H, R, W);
  const int64_t hr_floats = P ? panel_floats(1, P, H, W) : 0;
  const int64_t I = input ? s.I : 0;
  const int64_t panel_total = hh_floats + hr_floats + (I ? panel_floats(4, H, I, W) : 0);
  // Note [Chunked input part]: the steps of one chunk (0: the x part step by step).
  const int64_t C = I ? input_chunk_steps(s) : 0;
  const bool chunk_buf = C && !(gates.defined() && gates.numel());
  float* panel = workspace(panel_total + (chunk_buf ? C * B * 4 * H : 0));
  float* chunk_p = chunk_buf ? panel + panel_total : nullptr;
  StateBuffers state(h, T);

  LstmEngineStep base{};
  base.B = B;
  base.H = H;
  base.R = R;
  base.lengths = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;
  base.panel = panel;
  base.c = ptr(c);
  base.cell_clip = cell_clip ? static_cast<float>(*cell_clip) : 0.0f;
  base.has_cell_clip = cell_clip.has_value();
  base.x_bias = !input && x_bias ? cptr(*x_bias) : nullptr;
  ProjEngineStep pbase{};
  pbase.B = B;
  pbase.H = H;
  pbase.P = P;
  pbase.lengths = base.lengths;
  pbase.panel = P ? panel + hh_floats : nullptr;
  float* ih_panel = I ? panel + hh_floats + hr_floats : nullptr;
  const at::Tensor wih = input ? input->w_ih.contiguous() : at::Tensor();
  base.input = call_input(input, ih_panel);
  const float* x_p = input ? cptr(input->x) : nullptr;
  // Without a saved copy (input given, no backward) the gates are never read or written.
  float* g_p = gates.defined() && gates.numel() ? ptr(gates) : nullptr;
  float* y_p = ptr(y);
  float* craw_p = save ? ptr(c_raw) : nullptr;
  float* hpre_p = P ? ptr(h_pre) : nullptr;

  const int64_t panel_bytes = panel_total * int64_t(sizeof(float));
  const int want = team_size(s, 4, W);
  TimedSplit split(plan_split(EngineRun::LstmForwardRows, s, panel_bytes,
                              std::min(want, team_capacity()), (save ? 2 : 0) + (I ? 1 : 0)));
  run_team(want, [&](int tid, int n, SpinBarrier& barrier) {
    int64_t u0, u1, p0 = 0, p1 = 0;
    team_slice(H, W, tid, n, &u0, &u1);
    k.pack(cptr(whh), 4, H, R, u0, u1, const_cast<float*>(base.panel));
    if (I) k.pack(cptr(wih), 4, H, I, u0, u1, ih_panel);
    if (P) {
      team_slice(P, W, tid, n, &p0, &p1);
      k.pack(cptr(whr), 1, P, H, p0, p1, const_cast<float*>(pbase.panel));
    }
    // Note [Engine row split]: rows [b0, b1) with all units, no barrier in the loop.
    RowSlice rs;
    const bool rows = enter_row_split(split, s, tid, n, barrier,
                                      EngineRun::LstmForwardRows, &rs);
    if (rows) u0 = 0, u1 = H, p0 = 0, p1 = P;
    const int64_t b0 = rs.b0;
    LstmEngineStep p = base;
    ProjEngineStep pp = pbase;
    p.B = pp.B = rs.b1 - b0;
    p.c = base.c + b0 * H;
    if (base.lengths) p.lengths = pp.lengths = base.lengths + b0;
    const bool chunks = C > 0 && !rows;
    if (chunks && tid == 0) count_engine_run(EngineRun::LstmForwardChunkedInput);
    int64_t chunk_row0 = 0;
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const int64_t M = rs.of(s.rows[t]), off = s.offset[t] + b0;
      float* prev = state.buf[step % 2] + b0 * R;
      float* next = state.buf[(step + 1) % 2] + b0 * R;
      p.M = M;
      p.t = t;
      p.h_prev = prev;
      p.h_next = P ? nullptr : next;
      p.gates = g_p ? g_p + off * 4 * H : nullptr;
      if (chunks) {
        if (step % C == 0) {
          const ChunkRows rows_c = chunk_rows(s, step, C, reverse);
          chunk_row0 = rows_c.row0;
          // Saving: into the gates buffer, whose rows the chunk's steps read and overwrite.
          chunk_input(k, base.input, x_p, 4, H, rows_c, u0, u1,
                      chunk_p ? chunk_p : g_p + chunk_row0 * 4 * H);
        }
        p.input.x = nullptr;
        if (chunk_p) p.gates = chunk_p + (off - chunk_row0) * 4 * H;
      } else if (x_p) {
        p.input.x = x_p + off * I;
      }
      p.c_raw = craw_p ? craw_p + off * H : nullptr;
      p.h_out = P ? hpre_p + off * H : y_p + off * R;
      if (u0 < u1) k.lstm_step(p, u0, u1);
      if (!rows) barrier.wait();
      if (P) {
        pp.M = M;
        pp.t = t;
        pp.h_pre = p.h_out;
        pp.r_prev = prev;
        pp.r_next = next;
        pp.y = y_p + off * R;
        if (p0 < p1) k.proj_step(pp, p0, p1);
        if (!rows) barrier.wait();
      }
    }
  });
  split.finish(T);
}

void gru_forward_engine(const LayerSizes& s, const at::Tensor& xg, const at::Tensor& w_hh,
                        const at::Tensor& b_hn, at::Tensor& y, at::Tensor& h, at::Tensor& saved,
                        bool reverse, const EngineInputArgs* input, const OptTensor& x_bias) {
  count_engine_run(EngineRun::GruForward);
  if (input) count_engine_run(EngineRun::GruForwardInput);
  const EngineFwdKernels& k = engine_kernels();
  const int64_t T = s.T, B = s.B, H = s.H, W = k.width;
  const at::Tensor whh = w_hh.contiguous();
  const int64_t hh_floats = panel_floats(3, H, H, W);
  const int64_t I = input ? s.I : 0;
  const int64_t panel_total = hh_floats + (I ? panel_floats(3, H, I, W) : 0);
  // Note [Chunked input part]: the steps of one chunk, and its x parts (0: step by step).
  const int64_t C = I ? input_chunk_steps(s) : 0;
  float* panel = workspace(panel_total + (C ? C * B * 3 * H : 0));
  float* chunk_p = C ? panel + panel_total : nullptr;
  float* ih_panel = I ? panel + hh_floats : nullptr;
  const at::Tensor wih = input ? input->w_ih.contiguous() : at::Tensor();
  StateBuffers state(h, T);

  GruEngineStep base{};
  base.B = B;
  base.H = H;
  base.lengths = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;
  base.panel = panel;
  base.b_hn = b_hn.defined() ? cptr(b_hn) : nullptr;
  base.input = call_input(input, ih_panel);
  base.x_bias = !input && x_bias ? cptr(*x_bias) : nullptr;
  const float* x_p = input ? cptr(input->x) : nullptr;
  const float* xg_p = input ? nullptr : cptr(xg);
  float* y_p = ptr(y);
  float* saved_p = saved.defined() ? ptr(saved) : nullptr;

  const int64_t panel_bytes = panel_total * int64_t(sizeof(float));
  const int want = team_size(s, 3, W);
  TimedSplit split(plan_split(EngineRun::GruForwardRows, s, panel_bytes,
                              std::min(want, team_capacity()), (saved_p ? 2 : 0) + (I ? 1 : 0)));
  run_team(want, [&](int tid, int n, SpinBarrier& barrier) {
    int64_t u0, u1;
    team_slice(H, W, tid, n, &u0, &u1);
    k.pack(cptr(whh), 3, H, H, u0, u1, const_cast<float*>(base.panel));
    if (I) k.pack(cptr(wih), 3, H, I, u0, u1, ih_panel);
    // Note [Engine row split]: rows [b0, b1) with all units, no barrier in the loop.
    RowSlice rs;
    const bool rows = enter_row_split(split, s, tid, n, barrier,
                                      EngineRun::GruForwardRows, &rs);
    if (rows) u0 = 0, u1 = H;
    const int64_t b0 = rs.b0;
    GruEngineStep p = base;
    p.B = rs.b1 - b0;
    if (base.lengths) p.lengths = base.lengths + b0;
    const bool chunks = C > 0 && !rows;
    if (chunks && tid == 0) count_engine_run(EngineRun::GruForwardChunkedInput);
    int64_t chunk_row0 = 0;
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? T - 1 - step : step;
      const int64_t off = s.offset[t] + b0;
      p.M = rs.of(s.rows[t]);
      p.t = t;
      p.h_prev = state.buf[step % 2] + b0 * H;
      p.h_next = state.buf[(step + 1) % 2] + b0 * H;
      if (chunks) {
        if (step % C == 0) {
          const ChunkRows rows_c = chunk_rows(s, step, C, reverse);
          chunk_row0 = rows_c.row0;
          chunk_input(k, base.input, x_p, 3, H, rows_c, u0, u1, chunk_p);
        }
        p.input.x = nullptr;
        p.xg = chunk_p + (off - chunk_row0) * 3 * H;
      } else if (x_p) {
        p.input.x = x_p + off * I;
      } else {
        p.xg = xg_p + off * 3 * H;
      }
      p.saved = saved_p ? saved_p + off * 4 * H : nullptr;
      p.h_out = y_p + off * H;
      if (u0 < u1) k.gru_step(p, u0, u1);
      if (!rows) barrier.wait();
    }
  });
  split.finish(T);
}

}  // namespace cpu
}  // namespace fusedrnn
