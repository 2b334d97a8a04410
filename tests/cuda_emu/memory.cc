/* Device and pinned host memory of the vitrine CUDA emulator (docs/CUDA.md).
 *
 * A device allocation is host memory: a 256-byte front guard (the user pointer is 256-byte
 * aligned, as cudaMalloc's), the user's bytes (0xFF at first: NaN floats, -1 ints), then a back
 * guard of at least 64 bytes. Guards hold GUARD_BYTE and are checked after every kernel and
 * cuBLAS call on the device and at cudaFree. Freed memory is filled with FREED_BYTE and kept in a
 * bounded quarantine (under ASan also poisoned, so a kernel touching it is reported at once);
 * when it leaves the quarantine its bytes are checked for writes after the free.
 * Pinned host memory (cudaMallocHost, cudaHostAlloc) is tracked only to tell it from pageable
 * memory and to refuse freeing anything else.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deque>
#include <map>
#include <mutex>

#include "fiber.h"
#include "internal.h"

namespace vt_emu {
namespace {

constexpr size_t FRONT = 256;
constexpr size_t BACK_MIN = 64;
constexpr unsigned char GUARD_BYTE = 0xE7, FRESH_BYTE = 0xFF, FREED_BYTE = 0xDD;
constexpr size_t QUARANTINE_BYTES = 256u << 20, QUARANTINE_COUNT = 4096;

struct alloc {
  char *raw;
  size_t raw_size;
  char *user;
  size_t size;
  int device; /* -1: pinned host memory */
};

/* The tables live as long as the process (never destroyed): memory a program never frees is
 * device memory at exit, not a host leak for LeakSanitizer to report. */
std::mutex mu;
std::map<uintptr_t, alloc> &live = *new std::map<uintptr_t, alloc>;        /* by raw address */
std::map<uintptr_t, alloc> &quarantined = *new std::map<uintptr_t, alloc>; /* by raw address */
std::deque<uintptr_t> &quarantine_fifo = *new std::deque<uintptr_t>;
size_t quarantine_bytes;
size_t used[VT_EMU_MAX_DEVICES];

/* The allocation of `m` whose raw block holds p, or nullptr. */
const alloc *find(const std::map<uintptr_t, alloc> &m, uintptr_t p) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) {
    return nullptr;
  }
  --it;
  return p < it->first + it->second.raw_size ? &it->second : nullptr;
}

/* The first byte of [p, p+n) that is not `byte`, or -1. */
long first_not(const char *p, size_t n, unsigned char byte) {
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)p[i] != byte) {
      return (long)i;
    }
  }
  return -1;
}

/* "" or a description of the damaged guard of a. */
std::string damaged_guard(const alloc &a) {
  char buf[256];
  const long f = first_not(a.raw, FRONT, GUARD_BYTE);
  if (f >= 0) {
    snprintf(buf, sizeof buf, "at byte %ld before its start", (long)FRONT - f);
    return buf;
  }
  const size_t back = a.raw_size - FRONT - a.size;
  const long b = first_not(a.user + a.size, back, GUARD_BYTE);
  if (b >= 0) {
    snprintf(buf, sizeof buf, "at byte %ld past its end", b);
    return buf;
  }
  return "";
}

void release(const alloc &a) {
#if VT_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(a.raw, a.raw_size);
#endif
  free(a.raw);
}

/* Drops the oldest quarantined blocks beyond the bounds, checking that nothing wrote to them. */
void evict(void) {
  while (!quarantine_fifo.empty() &&
         (quarantine_bytes > QUARANTINE_BYTES || quarantine_fifo.size() > QUARANTINE_COUNT)) {
    auto it = quarantined.find(quarantine_fifo.front());
    quarantine_fifo.pop_front();
    const alloc a = it->second;
    quarantined.erase(it);
    quarantine_bytes -= a.raw_size;
#if VT_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(a.raw, a.raw_size);
#endif
    const long w = first_not(a.user, a.size, FREED_BYTE);
    if (w >= 0) {
      diag("a %zu-byte allocation of device %d at %p was written after cudaFree (byte %ld) -> "
           "cudaErrorIllegalAddress", a.size, a.device, (void *)a.user, w);
      set_sticky(a.device, cudaErrorIllegalAddress);
    }
    free(a.raw);
  }
}

} // namespace

range_info classify(const void *ptr, size_t n) {
  range_info r{-1, 0, 0, 0, ""};
  const uintptr_t p = (uintptr_t)ptr;
  char buf[256];
  std::lock_guard<std::mutex> lock(mu);
  if (const alloc *a = find(live, p)) {
    r.alloc_size = a->size;
    if (a->device < 0) {
      r.pinned = 1;
      return r;
    }
    r.device = a->device;
    const uintptr_t u = (uintptr_t)a->user;
    if (p < u || p + n > u + a->size || p + n < p) {
      r.bad = 1;
      snprintf(buf, sizeof buf, "is not inside the %zu-byte allocation of device %d at %p (it "
               "starts at offset %lld)", a->size, a->device, (void *)a->user,
               (long long)(p - u));
      r.why = buf;
    }
    return r;
  }
  if (const alloc *a = find(quarantined, p)) {
    r.device = a->device;
    r.bad = 1;
    r.alloc_size = a->size;
    snprintf(buf, sizeof buf, "is in freed memory (a %zu-byte allocation of device %d at %p, "
             "released by cudaFree)", a->size, a->device, (void *)a->user);
    r.why = buf;
  }
  return r;
}

