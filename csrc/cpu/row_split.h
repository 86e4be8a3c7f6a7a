// The row split of the CPU engines (Note [Engine row split] in engine_fwd.cpp): whether a
// team's threads own batch rows (all units) rather than hidden units (all rows), and the
// start of a team body that takes it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "../checks.h"
#include "dispatch.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

// The rule, forward and backward alike (engine_fwd.cpp): n threads, panel_bytes the whole
// packed weights the loop reads (W_hh; W_ih where the forward computes the input part; W_hr
// with projection).
bool split_rows(const LayerSizes& s, int64_t panel_bytes, int n);
// Where the rule may be wrong either way, and the engines measure both splits instead (Note
// [Measured row split] in row_split.cpp).
bool row_split_doubtful(const LayerSizes& s, int64_t panel_bytes, int n);

// The split one call runs, chosen once before its team starts (every thread must take the
// same): by the split mode, the rule, or the measurements of earlier calls of the shape.
// slot >= 0: the call is a trial whose time goes to record_split (generation: the
// measurements' it belongs to).
struct SplitPlan {
  bool rows = false;
  int slot = -1;
  uint64_t generation = 0;
};
// kind: the loop (its *Rows EngineRun), n: the threads the team is asked for, variant: what
// else changes the loop's cost (the forward: saving for a backward, computing the input part).
SplitPlan plan_split(EngineRun kind, const LayerSizes& s, int64_t panel_bytes, int n,
                     int variant = 0);
// After a trial call: ran_rows, the split its team ran (a team that got one thread ran the
// unit split and records nothing), ns the team's wall time over `steps` time steps.
void record_split(const SplitPlan& plan, bool ran_rows, int64_t ns, int64_t steps);

// One call's split and its timing: enter_row_split sets ran_rows (what thread 0 of the team
// ran), and finish() records the call after the team (a no-op unless the plan is a trial).
struct TimedSplit {
  explicit TimedSplit(const SplitPlan& p) : plan(p) {}
  void finish(int64_t steps) const {
    record_split(plan, ran_rows,
                 std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now() - start).count(), steps);
  }
  const SplitPlan plan;
  bool ran_rows = false;
  const std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
};

// The measurements so far, for tests and benchmarks (_C._engine_split_records).
struct SplitRecord {
  int kind;
  int64_t B, H, R, I, panel_bytes;
  int threads, variant;
  int trials_units, trials_rows;
  double best_units_ns, best_rows_ns;  // per step; inf before the first trial
  bool decided, rows;
};
std::vector<SplitRecord> split_records();
void clear_split_records();

// The batch rows [b0, b1) a thread owns: all of them in the unit split.
struct RowSlice {
  int64_t b0 = 0, b1 = 0;
  // The thread's rows among the first M rows of a step.
  int64_t of(int64_t M) const { return std::clamp<int64_t>(M - b0, 0, b1 - b0); }
};

// For thread tid of a team of n, after it packed its share of the panels: on the row split
// (split.plan.rows and two threads at least) counts the call as `kind` (once), waits until
// every share is packed, sets *rows to the thread's rows and returns true; otherwise sets all
// B rows and returns false. Thread 0 notes the split taken in split.ran_rows.
inline bool enter_row_split(TimedSplit& split, const LayerSizes& s, int tid, int n,
                            SpinBarrier& barrier, EngineRun kind, RowSlice* rows) {
  *rows = RowSlice{0, s.B};
  const bool take = split.plan.rows && n >= 2;
  if (tid == 0) split.ran_rows = take;
  if (!take) return false;
  if (tid == 0) count_engine_run(kind);
  barrier.wait();
  team_slice(s.B, 1, tid, n, &rows->b0, &rows->b1);
  return true;
}

}  // namespace cpu
}  // namespace fusedrnn
