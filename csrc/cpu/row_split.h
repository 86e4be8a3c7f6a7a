// The row split of the CPU engines (Note [Engine row split] in engine_fwd.cpp): whether a
// team's threads own batch rows (all units) rather than hidden units (all rows), and the
// start of a team body that takes it.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../checks.h"
#include "dispatch.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

// The rule, forward and backward alike (engine_fwd.cpp): n threads, panel_bytes the whole
// packed weights the loop reads (W_hh, and W_hr with projection).
bool split_rows(const LayerSizes& s, int64_t panel_bytes, int n);

// The batch rows [b0, b1) a thread owns: all of them in the unit split.
struct RowSlice {
  int64_t b0 = 0, b1 = 0;
  // The thread's rows among the first M rows of a step.
  int64_t of(int64_t M) const { return std::clamp<int64_t>(M - b0, 0, b1 - b0); }
};

// For thread tid of a team of n, after it packed its share of the panels: on the row split
// counts the call as `kind` (once), waits until every share is packed, sets *rows to the
// thread's rows and returns true; otherwise sets all B rows and returns false.
inline bool enter_row_split(const LayerSizes& s, int64_t panel_bytes, int tid, int n,
                            SpinBarrier& barrier, EngineRun kind, RowSlice* rows) {
  *rows = RowSlice{0, s.B};
  if (!split_rows(s, panel_bytes, n)) return false;
  if (tid == 0) count_engine_run(kind);
  barrier.wait();
  team_slice(s.B, 1, tid, n, &rows->b0, &rows->b1);
  return true;
}

}  // namespace cpu
}  // namespace fusedrnn
