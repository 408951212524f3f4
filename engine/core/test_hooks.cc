#include "engine/core/test_hooks.h"

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace dp420 {

namespace {
struct CrashSpec {
  std::string point;
  uint64_t after_data = 0;  // 0: no data crash point
};

const CrashSpec& Spec() {
  static const CrashSpec spec = [] {
    CrashSpec s;
    const char* env = std::getenv("DP420_TEST_CRASH");
    if (env == nullptr) return s;
    s.point = env;
    if (s.point.rfind("after-data:", 0) == 0) {
      s.after_data = std::strtoull(env + 11, nullptr, 10);
    }
    return s;
  }();
  return spec;
}

[[noreturn]] void Die() {
  raise(SIGKILL);
  std::abort();
}
}  // namespace

namespace {
std::atomic<std::function<void(const char*)>*> g_pause_hook{nullptr};
}  // namespace

void PausePoint(const char* point) {
  if (auto* hook = g_pause_hook.load(std::memory_order_acquire)) (*hook)(point);
}

void SetPausePointHookForTest(std::function<void(const char*)> hook) {
  static std::unique_ptr<std::function<void(const char*)>> held;
  auto next = hook ? std::make_unique<std::function<void(const char*)>>(std::move(hook)) : nullptr;
  g_pause_hook.store(next.get(), std::memory_order_release);
  held = std::move(next);
}

namespace {
std::atomic<const std::string*> g_crash_point{nullptr};
}  // namespace

void SetCrashPointForTest(const char* point) {
  static std::string held;
  g_crash_point.store(nullptr, std::memory_order_release);
  held = point ? point : "";
  g_crash_point.store(&held, std::memory_order_release);
}

void CrashPoint(const char* point) {
  const CrashSpec& s = Spec();
  if (!s.point.empty() && s.point == point) Die();
  const std::string* set = g_crash_point.load(std::memory_order_acquire);
  if (set != nullptr && *set == point) Die();
}

void CrashAfterData(uint64_t blocks_written) {
  const CrashSpec& s = Spec();
  if (s.after_data != 0 && blocks_written >= s.after_data) Die();
}

bool NoTmpfileForTest() {
  static const bool set = [] {
    const char* env = std::getenv("DP420_TEST_NO_TMPFILE");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }();
  return set;
}

}  // namespace dp420
