/* Running a kernel in the vitrine CUDA emulator (docs/CUDA.md).
 *
 * A launch runs its blocks one after another on the calling host thread. A block's threads are
 * fibers (fiber.h) that run until they block: at __syncthreads(), at a warp intrinsic whose other
 * lanes have not arrived yet, or when they return. A blocking fiber switches straight to the next
 * runnable one (a run queue in the configured order: forward, reverse, or a seeded shuffle drawn
 * again at every pick; the lanes a warp intrinsic releases go first, so a warp runs through its
 * shuffles while its stacks are warm); when none is left it switches to the scheduler, which
 * either releases a barrier every live thread waits at (all at the same site) or reports what
 * went wrong:
 *   - a thread exited while others wait at a barrier, or threads wait at different barriers;
 *   - a warp intrinsic whose mask names an exited lane, a lane that does not exist, or lanes
 *     waiting at different intrinsics (call sites, masks or kinds) -- detected when they arrive;
 *   - deadlock: every live thread blocked and nothing can proceed.
 * A failure abandons the kernel (its fibers are never resumed; later blocks do not run), prints
 * one "vt_emu:" line and becomes the device's sticky error. After every kernel the device's
 * allocations' guard zones are checked (memory.cc).
 */
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "fiber.h"
#include "internal.h"

__thread vt_emu_builtins vt_emu_bi;
__thread void *vt_emu_dyn_smem;
__thread unsigned vt_emu_atomic_ops;

