/* Fiber stacks and the context switch of the vitrine CUDA emulator (fiber.h). */
#include "fiber.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if VT_EMU_ASM_SWITCH
/* vt_emu_swap_context(void **save_sp, void *load_sp), System V x86-64: push the callee-saved
 * registers and the FP control state (MXCSR, x87 control word) on the current stack, save the
 * stack pointer, load the other one and pop its state. A new context's stack holds a frame that
 * "returns" into vt_emu_fiber_trampoline with r12 = arg, r13 = fn (context_init). */
asm(R"(
    .text
    .p2align 4
    .globl vt_emu_swap_context
    .hidden vt_emu_swap_context
    .type vt_emu_swap_context, @function
vt_emu_swap_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size vt_emu_swap_context, .-vt_emu_swap_context

    .p2align 4
    .type vt_emu_fiber_trampoline, @function
vt_emu_fiber_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size vt_emu_fiber_trampoline, .-vt_emu_fiber_trampoline
)");
extern "C" void vt_emu_fiber_trampoline(void);
#endif

namespace vt_emu {

static size_t page_size(void) {
  static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
  return p;
}

bool stack_alloc(fiber_stack *s, size_t size, size_t index) {
  const size_t pg = page_size();
  size = (size + pg - 1) / pg * pg;
  void *m = mmap(nullptr, size + pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) {
    return false;
  }
  if (mprotect(m, pg, PROT_NONE) != 0) { // the guard page: an overflow faults there
    munmap(m, size + pg);
    return false;
  }
  s->map = (char *)m;
  s->map_size = size + pg;
  s->lo = s->map + pg;
  s->size = size;
  s->color = (index * 7 % 64) * 64; // 64 cache-line offsets within a page
  return true;
}

void stack_clean(const fiber_stack *s) {
#if VT_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(s->lo, s->size);
#else
  (void)s;
#endif
}

void stack_free(fiber_stack *s) {
  if (s->map != nullptr) {
    munmap(s->map, s->map_size);
    s->map = nullptr;
  }
}

#if !VT_EMU_ASM_SWITCH
static void ucontext_entry(unsigned fh, unsigned fl, unsigned ah, unsigned al) {
  void (*fn)(void *) = (void (*)(void *))(((uintptr_t)fh << 32) | fl);
  fn((void *)(((uintptr_t)ah << 32) | al));
  __builtin_trap(); // fn never returns
}
#endif

void context_init(context *c, const fiber_stack &s, void (*fn)(void *), void *arg) {
  c->stack_lo = s.lo;
  c->stack_size = s.size;
  c->asan_fake = nullptr;
#if VT_EMU_ASM_SWITCH
  const uintptr_t top = ((uintptr_t)(s.lo + s.size - s.color)) & ~(uintptr_t)15;
  uint64_t *sp = (uint64_t *)(top - 80); // after the 8 slots are popped, rsp = top - 16
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = mxcsr | (uint64_t)fpcw << 32;
  sp[1] = 0;                  // r15
  sp[2] = 0;                  // r14
  sp[3] = (uint64_t)(uintptr_t)fn;  // r13
  sp[4] = (uint64_t)(uintptr_t)arg; // r12
  sp[5] = 0;                  // rbx
  sp[6] = 0;                  // rbp: ends frame-pointer walks
  sp[7] = (uint64_t)(uintptr_t)&vt_emu_fiber_trampoline;
  sp[8] = sp[9] = 0;
  c->sp = sp;
#else
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = s.lo;
  c->uc.uc_stack.ss_size = s.size;
  c->uc.uc_link = nullptr;
  const uintptr_t f = (uintptr_t)fn, a = (uintptr_t)arg;
  makecontext(&c->uc, (void (*)(void))ucontext_entry, 4, (unsigned)(f >> 32), (unsigned)f,
              (unsigned)(a >> 32), (unsigned)a);
#endif
}

void thread_stack_bounds(const void **lo, size_t *size) {
  pthread_attr_t attr;
  void *addr = nullptr;
  size_t sz = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &sz);
    pthread_attr_destroy(&attr);
  }
  *lo = addr;
  *size = sz;
}

} // namespace vt_emu
