#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

#include <c10/util/Exception.h>

namespace fusedrnn {
namespace cpu {

namespace base {
void fill_capability(CapabilityKernels* table);
void fill_double_kernels(CpuKernelTable<double>* table);
}  // namespace base

#if defined(__x86_64__) || defined(_M_X64)
#define FUSEDRNN_X86 1
namespace avx2 {
void fill_capability(CapabilityKernels* table);
}
namespace avx512 {
void fill_capability(CapabilityKernels* table);
}
#endif

namespace {

enum class Capability { Default = 0, Avx2 = 1, Avx512 = 2 };

Capability detected() {
#if defined(FUSEDRNN_X86) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
    return Capability::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::Avx2;
#endif
  return Capability::Default;
}

const char* name_of(Capability c) {
  switch (c) {
    case Capability::Avx512: return "avx512";
    case Capability::Avx2: return "avx2";
    default: return "default";
  }
}

Capability parse(const std::string& name) {
  if (name == "avx512") return Capability::Avx512;
  if (name == "avx2") return Capability::Avx2;
  TORCH_CHECK_VALUE(name == "default", "fusedrnn: unknown CPU capability '", name,
                    "', expected one of 'default', 'avx2', 'avx512'");
  return Capability::Default;
}

// One table per capability, filled once; `in_use` points at the one handed out. Switching
// (set_capability) swaps the pointer, so a call already running keeps a complete table.
struct State {
  std::mutex mutex;
  CapabilityKernels tables[3];
  std::atomic<Capability> in_use{Capability::Default};
  CpuKernelTable<double> double_table;

  void install(Capability c) {
    if (c > detected()) c = detected();
    in_use.store(c, std::memory_order_release);
  }

  State() {
    base::fill_capability(&tables[static_cast<int>(Capability::Default)]);
    tables[static_cast<int>(Capability::Avx2)] = tables[static_cast<int>(Capability::Avx512)] =
        tables[static_cast<int>(Capability::Default)];
#ifdef FUSEDRNN_X86
    avx2::fill_capability(&tables[static_cast<int>(Capability::Avx2)]);
    avx512::fill_capability(&tables[static_cast<int>(Capability::Avx512)]);
#endif
    base::fill_double_kernels(&double_table);
    Capability c = detected();
    // Like ATEN_CPU_CAPABILITY: an environment variable can narrow the choice.
    if (const char* env = std::getenv("FUSEDRNN_CPU_CAPABILITY")) {
      if (*env) c = parse(env);
    }
    install(c);
  }
};

State& state() {
  static State s;
  return s;
}

}  // namespace

const CapabilityKernels& capability_kernels() {
  const State& s = state();
  return s.tables[static_cast<int>(s.in_use.load(std::memory_order_acquire))];
}
const CpuKernelTable<double>& double_kernels() { return state().double_table; }

std::string capability() { return name_of(state().in_use.load()); }

bool intel_cpu() {
  static const bool intel = [] {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
#else
    return false;
#endif
  }();
  return intel;
}

std::string set_capability(const std::string& name) {
  State& s = state();
  const Capability c = parse(name);
  std::lock_guard<std::mutex> guard(s.mutex);
  s.install(c);
  return name_of(s.in_use.load());
}

namespace {

// `what` names where the value came from, for the error message.
EngineMode parse_engine(const std::string& name, const char* what) {
  if (name == "engine") return EngineMode::Engine;
  if (name == "steps") return EngineMode::Steps;
  TORCH_CHECK_VALUE(name == "auto", "fusedrnn: ", what,
                    " must be 'auto', 'engine' or 'steps', got '", name, "'");
  return EngineMode::Auto;
}

std::atomic<int>& engine_flag() {
  static std::atomic<int> flag([] {
    const char* env = std::getenv("FUSEDRNN_CPU_ENGINE");
    return static_cast<int>(env && *env ? parse_engine(env, "FUSEDRNN_CPU_ENGINE")
                                        : EngineMode::Auto);
  }());
  return flag;
}

}  // namespace

EngineMode engine_mode() { return static_cast<EngineMode>(engine_flag().load()); }

std::string cpu_engine() {
  switch (engine_mode()) {
    case EngineMode::Engine: return "engine";
    case EngineMode::Steps: return "steps";
    default: return "auto";
  }
}

namespace {
std::atomic<int64_t> engine_run_counts[15];
std::atomic<int> engine_split_flag{static_cast<int>(EngineSplit::Auto)};
}  // namespace

EngineSplit engine_split() { return static_cast<EngineSplit>(engine_split_flag.load()); }

std::string engine_split_name() {
  switch (engine_split()) {
    case EngineSplit::Units: return "units";
    case EngineSplit::Rows: return "rows";
    case EngineSplit::Rule: return "rule";
    default: return "auto";
  }
}

std::string set_engine_split(const std::string& name) {
  EngineSplit split = EngineSplit::Auto;
  if (name == "units") {
    split = EngineSplit::Units;
  } else if (name == "rows") {
    split = EngineSplit::Rows;
  } else if (name == "rule") {
    split = EngineSplit::Rule;
  } else {
    TORCH_CHECK_VALUE(name == "auto", "fusedrnn: unknown engine split '", name,
                      "', expected one of 'auto', 'rule', 'units', 'rows'");
  }
  engine_split_flag = static_cast<int>(split);
  return engine_split_name();
}

void count_engine_run(EngineRun kind) {
  engine_run_counts[static_cast<int>(kind)].fetch_add(1, std::memory_order_relaxed);
}

std::vector<int64_t> engine_runs() {
  std::vector<int64_t> out;
  for (const auto& c : engine_run_counts) out.push_back(c.load(std::memory_order_relaxed));
  return out;
}

std::string set_cpu_engine(const std::string& name) {
  engine_flag() = static_cast<int>(parse_engine(name, "CPU engine mode"));
  return cpu_engine();
}

}  // namespace cpu
}  // namespace fusedrnn
