// The row split of the CPU engines (Note [Engine row split] in engine_fwd.cpp): whether a
// team's threads own batch rows (all units) rather than hidden units (all rows), and the
// start of a team body that takes it.
#pragma once

#include <cstdint>

#include "../checks.h"
#include "dispatch.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

// The rule, forward and backward alike (engine_fwd.cpp): n threads, panel_bytes the whole
// packed weights the loop reads (W_hh, and W_hr with projection).
bool split_rows(const LayerSizes& s, int64_t panel_bytes, int n);

// For thread tid of a team of n, after it packed its share of the panels: on the row split
// counts the call as `kind` (once), waits until every share is packed, sets [*b0, *b1) to
// the thread's rows and returns true; otherwise sets [0, B) and returns false.
inline bool enter_row_split(const LayerSizes& s, int64_t panel_bytes, int tid, int n,
                            SpinBarrier& barrier, EngineRun kind, int64_t* b0, int64_t* b1) {
  *b0 = 0;
  *b1 = s.B;
  if (!split_rows(s, panel_bytes, n)) return false;
  if (tid == 0) count_engine_run(kind);
  barrier.wait();
  team_slice(s.B, 1, tid, n, b0, b1);
  return true;
}

}  // namespace cpu
}  // namespace fusedrnn