namespace vt_emu {
namespace {

/* failure paths: out of line, so the fast paths keep small frames */
#define COLD __attribute__((noinline, cold))

enum : uint8_t { F_RUNNABLE, F_BARRIER, F_WARP, F_EXITED };

struct block;

struct fiber {
  context ctx;
  block *b;
  uint3 tid;
  int linear;
  uint8_t state;
  const char *file; /* the barrier it waits at (a warp intrinsic's site is in its lane_slot) */
  int line;
  int pred; /* __syncthreads_count/and/or: its predicate, then the block's answer */
};

/* One lane's part in a warp intrinsic. */
struct lane_slot {
  uint64_t val, result;
  unsigned mask;
  int kind, arg, width;
  const char *file;
  int line;
};

struct warp {
  unsigned exists, exited, waiting; /* lane masks */
  lane_slot lane[32];
};

struct block {
  const launch_config *lc;
  kernel_body *body;
  uint3 bid;
  int n;
  fiber *f;
  warp *w;
  fiber **rq; /* ring buffer of runnable fibers, capacity rq_mask + 1 >= n */
  unsigned rq_mask, rq_head, rq_count;
  unsigned rq_hot; /* the first rq_hot entries: lanes a warp intrinsic just released */
  int order;
  uint64_t rng;
  int n_exited, n_barrier, n_warp;
  const char *bar_file; /* the first arrival's site, and whether another site differs */
  int bar_line, bar_op;
  bool bar_mismatch;
  bool failed;
  cudaError_t err;
  context sched; /* the scheduler: the host thread's own stack */
  fiber *cur;
  uint64_t switches;
};

/* Per host thread: stacks and fibers reused by every launch. */
struct host_state {
  std::vector<fiber_stack> stacks;
  std::vector<fiber> fibers;
  std::vector<warp> warps;
  std::vector<fiber *> rq;
  std::vector<uint32_t> perm;
  const void *main_lo = nullptr;
  size_t main_size = 0;
  uint64_t launches = 0;
  ~host_state() {
    for (fiber_stack &s : stacks) {
      stack_free(&s);
    }
  }
};

thread_local host_state tl_hs;
__thread block *tl_blk;

const char *const kind_name[] = {"__syncwarp",       "__shfl_sync",     "__shfl_up_sync",
                                 "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                 "__any_sync",       "__all_sync"};

/* ---- random numbers ---------------------------------------------------------------------- */

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint32_t rng32(block *b) {
  uint64_t x = b->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  b->rng = x;
  return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* ---- the run queue ------------------------------------------------------------------------ */

inline void rq_push(block *b, fiber *f) {
  b->rq[(b->rq_head + b->rq_count) & b->rq_mask] = f;
  b->rq_count++;
}

/* Lanes released by a warp intrinsic go to the front and run next (in the block's order among
 * themselves), so a warp runs through its intrinsics while its 32 stacks are in cache, instead of
 * every warp of the block taking a turn between two intrinsics. */
inline void rq_push_hot(block *b, fiber *f) {
  b->rq_head = (b->rq_head - 1) & b->rq_mask;
  b->rq[b->rq_head] = f;
  b->rq_count++;
  b->rq_hot++;
}

inline fiber *rq_pop(block *b) {
  if (b->rq_count == 0) {
    return nullptr;
  }
  const unsigned i = b->rq_head;
  const unsigned span = b->rq_hot > 0 ? b->rq_hot : b->rq_count;
  if (b->order == VT_EMU_SHUFFLE && span > 1) {
    const unsigned k = (unsigned)(((uint64_t)rng32(b) * span) >> 32);
    std::swap(b->rq[i], b->rq[(i + k) & b->rq_mask]);
  }
  fiber *f = b->rq[i];
  b->rq_head = (i + 1) & b->rq_mask;
  b->rq_count--;
  b->rq_hot -= b->rq_hot > 0;
  return f;
}

/* Switches away from the running fiber f to the next runnable one, or to the scheduler; returns
 * when f is resumed (never when dying). */
inline void leave(block *b, fiber *f, bool dying) {
  fiber *n = rq_pop(b);
  if (n == f) {
    return; // a yield that drew itself: keep running
  }
  b->switches++;
  if (n != nullptr) {
    b->cur = n;
    context_switch(&f->ctx, &n->ctx, dying);
  } else {
    context_switch(&f->ctx, &b->sched, dying);
  }
  vt_emu_bi.thread_idx = f->tid;
}

/* ---- diagnostics ------------------------------------------------------------------------- */

bool same_site(const char *fa, int la, const char *fb, int lb) {
  return la == lb && (fa == fb || strcmp(fa, fb) == 0);
}

std::string strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string site(const char *file, int line) { return strf("%s:%d", short_path(file), line); }

/* "thread 5", "threads 0-31,64,66-67" over linear ids (sorted). */
std::string thread_list(std::vector<int> ids) {
  std::sort(ids.begin(), ids.end());
  std::string s = ids.size() == 1 ? "thread " : "threads ";
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) {
      j++;
    }
    if (i > 0) {
      s += ",";
    }
    s += j > i ? strf("%d-%d", ids[i], ids[j]) : strf("%d", ids[i]);
    if (s.size() > 200) {
      s += ",...";
      break;
    }
    i = j + 1;
  }
  return s;
}

std::string lane_threads(int warp_index, unsigned lanes) {
  std::vector<int> ids;
  for (unsigned m = lanes; m != 0; m &= m - 1) {
    ids.push_back(warp_index * 32 + __builtin_ctz(m));
  }
  return thread_list(ids);
}

/* Records the block's failure and prints the one diagnostic line. */
void record_failure(block *b, cudaError_t e, const char *what) {
  const launch_config &lc = *b->lc;
  const uint3 &bd = vt_emu_bi.block_dim, &gd = vt_emu_bi.grid_dim;
  diag("kernel %s (launched at %s), block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u): "
       "%s -> %s",
       lc.site.name, site(lc.site.file, lc.site.line).c_str(), b->bid.x, b->bid.y, b->bid.z,
       gd.x, gd.y, gd.z, bd.x, bd.y, bd.z, what, cudaGetErrorName(e));
  b->failed = true;
  b->err = e;
}

/* A failure noticed by a running fiber: report it and give the thread back to the scheduler,
 * which abandons the kernel. The fiber never returns, so nothing on its stack may own memory:
 * FAIL_IN_FIBER builds the message in a statement of its own, copies it here and lets the
 * temporaries go before abandon() switches away. */
thread_local char tl_fail_msg[1024];

void keep_message(const std::string &m) {
  snprintf(tl_fail_msg, sizeof tl_fail_msg, "%s", m.c_str());
}

[[noreturn]] void abandon(block *b, cudaError_t e) {
  record_failure(b, e, tl_fail_msg);
  context_switch(&b->cur->ctx, &b->sched, true);
  __builtin_unreachable();
}

#define FAIL_IN_FIBER(b, e, message)                                                             \
  do {                                                                                           \
    keep_message(message);                                                                       \
    abandon(b, e);                                                                               \
  } while (0)

[[noreturn]] void outside_kernel(const char *what) {
  fprintf(stderr, "vt_emu: %s called outside a kernel\n", what);
  abort();
}

/* ---- barriers ----------------------------------------------------------------------------- */

int barrier(const char *file, int line, int op, int pred) {
  block *b = tl_blk;
  if (b == nullptr) {
    outside_kernel("__syncthreads");
  }
  if (barrier_dropped(file, line)) {
    note_barrier_site(file, line);
    return pred != 0; // a lone thread's count, and and or
  }
  fiber *f = b->cur;
  f->state = F_BARRIER;
  f->file = file;
  f->line = line;
  f->pred = pred;
  if (b->n_barrier == 0) {
    b->bar_file = file;
    b->bar_line = line;
    b->bar_op = op;
  } else if (op != b->bar_op || !same_site(file, line, b->bar_file, b->bar_line)) {
    b->bar_mismatch = true;
  }
  b->n_barrier++;
  leave(b, f, false);
  return f->pred;
}

void push_all(block *b, uint8_t from_state, int pred) {
  if (b->order == VT_EMU_REVERSE) {
    for (int i = b->n - 1; i >= 0; i--) {
      if (b->f[i].state == from_state) {
        b->f[i].state = F_RUNNABLE;
        b->f[i].pred = pred;
        rq_push(b, &b->f[i]);
      }
    }
  } else {
    for (int i = 0; i < b->n; i++) {
      if (b->f[i].state == from_state) {
        b->f[i].state = F_RUNNABLE;
        b->f[i].pred = pred;
        rq_push(b, &b->f[i]);
      }
    }
  }
}

void release_barrier(block *b) {
  note_barrier_site(b->bar_file, b->bar_line);
  int result = 0;
  if (b->bar_op >= 0) {
    int count = 0;
    for (int i = 0; i < b->n; i++) {
      count += b->f[i].state == F_BARRIER && b->f[i].pred != 0;
    }
    result = b->bar_op == 0 ? count : b->bar_op == 1 ? count == b->n_barrier : count > 0;
  }
  b->n_barrier = 0;
  b->bar_mismatch = false;
  push_all(b, F_BARRIER, result);
}

std::string barrier_groups(block *b) {
  // threads grouped by the barrier site they wait at
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (int i = 0; i < b->n; i++) {
    const fiber &f = b->f[i];
    if (f.state != F_BARRIER) {
      continue;
    }
    const std::string s = site(f.file, f.line);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const std::pair<std::string, std::vector<int>> &g) {
                             return g.first == s;
                           });
    if (it == groups.end()) {
      groups.push_back({s, {i}});
    } else {
      it->second.push_back(i);
    }
  }
  std::string out;
  for (size_t g = 0; g < groups.size(); g++) {
    out += (g ? "; " : "") + thread_list(groups[g].second) + " wait at __syncthreads " +
           groups[g].first;
  }
  return out;
}

