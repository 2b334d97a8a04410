/* Fibers of the vitrine CUDA emulator: stacks with a guard page and a context switch.
 *
 * On x86-64 the switch is a few lines of assembly (fiber.cc): it saves the callee-saved registers,
 * the stack pointer, MXCSR and the x87 control word of one context and restores another's; a
 * new context starts in a trampoline that calls fn(arg) and never returns. Elsewhere (or with
 * -DVT_EMU_UCONTEXT) it is swapcontext, which is correct but makes a system call per switch.
 * Under AddressSanitizer every switch is announced (asan_start before, asan_finish after), so
 * ASan knows which stack is live.
 */
#ifndef VT_EMU_FIBER_H
#define VT_EMU_FIBER_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define VT_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VT_EMU_ASAN 1
#endif
#endif
#ifndef VT_EMU_ASAN
#define VT_EMU_ASAN 0
#endif

#if defined(__x86_64__) && !defined(VT_EMU_UCONTEXT)
#define VT_EMU_ASM_SWITCH 1
#else
#define VT_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if VT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if VT_EMU_ASM_SWITCH
extern "C" void vt_emu_swap_context(void **save_sp, void *load_sp);
#endif

namespace vt_emu {

struct fiber_stack {
  char *map;       /* the mapping: a guard page, then the stack */
  size_t map_size;
  char *lo;        /* the lowest usable byte, just above the guard page */
  size_t size;
  size_t color;    /* bytes left unused at the top, different for each stack: the tops of
                      page-aligned stacks would all fall in the same cache sets */
};

/* mmap a stack of `size` bytes (rounded up to pages) under a PROT_NONE guard page; the index-th
 * of a set (for its color). */
bool stack_alloc(fiber_stack *s, size_t size, size_t index);
void stack_free(fiber_stack *s);

/* Under ASan: forgets the poisoned frames a fiber abandoned mid-kernel (a launch failure) left
 * on the stack, before it is used again. */
void stack_clean(const fiber_stack *s);

struct context {
#if VT_EMU_ASM_SWITCH
  void *sp;
#else
  ucontext_t uc;
#endif
  const void *stack_lo; /* for ASan: the stack this context runs on */
  size_t stack_size;
  void *asan_fake;      /* ASan's fake stack of this context while it is switched out */
};

/* Prepares c to run fn(arg) on s the first time it is switched to. */
void context_init(context *c, const fiber_stack &s, void (*fn)(void *), void *arg);

/* The bounds of the calling thread's own stack, for the scheduler's context under ASan. */
void thread_stack_bounds(const void **lo, size_t *size);

/* Switches from `from` (saved) to `to`. dying: `from` never runs again (ASan frees its fake
 * stack). Returns when something switches back to `from`. */
inline void context_switch(context *from, context *to, bool dying = false) {
#if VT_EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &from->asan_fake, to->stack_lo, to->stack_size);
#else
  (void)dying;
#endif
#if VT_EMU_ASM_SWITCH
  vt_emu_swap_context(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
#if VT_EMU_ASAN
  __sanitizer_finish_switch_fiber(from->asan_fake, nullptr, nullptr);
#endif
}

/* The first thing a new context does (its predecessor's switch did not return there). */
inline void context_started(void) {
#if VT_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

} // namespace vt_emu

#endif