cudaError_t check_device_range(const void *p, size_t n, int dev, const char *what,
                               const char *role) {
  const range_info r = classify(p, n);
  if (r.device == dev && !r.bad) {
    return cudaSuccess;
  }
  if (r.bad) {
    diag("%s: the %s range [%p, +%zu bytes) %s -> cudaErrorInvalidValue", what, role, p, n,
         r.why.c_str());
  } else if (r.device >= 0) {
    diag("%s: the %s range [%p, +%zu bytes) is memory of device %d, not of device %d (CUDA "
         "would reach it through unified addressing; the emulator calls it a bug) -> "
         "cudaErrorInvalidValue", what, role, p, n, r.device, dev);
  } else {
    diag("%s: the %s range [%p, +%zu bytes) is host memory, not an allocation of device %d -> "
         "cudaErrorInvalidValue", what, role, p, n, dev);
  }
  return set_last(cudaErrorInvalidValue);
}

cudaError_t check_guards(int dev, const char *what) {
  std::string damage;
  alloc bad{};
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto &e : live) {
      if (e.second.device == dev) {
        damage = damaged_guard(e.second);
        if (!damage.empty()) {
          bad = e.second;
          break;
        }
      }
    }
  }
  if (damage.empty()) {
    return cudaSuccess;
  }
  diag("%s wrote outside a %zu-byte allocation of device %d at %p (its guard zone was "
       "overwritten %s) -> cudaErrorIllegalAddress", what, bad.size, dev, (void *)bad.user,
       damage.c_str());
  set_sticky(dev, cudaErrorIllegalAddress);
  return set_last(cudaErrorIllegalAddress);
}

cudaError_t mem_alloc(void **p, size_t size, int dev) {
  *p = nullptr;
  if (size == 0) {
    return cudaSuccess;
  }
  const size_t back = BACK_MIN + (64 - size % 64) % 64;
  const size_t raw_size = FRONT + size + back;
  if (raw_size < size) {
    return set_last(cudaErrorMemoryAllocation);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    if (used[dev] + size > cfg().device_mem || used[dev] + size < size) {
      return set_last(cudaErrorMemoryAllocation);
    }
    used[dev] += size;
  }
  void *raw = nullptr;
  if (posix_memalign(&raw, FRONT, raw_size) != 0) {
    std::lock_guard<std::mutex> lock(mu);
    used[dev] -= size;
    return set_last(cudaErrorMemoryAllocation);
  }
  alloc a{(char *)raw, raw_size, (char *)raw + FRONT, size, dev};
  memset(a.raw, GUARD_BYTE, FRONT);
  memset(a.user, FRESH_BYTE, size);
  memset(a.user + size, GUARD_BYTE, back);
  {
    std::lock_guard<std::mutex> lock(mu);
    live[(uintptr_t)a.raw] = a;
  }
  count(stats.mallocs);
  *p = a.user;
  return cudaSuccess;
}

cudaError_t mem_free(void *p) {
  if (p == nullptr) {
    return cudaSuccess;
  }
  std::unique_lock<std::mutex> lock(mu);
  const uintptr_t raw = (uintptr_t)p - FRONT;
  auto it = live.find(raw);
  if (it == live.end() || it->second.device < 0 || it->second.user != p) {
    const alloc *q = find(quarantined, (uintptr_t)p);
    const bool twice = q != nullptr && q->user == p;
    lock.unlock();
    diag("cudaFree(%p): %s -> cudaErrorInvalidValue", p,
         twice ? "freed twice" : "not a pointer cudaMalloc returned");
    return set_last(cudaErrorInvalidValue);
  }
  const alloc a = it->second;
  live.erase(it);
  used[a.device] -= a.size;
  const std::string damage = damaged_guard(a);
  memset(a.user, FREED_BYTE, a.size);
#if VT_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(a.user, a.size);
#endif
  quarantined[(uintptr_t)a.raw] = a;
  quarantine_fifo.push_back((uintptr_t)a.raw);
  quarantine_bytes += a.raw_size;
  evict();
  lock.unlock();
  count(stats.frees);
  if (!damage.empty()) {
    diag("cudaFree(%p): the guard zone of this %zu-byte allocation of device %d was overwritten "
         "%s -> cudaErrorIllegalAddress", p, a.size, a.device, damage.c_str());
    set_sticky(a.device, cudaErrorIllegalAddress);
    return set_last(cudaErrorIllegalAddress);
  }
  return cudaSuccess;
}

cudaError_t host_alloc(void **p, size_t size) {
  void *m = nullptr;
  if (posix_memalign(&m, 256, size > 0 ? size : 1) != 0) {
    *p = nullptr;
    return set_last(cudaErrorMemoryAllocation);
  }
  std::lock_guard<std::mutex> lock(mu);
  live[(uintptr_t)m] = alloc{(char *)m, size > 0 ? size : 1, (char *)m, size, -1};
  *p = m;
  return cudaSuccess;
}

cudaError_t host_free(void *p) {
  if (p == nullptr) {
    return cudaSuccess;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = live.find((uintptr_t)p);
    if (it != live.end() && it->second.device < 0) {
      live.erase(it);
      free(p);
      return cudaSuccess;
    }
  }
  diag("cudaFreeHost(%p): not a pointer cudaMallocHost or cudaHostAlloc returned -> "
       "cudaErrorInvalidValue", p);
  return set_last(cudaErrorInvalidValue);
}

void mem_info(int dev, size_t *free_bytes, size_t *total) {
  std::lock_guard<std::mutex> lock(mu);
  *total = cfg().device_mem;
  *free_bytes = *total - used[dev];
}

void mem_free_device(int dev) {
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = live.begin(); it != live.end();) {
    if (it->second.device == dev) {
      release(it->second);
      it = live.erase(it);
    } else {
      ++it;
    }
  }
  used[dev] = 0;
}

} // namespace vt_emu