void fail_barrier(block *b) {
  if (b->n_exited > 0) {
    std::vector<int> gone;
    for (int i = 0; i < b->n; i++) {
      if (b->f[i].state == F_EXITED) {
        gone.push_back(i);
      }
    }
    record_failure(b, cudaErrorLaunchFailure,
                   ("barrier not reached by every thread: " + thread_list(gone) + " exited while " +
                    barrier_groups(b))
                       .c_str());
  } else {
    record_failure(b, cudaErrorLaunchFailure, ("divergent barriers: " + barrier_groups(b)).c_str());
  }
}

/* Every live thread is blocked and no barrier can be released: say who waits for whom. */
void fail_stall(block *b) {
  std::string what = "deadlock: every live thread is blocked:";
  const int nw = (b->n + 31) / 32;
  for (int wi = 0; wi < nw; wi++) {
    warp &w = b->w[wi];
    unsigned todo = w.waiting;
    while (todo != 0) {
      const int l0 = __builtin_ctz(todo);
      const lane_slot &s0 = w.lane[l0];
      unsigned group = 0;
      for (unsigned m = todo; m != 0; m &= m - 1) {
        const int l = __builtin_ctz(m);
        if (w.lane[l].mask == s0.mask && w.lane[l].kind == s0.kind &&
            same_site(w.lane[l].file, w.lane[l].line, s0.file, s0.line)) {
          group |= 1u << l;
        }
      }
      todo &= ~group;
      what += " " + lane_threads(wi, group) + " wait in " + kind_name[s0.kind] + " at " +
              site(s0.file, s0.line) + strf(" (mask 0x%08x)", s0.mask);
      const unsigned missing = s0.mask & ~group;
      if (missing != 0) {
        what += " for " + lane_threads(wi, missing);
        const fiber &m = b->f[wi * 32 + __builtin_ctz(missing)];
        if (m.state == F_BARRIER) {
          what += ", which wait at __syncthreads " + site(m.file, m.line);
        } else if (m.state == F_WARP) {
          const lane_slot &ms = w.lane[__builtin_ctz(missing)];
          what += std::string(", which wait in ") + kind_name[ms.kind] + " at " +
                  site(ms.file, ms.line);
        }
      }
      what += ";";
    }
  }
  if (b->n_barrier > 0) {
    what += " " + barrier_groups(b);
  }
  record_failure(b, cudaErrorLaunchFailure, what.c_str());
}

