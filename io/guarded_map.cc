#include "io/guarded_map.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <utility>

namespace dp420::io {

namespace {

// One registered mapping. The handler reads the slots without a lock: a slot
// is published by storing `base` last (release) and retired by clearing it
// first, both under SlotsMutex().
struct Slot {
  std::atomic<uintptr_t> base{0};
  std::atomic<uint64_t> len{0};
  std::atomic<uint64_t> fault{kNoFault};
};

Slot g_slots[kMaxGuardedMaps];
struct sigaction g_previous;  // SIGBUS disposition before ours
uintptr_t g_page_size = 4096;

std::mutex& SlotsMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}

// A fault we do not own: what would have happened without dp420.
void Chain(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  // Default action (a fault cannot be ignored): die with SIGBUS once this
  // handler returns, since the signal stays blocked until then.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigaction(sig, &dfl, nullptr);
  raise(sig);
}

// Swaps the rest of the faulting mapping for zero pages (so the access, run
// again, succeeds) and records the lowest faulting offset.
bool Absorb(Slot& s, uintptr_t addr) {
  uintptr_t base = s.base.load(std::memory_order_acquire);
  if (base == 0) return false;
  uint64_t len = s.len.load(std::memory_order_relaxed);
  if (addr < base || addr - base >= len) return false;
  uintptr_t page = addr & ~(g_page_size - 1);
  uintptr_t end = (base + len + g_page_size - 1) & ~(g_page_size - 1);
  void* r = mmap(reinterpret_cast<void*>(page), end - page, PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (r == MAP_FAILED) return false;
  uint64_t offset = addr - base;
  uint64_t seen = s.fault.load(std::memory_order_relaxed);
  while (offset < seen && !s.fault.compare_exchange_weak(seen, offset)) {
  }
  return true;
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  int saved_errno = errno;
  bool absorbed = false;
  if (info != nullptr && info->si_code > 0) {  // a fault, not a kill()
    uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    for (Slot& s : g_slots) {
      if (Absorb(s, addr)) {
        absorbed = true;
        break;
      }
    }
  }
  if (!absorbed) Chain(sig, info, context);
  errno = saved_errno;
}

Status InstallHandler() {
  static const int error = [] {
    g_page_size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    struct sigaction sa = {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &g_previous) == 0 ? 0 : errno;
  }();
  return error == 0 ? Status::Ok() : PosixError("install the SIGBUS handler", error);
}

}  // namespace

Result<GuardedMap> GuardedMap::Map(int fd, uint64_t size) {
  if (size == 0) return Status::InvalidArgument("cannot map an empty file");
  DP420_RETURN_IF_ERROR(InstallHandler());
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return PosixError("mmap", errno);
  std::lock_guard lock(SlotsMutex());
  for (int i = 0; i < static_cast<int>(kMaxGuardedMaps); ++i) {
    Slot& s = g_slots[i];
    if (s.base.load(std::memory_order_relaxed) != 0) continue;
    s.fault.store(kNoFault, std::memory_order_relaxed);
    s.len.store(size, std::memory_order_relaxed);
    s.base.store(reinterpret_cast<uintptr_t>(p), std::memory_order_release);
    GuardedMap m;
    m.data_ = static_cast<const uint8_t*>(p);
    m.size_ = size;
    m.slot_ = i;
    return m;
  }
  munmap(p, size);
  return Status::NoMemory("more than " + std::to_string(kMaxGuardedMaps) +
                          " guarded mappings at once");
}

GuardedMap::GuardedMap(GuardedMap&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      slot_(std::exchange(o.slot_, -1)) {}

GuardedMap& GuardedMap::operator=(GuardedMap&& o) noexcept {
  if (this != &o) {
    Reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    slot_ = std::exchange(o.slot_, -1);
  }
  return *this;
}

GuardedMap::~GuardedMap() { Reset(); }

uint64_t GuardedMap::fault_offset() const {
  if (slot_ < 0) return kNoFault;
  return g_slots[slot_].fault.load(std::memory_order_acquire);
}

void GuardedMap::Reset() {
  if (data_ == nullptr) return;
  {
    std::lock_guard lock(SlotsMutex());
    g_slots[slot_].base.store(0, std::memory_order_release);
  }
  munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
  slot_ = -1;
}

}  // namespace dp420::io
