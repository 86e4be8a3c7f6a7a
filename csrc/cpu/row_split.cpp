// The measured choice between the engines' row and unit splits (Note [Measured row split]).

#include "row_split.h"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <map>
#include <mutex>
#include <new>

namespace fusedrnn {
namespace cpu {

// Note [Measured row split]
// Whether a thread should own batch rows (all units) or hidden units (all rows) (Note [Engine
// row split] in engine_fwd.cpp) turns on whether the whole panel stays in one core's L2
// between steps, and that is not a property of the shape alone: on a Xeon with 2 MiB of L2
// per core the LSTM's H=256 panel (1.25 MiB) made the row split 1.16x faster at B=8 on one
// host (benchmarks/results/intel-xeon-2026-12-02-row-split-ab.md) and 1.15x slower on
// another host of the same model, whose L2 the VM shares with a busy neighbour
// (benchmarks/results/intel-xeon-2026-12-02-measured-split-ab.md). So where the rule of
// split_rows leaves room for doubt, the engine measures: for each call shape (the loop
// kind, B, H, R, I, the panel bytes, the thread count and the variant: saving for a
// backward, computing the input part), after kWarmup untimed calls, kTrials calls of each
// split alternate, each timed per step (the team region's wall time over T), and from then
// on the split with the lower best time runs. The doubt zone (row_split_doubtful): the rows
// are not packed, each thread gets at least kMinRowsPerThread rows, and the panel is above
// a quarter of one core's L2 and within max(3/4 L2, kL2Slice). Outside it the rule decides.
// Results do not depend on the split (every output is the same FMA chain either way, Note
// [CPU time-loop engine]), so a trial call returns what the chosen split would have. The
// table holds up to kMaxShapes shapes; beyond that new shapes take the rule. The "rule"
// split mode (_set_engine_split) takes the rule everywhere and measures nothing.

namespace {

constexpr int kWarmup = 2;          // first calls of a shape, not timed (cold caches, idle
                                    // threads waking up), run by the rule
constexpr int kTrials = 3;          // timed calls of each split before choosing
constexpr size_t kMaxShapes = 256;  // shapes remembered

using Key = std::array<int64_t, 8>;

struct Entry {
  int seen = 0;           // calls planned so far (up to kWarmup)
  int calls[2] = {0, 0};  // timed calls of units [0] and rows [1]
  double best[2] = {std::numeric_limits<double>::infinity(),
                    std::numeric_limits<double>::infinity()};  // ns per step
  bool decided = false;
  bool rows = false;
};

class SplitTable {
 public:
  static SplitTable& get() {
    static SplitTable* table = new SplitTable();  // never destroyed: used at exit by ops
    return *table;
  }

  // -1: no room (take the rule); else the slot of the entry and *entry a copy of it, and
  // *generation the table's (a record of an earlier generation is dropped: see clear).
  int find(const Key& key, Entry* entry, uint64_t* generation) {
    std::lock_guard<std::mutex> lock(mutex_);
    *generation = generation_;
    auto it = index_.find(key);
    if (it == index_.end()) {
      if (entries_.size() >= kMaxShapes) return -1;
      it = index_.emplace(key, static_cast<int>(entries_.size())).first;
      entries_.push_back({key, Entry{}});
    }
    Entry& e = entries_[it->second].second;
    *entry = e;
    if (e.seen < kWarmup) ++e.seen;
    return it->second;
  }

  void record(int slot, uint64_t generation, bool rows, double ns_per_step) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Cleared since the call was planned: its slot may now hold another shape.
    if (generation != generation_) return;
    Entry& e = entries_[slot].second;
    if (e.decided || e.calls[rows] >= kTrials) return;  // (concurrent calls: trials to spare)
    e.calls[rows] += 1;
    e.best[rows] = std::min(e.best[rows], ns_per_step);
    if (e.calls[0] >= kTrials && e.calls[1] >= kTrials) {
      e.decided = true;
      e.rows = e.best[1] < e.best[0];
    }
  }

  std::vector<std::pair<Key, Entry>> snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.clear();
    index_.clear();
    ++generation_;
  }

 private:
  SplitTable() {
    // A fork while another thread held the lock would leave the child's copy locked.
    pthread_atfork(nullptr, nullptr, [] { new (&get().mutex_) std::mutex(); });
  }
  std::mutex mutex_;
  std::map<Key, int> index_;
  std::vector<std::pair<Key, Entry>> entries_;
  uint64_t generation_ = 0;
};

}  // namespace

SplitPlan plan_split(EngineRun kind, const LayerSizes& s, int64_t panel_bytes, int n,
                     int variant) {
  SplitPlan plan;
  const EngineSplit mode = engine_split();
  if (n < 2 || mode == EngineSplit::Units) return plan;
  if (mode == EngineSplit::Rows) {
    plan.rows = true;
    return plan;
  }
  if (mode == EngineSplit::Rule || !row_split_doubtful(s, panel_bytes, n)) {
    plan.rows = split_rows(s, panel_bytes, n);
    return plan;
  }
  const Key key{static_cast<int64_t>(kind), s.B, s.H, s.R, s.I, panel_bytes, n, variant};
  Entry e;
  const int slot = SplitTable::get().find(key, &e, &plan.generation);
  if (slot < 0) {
    plan.rows = split_rows(s, panel_bytes, n);
  } else if (e.decided) {
    plan.rows = e.rows;
  } else if (e.seen < kWarmup) {
    plan.rows = split_rows(s, panel_bytes, n);
  } else {
    plan.rows = e.calls[1] <= e.calls[0];  // rows first, then alternate
    plan.slot = slot;
  }
  return plan;
}

void record_split(const SplitPlan& plan, bool ran_rows, int64_t ns, int64_t steps) {
  if (plan.slot < 0 || ran_rows != plan.rows || steps < 1) return;
  SplitTable::get().record(plan.slot, plan.generation, plan.rows,
                           static_cast<double>(ns) / steps);
}

std::vector<SplitRecord> split_records() {
  std::vector<SplitRecord> out;
  for (const auto& [key, e] : SplitTable::get().snapshot()) {
    SplitRecord r;
    r.kind = static_cast<int>(key[0]);
    r.B = key[1];
    r.H = key[2];
    r.R = key[3];
    r.I = key[4];
    r.panel_bytes = key[5];
    r.threads = static_cast<int>(key[6]);
    r.variant = static_cast<int>(key[7]);
    r.trials_units = e.calls[0];
    r.trials_rows = e.calls[1];
    r.best_units_ns = e.best[0];
    r.best_rows_ns = e.best[1];
    r.decided = e.decided;
    r.rows = e.rows;
    out.push_back(r);
  }
  return out;
}

void clear_split_records() { SplitTable::get().clear(); }

}  // namespace cpu
}  // namespace fusedrnn