/* ---- fibers ------------------------------------------------------------------------------- */

/* thread f exited while the lanes of w wait in an intrinsic whose mask names it */
[[noreturn]] COLD void fail_exited_lane(block *b, fiber *f, const lane_slot &s) {
  const int wi = f->linear >> 5;
  const unsigned bit = 1u << (f->linear & 31);
  FAIL_IN_FIBER(b, cudaErrorLaunchFailure,
                thread_list({f->linear}) + " exited while " +
                    lane_threads(wi, b->w[wi].waiting & ~bit) + " wait for it in " +
                    kind_name[s.kind] + " at " + site(s.file, s.line) +
                    strf(" (mask 0x%08x)", s.mask));
}

[[noreturn]] void fiber_exit(block *b, fiber *f) {
  f->state = F_EXITED;
  b->n_exited++;
  warp &w = b->w[f->linear >> 5];
  const unsigned bit = 1u << (f->linear & 31);
  w.exited |= bit;
  for (unsigned m = w.waiting; m != 0; m &= m - 1) {
    const lane_slot &s = w.lane[__builtin_ctz(m)];
    if (s.mask & bit) {
      fail_exited_lane(b, f, s);
    }
  }
  leave(b, f, true);
  __builtin_unreachable();
}

void fiber_entry(void *arg) {
  context_started();
  fiber *f = static_cast<fiber *>(arg);
  block *b = f->b;
  vt_emu_bi.thread_idx = f->tid;
  b->body->run();
  fiber_exit(b, f);
}

/* ---- stack overflow ----------------------------------------------------------------------- */

/* A kernel thread that overflows its fiber stack faults in the guard page below it (large frames
 * probe page by page: cmake/cuda_emu.cmake builds with -fstack-clash-protection). This SIGSEGV
 * handler, on an alternate stack, says so before the default action ends the process; any other
 * fault goes to the handler that was there before. Not under ASan, which reports faults itself. */
struct sigaction previous_segv;

void on_segv(int sig, siginfo_t *info, void *uctx) {
  block *b = tl_blk;
  const char *addr = (const char *)info->si_addr;
  const long page = sysconf(_SC_PAGESIZE);
  if (b != nullptr && b->cur != nullptr) {
    const char *lo = (const char *)b->cur->ctx.stack_lo;
    if (addr < lo && addr >= lo - page) {
      char msg[512];
      const int len = snprintf(msg, sizeof msg,
                               "vt_emu: kernel %s: thread %d overflowed its %zu-byte fiber stack "
                               "(VT_EMU_STACK_KIB sets the size)\n",
                               b->lc->site.name, b->cur->linear, b->cur->ctx.stack_size);
      if (len > 0) {
        ssize_t w = write(2, msg, (size_t)len < sizeof msg ? (size_t)len : sizeof msg - 1);
        (void)w;
      }
      signal(SIGSEGV, SIG_DFL);
      return; // the fault repeats, with the default action
    }
  }
  if (previous_segv.sa_flags & SA_SIGINFO) {
    if (previous_segv.sa_sigaction != nullptr) {
      previous_segv.sa_sigaction(sig, info, uctx);
      return;
    }
  } else if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN) {
    previous_segv.sa_handler(sig);
    return;
  }
  signal(SIGSEGV, SIG_DFL);
}

