/* Configuration, errors, diagnostics, statistics and barrier sites of the vitrine CUDA emulator,
 * and the vt_emu.h interface (docs/CUDA.md). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "fiber.h"
#include "internal.h"

namespace vt_emu {

counters stats;
std::atomic<int> drops_active{0};

namespace {

std::once_flag cfg_once;
config g_cfg;
std::atomic<int> g_order{VT_EMU_SHUFFLE};
std::atomic<uint64_t> g_seed{1};
std::atomic<int> g_sticky[VT_EMU_MAX_DEVICES];

thread_local cudaError_t tl_last = cudaSuccess;
thread_local char tl_diag[1024];

/* dropped barriers and the sites seen, behind g_mu; each host thread caches its answers until
 * the generation changes */
std::mutex g_mu;
std::vector<std::pair<std::string, int>> g_drops;
std::vector<std::string> g_sites;
std::atomic<unsigned> g_gen{1};

struct site_cache {
  unsigned gen = 0;
  std::vector<std::tuple<const char *, int, bool>> drop;   /* file, line, dropped */
  std::vector<std::pair<const char *, int>> noted;         /* already in g_sites */
};
thread_local site_cache tl_cache;

long env_long(const char *name, long dflt, long lo, long hi) {
  const char *s = getenv(name);
  if (s == nullptr || *s == '\0') {
    return dflt;
  }
  char *end = nullptr;
  const long v = strtol(s, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "vt_emu: ignoring %s=%s (want an integer in %ld..%ld)\n", name, s, lo, hi);
    return dflt;
  }
  return v;
}

void parse_order(const char *s) {
  if (s == nullptr || *s == '\0') {
    return;
  }
  if (strcmp(s, "forward") == 0) {
    g_order = VT_EMU_FORWARD;
  } else if (strcmp(s, "reverse") == 0) {
    g_order = VT_EMU_REVERSE;
  } else if (strncmp(s, "shuffle", 7) == 0 && (s[7] == '\0' || s[7] == ':')) {
    g_order = VT_EMU_SHUFFLE;
    if (s[7] == ':') {
      g_seed = strtoull(s + 8, nullptr, 0);
    }
  } else {
    fprintf(stderr, "vt_emu: ignoring VT_EMU_ORDER=%s (forward, reverse or shuffle[:seed])\n", s);
  }
}

void add_drop(const char *file_suffix, int line) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (file_suffix == nullptr) {
    g_drops.clear();
  } else {
    g_drops.emplace_back(file_suffix, line);
  }
  drops_active = !g_drops.empty();
  g_gen++;
}

void parse_drops(const char *s) {
  if (s == nullptr) {
    return;
  }
  std::string all(s);
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find(',', start);
    end = end == std::string::npos ? all.size() : end;
    const std::string item = all.substr(start, end - start);
    const size_t colon = item.rfind(':');
    if (colon != std::string::npos && colon > 0) {
      add_drop(item.substr(0, colon).c_str(), atoi(item.c_str() + colon + 1));
    } else {
      fprintf(stderr, "vt_emu: ignoring VT_EMU_DROP_BARRIER item '%s' (want file:line)\n",
              item.c_str());
    }
    start = end + 1;
  }
}

void load(void) {
  g_cfg.devices = (int)env_long("VT_EMU_DEVICES", 2, 0, VT_EMU_MAX_DEVICES);
  g_cfg.stack_bytes = (size_t)env_long("VT_EMU_STACK_KIB", VT_EMU_ASAN ? 256 : 64, 16, 65536) << 10;
  g_cfg.device_mem = (size_t)env_long("VT_EMU_DEVICE_MEM_MIB", 80 << 10, 1, 1 << 30) << 20;
  parse_order(getenv("VT_EMU_ORDER"));
}

bool ends_with_path(const char *file, const char *suffix) {
  const size_t fl = strlen(file), sl = strlen(suffix);
  return sl <= fl && strcmp(file + fl - sl, suffix) == 0 &&
         (sl == fl || file[fl - sl - 1] == '/' || suffix[0] == '/');
}

site_cache &cache(void) {
  site_cache &c = tl_cache;
  const unsigned gen = g_gen.load(std::memory_order_acquire);
  if (c.gen != gen) {
    c.drop.clear();
    c.noted.clear();
    c.gen = gen;
  }
  return c;
}

} // namespace

const config &cfg(void) {
  std::call_once(cfg_once, [] {
    load();
    parse_drops(getenv("VT_EMU_DROP_BARRIER"));
  });
  return g_cfg;
}

int order(uint64_t *seed) {
  (void)cfg();
  if (seed != nullptr) {
    *seed = g_seed.load(std::memory_order_relaxed);
  }
  return g_order.load(std::memory_order_relaxed);
}

cudaError_t set_last(cudaError_t e) {
  if (e != cudaSuccess) {
    tl_last = e;
  }
  return e;
}

cudaError_t peek_last(int clear) {
  const cudaError_t s = sticky(current_device());
  if (s != cudaSuccess) {
    return s; // a sticky error is never cleared by reading it
  }
  const cudaError_t e = tl_last;
  if (clear) {
    tl_last = cudaSuccess;
  }
  return e;
}