/* Once per host thread: an alternate signal stack; once per process: the handler. */
void watch_stack_overflow(void) {
  if (VT_EMU_ASAN) {
    return;
  }
  static thread_local bool have_altstack = false;
  if (!have_altstack) {
    static thread_local std::vector<char> altstack(64 * 1024);
    stack_t ss{};
    ss.ss_sp = altstack.data();
    ss.ss_size = altstack.size();
    have_altstack = sigaltstack(&ss, nullptr) == 0;
  }
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
  });
}

/* ---- the scheduler ------------------------------------------------------------------------ */

void run_block(block *b) {
  push_all(b, F_RUNNABLE, 0);
  for (;;) {
    fiber *n = rq_pop(b);
    if (n != nullptr) {
      b->cur = n;
      b->switches++;
      context_switch(&b->sched, &n->ctx);
    }
    if (b->failed || b->n_exited == b->n) {
      return;
    }
    if (b->rq_count > 0) {
      continue;
    }
    if (b->n_warp == 0 && b->n_barrier > 0) { // every live thread is at a barrier
      if (b->n_exited > 0 || b->bar_mismatch) {
        fail_barrier(b);
        return;
      }
      release_barrier(b);
      continue;
    }
    fail_stall(b);
    return;
  }
}

/* ---- warp intrinsics ---------------------------------------------------------------------- */

#define FAIL_WARP(b, message) FAIL_IN_FIBER(b, cudaErrorLaunchFailure, message)

/* lanes of one mask at different intrinsics: me (the last to arrive) and lane `other` */
[[noreturn]] COLD void fail_diverged(block *b, int wi, unsigned mask, const lane_slot &me,
                                     int other) {
  const warp &w = b->w[wi];
  const lane_slot &s = w.lane[other];
  unsigned same = 0;
  for (unsigned k = mask; k != 0; k &= k - 1) {
    const lane_slot &t = w.lane[__builtin_ctz(k)];
    if (t.mask == me.mask && t.kind == me.kind && same_site(t.file, t.line, me.file, me.line)) {
      same |= 1u << __builtin_ctz(k);
    }
  }
  FAIL_WARP(b, "warp-synchronous call diverged: " + lane_threads(wi, same) + " are in " +
                   kind_name[me.kind] + " at " + site(me.file, me.line) +
                   strf(" (mask 0x%08x)", me.mask) + ", " + lane_threads(wi, 1u << other) +
                   " in " + kind_name[s.kind] + " at " + site(s.file, s.line) +
                   strf(" (mask 0x%08x)", s.mask));
}

[[noreturn]] COLD void fail_source_lane(block *b, int wi, int l, int j, unsigned mask) {
  const lane_slot &s = b->w[wi].lane[l];
  FAIL_WARP(b, thread_list({wi * 32 + l}) + " reads lane " + std::to_string(j) + " in " +
                   kind_name[s.kind] + " at " + site(s.file, s.line) +
                   strf(", a lane outside the mask 0x%08x (its value is undefined)", mask));
}

/* The last lane of `mask` arrived: check that every lane is at the same intrinsic, compute the
 * results and make the other lanes runnable. */
void warp_complete(block *b, int wi, unsigned mask, int self) {
  warp &w = b->w[wi];
  const lane_slot &me = w.lane[self];
  const int kind = me.kind;
  unsigned ballot = 0;
  for (unsigned m = mask; m != 0; m &= m - 1) {
    const int l = __builtin_ctz(m);
    const lane_slot &s = w.lane[l];
    if (__builtin_expect(s.mask != mask || s.kind != kind || s.line != me.line ||
                             (s.file != me.file && strcmp(s.file, me.file) != 0),
                         0)) {
      fail_diverged(b, wi, mask, me, l);
    }
    ballot |= (unsigned)(s.val != 0) << l;
  }
  switch (kind) {
  case WARP_SYNC:
    break;
  case WARP_BALLOT:
  case WARP_ANY:
  case WARP_ALL: {
    const uint64_t r = kind == WARP_BALLOT ? ballot
                       : kind == WARP_ANY  ? (uint64_t)(ballot != 0)
                                           : (uint64_t)(ballot == mask);
    for (unsigned m = mask; m != 0; m &= m - 1) {
      w.lane[__builtin_ctz(m)].result = r;
    }
    break;
  }
  default:
    // PTX shfl.sync: segments of `width` lanes; b is taken mod 32; a source outside the
    // segment (up, down, xor towards a later segment) gives the lane its own value
    for (unsigned m = mask; m != 0; m &= m - 1) {
      const int l = __builtin_ctz(m);
      lane_slot &s = w.lane[l];
      const int width = s.width, seg = l & ~(width - 1), last = seg + width - 1;
      const int bval = s.arg & 31;
      int j;
      if (kind == WARP_SHFL_XOR) {
        j = l ^ bval;
        j = j <= last ? j : l;
      } else if (kind == WARP_SHFL_IDX) {
        j = seg | (bval & (width - 1));
      } else if (kind == WARP_SHFL_DOWN) {
        j = l + bval;
        j = j <= last ? j : l;
      } else { // up
        j = l - bval;
        j = j >= seg ? j : l;
      }
      if (__builtin_expect(!((mask >> j) & 1u), 0)) {
        fail_source_lane(b, wi, l, j, mask);
      }
      s.result = w.lane[j].val;
    }
  }
  w.waiting &= ~mask;
  const unsigned others = mask & ~(1u << self);
  // pushed to the front: ascending lanes pop first in forward order, descending in reverse
  fiber *base = b->f + wi * 32;
  if (b->order == VT_EMU_REVERSE) {
    for (unsigned m = others; m != 0; m &= m - 1) {
      fiber *g = base + __builtin_ctz(m);
      g->state = F_RUNNABLE;
      rq_push_hot(b, g);
    }
  } else {
    for (unsigned m = others; m != 0; m &= m - (1u << (31 - __builtin_clz(m)))) {
      fiber *g = base + (31 - __builtin_clz(m));
      g->state = F_RUNNABLE;
      rq_push_hot(b, g);
    }
  }
  b->n_warp -= __builtin_popcount(others);
}

} // namespace

/* ---- the kernel-side entry points (vt_emu_kernel.h) --------------------------------------- */

void syncthreads(const char *file, int line) { (void)barrier(file, line, -1, 0); }

int syncthreads_pred(int op, int pred, const char *file, int line) {
  return barrier(file, line, op, pred);
}

namespace {

/* a lane arrived at a warp intrinsic with a mask or width that cannot work */
std::string arrival_message(block *b, fiber *f, int kind, unsigned mask, int width,
                            const char *file, int line) {
  const int lane = f->linear & 31, wi = f->linear >> 5;
  const warp &w = b->w[wi];
  const std::string who = thread_list({f->linear}) + " calls " + kind_name[kind] + " at " +
                          site(file, line);
  if (!((mask >> lane) & 1u)) {
    return who + strf(" with mask 0x%08x, which does not include its own lane %d", mask, lane);
  }
  if (mask & ~w.exists) {
    return who + strf(" with mask 0x%08x, which names lanes that do not exist (warp %d has lanes "
                      "0x%08x; the block has %d threads)",
                      mask, wi, w.exists, b->n);
  }
  if (mask & w.exited) {
    return who + strf(" with mask 0x%08x, but ", mask) + lane_threads(wi, mask & w.exited) +
           " of the mask exited";
  }
  return who + strf(" with width %d (not a power of two up to 32)", width);
}

[[noreturn]] COLD void fail_arrival(block *b, fiber *f, int kind, unsigned mask, int width,
                                    const char *file, int line) {
  FAIL_WARP(b, arrival_message(b, f, kind, mask, width, file, line));
}

} // namespace