void diag(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const int head = snprintf(tl_diag, sizeof tl_diag, "vt_emu: ");
  vsnprintf(tl_diag + head, sizeof tl_diag - head, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", tl_diag);
}

const char *short_path(const char *file) {
  const char *best = nullptr;
  for (const char *key : {"/kernels/", "/tests/"}) {
    for (const char *p = strstr(file, key); p != nullptr; p = strstr(p + 1, key)) {
      if (best == nullptr || p + 1 > best) {
        best = p + 1; // the last such directory: the one nearest the file
      }
    }
  }
  if (best != nullptr) {
    return best;
  }
  if (strncmp(file, "kernels/", 8) == 0 || strncmp(file, "tests/", 6) == 0) {
    return file;
  }
  const char *slash = strrchr(file, '/');
  return slash != nullptr ? slash + 1 : file;
}

cudaError_t sticky(int dev) {
  if (dev < 0 || dev >= VT_EMU_MAX_DEVICES) {
    return cudaSuccess;
  }
  return (cudaError_t)g_sticky[dev].load(std::memory_order_acquire);
}

void set_sticky(int dev, cudaError_t e) {
  if (dev >= 0 && dev < VT_EMU_MAX_DEVICES) {
    int none = cudaSuccess;
    g_sticky[dev].compare_exchange_strong(none, (int)e); // the first error stays
  }
}

void clear_sticky(int dev) {
  if (dev >= 0 && dev < VT_EMU_MAX_DEVICES) {
    g_sticky[dev].store(cudaSuccess);
  }
}

cudaError_t check_device(int dev) {
  const int n = cfg().devices;
  if (n == 0) {
    return set_last(cudaErrorNoDevice);
  }
  if (dev < 0 || dev >= n) {
    return set_last(cudaErrorInvalidDevice);
  }
  return set_last(sticky(dev));
}

bool barrier_dropped_slow(const char *file, int line) {
  site_cache &c = cache();
  for (const auto &d : c.drop) {
    if (std::get<0>(d) == file && std::get<1>(d) == line) {
      return std::get<2>(d);
    }
  }
  bool dropped = false;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    for (const auto &d : g_drops) {
      dropped = dropped || (d.second == line && ends_with_path(file, d.first.c_str()));
    }
  }
  c.drop.emplace_back(file, line, dropped);
  return dropped;
}

void note_barrier_site(const char *file, int line) {
  site_cache &c = cache();
  for (const auto &s : c.noted) {
    if (s.first == file && s.second == line) {
      return;
    }
  }
  c.noted.emplace_back(file, line);
  const std::string name = std::string(short_path(file)) + ":" + std::to_string(line);
  std::lock_guard<std::mutex> lock(g_mu);
  for (const std::string &s : g_sites) {
    if (s == name) {
      return;
    }
  }
  g_sites.push_back(name);
}

} // namespace vt_emu

using namespace vt_emu;

extern "C" {

void vt_emu_set_order(int o, uint64_t seed) {
  (void)cfg(); // the environment must not override this later
  g_order = o == VT_EMU_FORWARD || o == VT_EMU_REVERSE ? o : VT_EMU_SHUFFLE;
  g_seed = seed;
}

int vt_emu_get_order(uint64_t *seed) { return order(seed); }

void vt_emu_reset(void) {
  for (auto &s : g_sticky) {
    s.store(cudaSuccess);
  }
  tl_last = cudaSuccess;
  tl_diag[0] = '\0';
}

const char *vt_emu_last_diagnostic(void) { return tl_diag; }

void vt_emu_stats_get(vt_emu_stats *out) {
  const auto ld = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  out->launches = ld(stats.launches);
  out->blocks = ld(stats.blocks);
  out->switches = ld(stats.switches);
  out->h2d = ld(stats.h2d);
  out->d2h = ld(stats.d2h);
  out->d2d = ld(stats.d2d);
  out->h2h = ld(stats.h2h);
  out->bytes_h2d = ld(stats.bytes_h2d);
  out->bytes_d2h = ld(stats.bytes_d2h);
  out->memsets = ld(stats.memsets);
  out->syncs = ld(stats.syncs);
  out->graph_launches = ld(stats.graph_launches);
  out->graph_nodes = ld(stats.graph_nodes);
  out->gemms = ld(stats.gemms);
  out->collectives = ld(stats.collectives);
  out->mallocs = ld(stats.mallocs);
  out->frees = ld(stats.frees);
}

void vt_emu_stats_reset(void) {
  for (std::atomic<uint64_t> *a :
       {&stats.launches, &stats.blocks, &stats.switches, &stats.h2d, &stats.d2h, &stats.d2d,
        &stats.h2h, &stats.bytes_h2d, &stats.bytes_d2h, &stats.memsets, &stats.syncs,
        &stats.graph_launches, &stats.graph_nodes, &stats.gemms, &stats.collectives,
        &stats.mallocs, &stats.frees}) {
    a->store(0, std::memory_order_relaxed);
  }
}

void vt_emu_drop_barrier(const char *file_suffix, int line) {
  (void)cfg(); // the environment's drops first, then this one
  add_drop(file_suffix, line);
}

int vt_emu_barrier_sites(char (*out)[128], int max) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (int i = 0; i < max && i < (int)g_sites.size(); i++) {
    snprintf(out[i], sizeof out[i], "%s", g_sites[i].c_str());
  }
  return (int)g_sites.size();
}

void vt_emu_clear_barrier_sites(void) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_sites.clear();
  g_gen++;
}

} // extern "C"