uint64_t warp_op(int kind, unsigned mask, uint64_t value, int arg, int width, const char *file,
                 int line) {
  block *b = tl_blk;
  if (b == nullptr) {
    outside_kernel(kind_name[kind]);
  }
  fiber *f = b->cur;
  const int lane = f->linear & 31, wi = f->linear >> 5;
  const unsigned bit = 1u << lane;
  warp &w = b->w[wi];
  if (__builtin_expect(!(mask & bit) || (mask & ~w.exists) || (mask & w.exited) ||
                           (kind >= WARP_SHFL_IDX && kind <= WARP_SHFL_XOR &&
                            (width < 1 || width > 32 || (width & (width - 1)) != 0)),
                       0)) {
    fail_arrival(b, f, kind, mask, width, file, line);
  }
  lane_slot &s = w.lane[lane];
  s.val = value;
  s.mask = mask;
  s.kind = kind;
  s.arg = arg;
  s.width = width;
  s.file = file;
  s.line = line;
  w.waiting |= bit;
  if ((w.waiting & mask) != mask) {
    f->state = F_WARP;
    b->n_warp++;
    leave(b, f, false);
    return s.result;
  }
  warp_complete(b, wi, mask, lane);
  return s.result;
}

void atomic_yield(void) {
  block *b = tl_blk;
  if (b == nullptr || b->rq_count == 0) {
    return;
  }
  fiber *f = b->cur;
  rq_push(b, f);
  leave(b, f, false);
}

void nanosleep_yield(void) { atomic_yield(); }

void trap(const char *file, int line) {
  block *b = tl_blk;
  if (b == nullptr) {
    outside_kernel("__trap");
  }
  FAIL_IN_FIBER(b, cudaErrorLaunchFailure,
                thread_list({b->cur->linear}) + " called __trap() at " + site(file, line));
}

cudaError_t check_launch(const launch_config &lc, size_t max_dyn, std::string *why) {
  const dim3 &g = lc.grid, &k = lc.block;
  char buf[256];
  if (k.x == 0 || k.y == 0 || k.z == 0 || k.x > 1024 || k.y > 1024 || k.z > 64 ||
      (uint64_t)k.x * k.y * k.z > 1024) {
    snprintf(buf, sizeof buf, "block (%u,%u,%u): each dimension >= 1, x and y <= 1024, z <= 64, "
             "x*y*z <= 1024", k.x, k.y, k.z);
    *why = buf;
    return cudaErrorInvalidConfiguration;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
    snprintf(buf, sizeof buf, "grid (%u,%u,%u): each dimension >= 1, x <= 2^31-1, y and z <= "
             "65535", g.x, g.y, g.z);
    *why = buf;
    return cudaErrorInvalidConfiguration;
  }
  if (lc.shmem > max_dyn) {
    snprintf(buf, sizeof buf, "%zu bytes of dynamic shared memory, above the kernel's limit of "
             "%zu (cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raises it "
             "up to 227 KiB)", lc.shmem, max_dyn);
    *why = buf;
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t run_kernel(const launch_config &lc, kernel_body *body, int dev) {
  if (tl_blk != nullptr) {
    fprintf(stderr, "vt_emu: kernel %s launched from inside a kernel (not emulated)\n",
            lc.site.name);
    abort();
  }
  host_state &hs = tl_hs;
  watch_stack_overflow();
  const dim3 bd = lc.block, gd = lc.grid;
  const int n = (int)(bd.x * bd.y * bd.z), nw = (n + 31) / 32;
  while ((int)hs.stacks.size() < n) {
    fiber_stack s;
    if (!stack_alloc(&s, cfg().stack_bytes, hs.stacks.size())) {
      diag("kernel %s: cannot map %d fiber stacks of %zu bytes -> cudaErrorLaunchOutOfResources",
           lc.site.name, n, cfg().stack_bytes);
      return set_last(cudaErrorLaunchOutOfResources);
    }
    hs.stacks.push_back(s);
  }
  if ((int)hs.fibers.size() < n) {
    hs.fibers.resize(n);
    hs.warps.resize(nw);
  }
  unsigned cap = 1;
  while (cap < (unsigned)n) {
    cap *= 2;
  }
  if (hs.rq.size() < cap) {
    hs.rq.resize(cap);
  }
  if (VT_EMU_ASAN && hs.main_lo == nullptr) {
    thread_stack_bounds(&hs.main_lo, &hs.main_size);
  }

  block b{};
  b.lc = &lc;
  b.body = body;
  b.n = n;
  b.f = hs.fibers.data();
  b.w = hs.warps.data();
  b.rq = hs.rq.data();
  b.rq_mask = cap - 1;
  uint64_t seed = 0;
  b.order = order(&seed);
  b.sched.stack_lo = hs.main_lo;
  b.sched.stack_size = hs.main_size;
  const uint64_t launch_no = ++hs.launches;
  vt_emu_bi.block_dim = uint3{bd.x, bd.y, bd.z};
  vt_emu_bi.grid_dim = uint3{gd.x, gd.y, gd.z};
  count(stats.launches);

  // block order: ascending, descending (reverse), or a seeded permutation (shuffle, grids of at
  // most 2^16 blocks; larger ones ascending)
  const uint64_t nblocks = (uint64_t)gd.x * gd.y * gd.z;
  const bool permute = b.order == VT_EMU_SHUFFLE && nblocks > 1 && nblocks <= 65536;
  if (permute) {
    hs.perm.resize(nblocks);
    uint64_t r = splitmix(seed ^ splitmix(launch_no));
    for (uint32_t i = 0; i < nblocks; i++) {
      hs.perm[i] = i;
    }
    for (uint64_t i = nblocks - 1; i > 0; i--) {
      r = splitmix(r);
      std::swap(hs.perm[i], hs.perm[r % (i + 1)]);
    }
  }
  uint64_t done = 0;
  for (uint64_t i = 0; i < nblocks && !b.failed; i++) {
    const uint64_t bi = permute ? hs.perm[i] : b.order == VT_EMU_REVERSE ? nblocks - 1 - i : i;
    b.bid = uint3{(unsigned)(bi % gd.x), (unsigned)((bi / gd.x) % gd.y),
                  (unsigned)(bi / ((uint64_t)gd.x * gd.y))};
    vt_emu_bi.block_idx = b.bid;
    b.rng = splitmix(seed ^ splitmix(launch_no * 0x100000001ull + bi));
    b.rq_head = b.rq_count = b.rq_hot = 0;
    b.n_exited = b.n_barrier = b.n_warp = 0;
    b.bar_mismatch = false;
    for (int t = 0; t < n; t++) {
      fiber &f = b.f[t];
      f.b = &b;
      f.tid = uint3{(unsigned)t % bd.x, ((unsigned)t / bd.x) % bd.y, (unsigned)t / (bd.x * bd.y)};
      f.linear = t;
      f.state = F_RUNNABLE;
      context_init(&f.ctx, hs.stacks[t], fiber_entry, &f);
    }
    for (int wi = 0; wi < nw; wi++) {
      const int lanes = n - wi * 32 < 32 ? n - wi * 32 : 32;
      b.w[wi].exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
      b.w[wi].exited = b.w[wi].waiting = 0;
    }
    // dynamic shared memory: exactly the launch's bytes, 0xFF (NaN floats, -1 ints) so that a
    // read before any write shows; ASan sees accesses past its end
    void *smem = malloc(lc.shmem);
    if (lc.shmem > 0 && smem == nullptr) {
      diag("kernel %s: out of host memory for %zu bytes of shared memory", lc.site.name,
           lc.shmem);
      b.failed = true;
      b.err = cudaErrorLaunchOutOfResources;
      break;
    }
    memset(smem, 0xFF, lc.shmem);
    vt_emu_dyn_smem = smem;
    tl_blk = &b;
    run_block(&b);
    tl_blk = nullptr;
    vt_emu_dyn_smem = nullptr;
    free(smem);
    done++;
  }
  count(stats.blocks, done);
  count(stats.switches, b.switches);
  if (b.failed) {
    for (int t = 0; t < n; t++) {
      stack_clean(&hs.stacks[t]);
    }
    set_sticky(dev, b.err);
    return set_last(b.err);
  }
  return check_guards(dev, lc.site.name);
}

} // namespace vt_emu
