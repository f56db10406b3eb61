/* Floating-point and signal state for checkpoint/restore tests: the output of a run that was
 * checkpointed, killed and restored must equal that of an uninterrupted run.
 * Usage: ckpt_fpu STEPS SLEEP_MS [auto|sse]
 *   auto (default) uses AVX (ymm registers) when the CPU has it, else SSE2; "sse" forces SSE2.
 *   Both paths compute the same lane-wise operations, so their output is identical.
 * State that a restore must bring back:
 *   - chaotic logistic maps in 4 double lanes (an __m256d, or two __m128d), an accumulator
 *     vector and an __m128d sum, held in xmm/ymm registers across each sleep (the sleep and
 *     the self-kill are inline `syscall`s with "+x" operands, which the kernel preserves);
 *   - an x87 long double logistic map held in st(0) across the sleep ("+t");
 *   - MXCSR rounding toward zero and the x87 control word rounding upward (set at start; any
 *     loss changes the very next results, and glibc's printf rounds by the x87 mode);
 *   - a SIGUSR1 handler (sigaction, SA_RESTART) that counts and iterates its own FP value,
 *     sent every 3rd step by kill(getpid(), SIGUSR1) while the vector registers are live;
 *   - SIGUSR2 blocked by sigprocmask (reported at the end).
 * Output: one line per step, "step I a=... b=... s=... x=... handled=H h=...", then one "done"
 * line. Nothing depends on time, pids or addresses. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KILL_EVERY 3

static struct timespec nap;
static long self_pid;
static volatile sig_atomic_t handled;
static volatile double hval = 0.3;

static void on_usr1(int sig) {
    /* The kernel starts a handler with default FP control state; whatever it is, it is the
     * same in every run, and the interrupted code's registers come back at sigreturn. */
    (void)sig;
    handled++;
    double v = hval;
    __m128d c = _mm_set_sd((double)handled);
    double root = _mm_cvtsd_f64(_mm_sqrt_sd(c, c));
    hval = 3.9 * v * (1.0 - v) + root * 1e-9;
}

static void print_step(long i, const double a[4], const double b[4], const double s[2], long double x) {
    printf("step %ld a=%.17g %.17g %.17g %.17g b=%.17g %.17g %.17g %.17g s=%.17g %.17g x=%.21Lg"
           " handled=%d h=%.17g\n",
           i, a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], s[0], s[1], x, (int)handled, hval);
    fflush(stdout);
}

/* nanosleep(&nap, NULL) and kill(self, SIGUSR1) as bare syscalls, so that the operands listed
 * stay in registers across them (the compiler would spill them around a libc call). */
#define SLEEP_KEEP(...)                                                                        \
    do {                                                                                       \
        long r_ = SYS_nanosleep;                                                               \
        __asm__ volatile("syscall" : "+a"(r_), __VA_ARGS__ : "D"(&nap), "S"(0L)                \
                         : "rcx", "r11", "memory");                                            \
    } while (0)
#define KILL_KEEP(...)                                                                         \
    do {                                                                                       \
        long r_ = SYS_kill;                                                                    \
        __asm__ volatile("syscall" : "+a"(r_), __VA_ARGS__ : "D"(self_pid), "S"((long)SIGUSR1) \
                         : "rcx", "r11", "memory");                                            \
    } while (0)

__attribute__((target("avx"))) static void run_avx(long steps) {
    const __m256d r = _mm256_set_pd(3.99, 3.9, 3.8, 3.7);
    const __m256d one = _mm256_set1_pd(1.0), decay = _mm256_set1_pd(0.9);
    const __m128d three = _mm_set1_pd(3.0);
    __m256d a = _mm256_set_pd(0.4, 0.3, 0.2, 0.1);
    __m256d b = _mm256_setzero_pd();
    __m128d s = _mm_setzero_pd();
    long double x = 0.1L;
    /* no compile-time folding of the first step (it would round to nearest) */
    __asm__ volatile("" : "+x"(a), "+x"(b), "+x"(s), "+t"(x));
    for (long i = 1; i <= steps; i++) {
        a = _mm256_mul_pd(r, _mm256_mul_pd(a, _mm256_sub_pd(one, a)));
        b = _mm256_add_pd(_mm256_mul_pd(b, decay), _mm256_div_pd(a, _mm256_add_pd(b, one)));
        s = _mm_add_pd(s, _mm_div_pd(_mm256_castpd256_pd128(b), _mm_add_pd(_mm256_extractf128_pd(a, 1), three)));
        x = 3.99L * x * (1.0L - x);
        if (i % KILL_EVERY == 0) KILL_KEEP("+x"(a), "+x"(b), "+x"(s), "+t"(x));
        double av[4], bv[4], sv[2];
        _mm256_storeu_pd(av, a);
        _mm256_storeu_pd(bv, b);
        _mm_storeu_pd(sv, s);
        print_step(i, av, bv, sv, x);
        SLEEP_KEEP("+x"(a), "+x"(b), "+x"(s), "+t"(x));
    }
}

static void run_sse(long steps) {
    const __m128d rlo = _mm_set_pd(3.8, 3.7), rhi = _mm_set_pd(3.99, 3.9);
    const __m128d one = _mm_set1_pd(1.0), decay = _mm_set1_pd(0.9), three = _mm_set1_pd(3.0);
    __m128d alo = _mm_set_pd(0.2, 0.1), ahi = _mm_set_pd(0.4, 0.3);
    __m128d blo = _mm_setzero_pd(), bhi = _mm_setzero_pd();
    __m128d s = _mm_setzero_pd();
    long double x = 0.1L;
    __asm__ volatile("" : "+x"(alo), "+x"(ahi), "+x"(blo), "+x"(bhi), "+x"(s), "+t"(x));
    for (long i = 1; i <= steps; i++) {
        alo = _mm_mul_pd(rlo, _mm_mul_pd(alo, _mm_sub_pd(one, alo)));
        ahi = _mm_mul_pd(rhi, _mm_mul_pd(ahi, _mm_sub_pd(one, ahi)));
        blo = _mm_add_pd(_mm_mul_pd(blo, decay), _mm_div_pd(alo, _mm_add_pd(blo, one)));
        bhi = _mm_add_pd(_mm_mul_pd(bhi, decay), _mm_div_pd(ahi, _mm_add_pd(bhi, one)));
        s = _mm_add_pd(s, _mm_div_pd(blo, _mm_add_pd(ahi, three)));
        x = 3.99L * x * (1.0L - x);
        if (i % KILL_EVERY == 0) KILL_KEEP("+x"(alo), "+x"(ahi), "+x"(blo), "+x"(bhi), "+x"(s), "+t"(x));
        double av[4], bv[4], sv[2];
        _mm_storeu_pd(av, alo);
        _mm_storeu_pd(av + 2, ahi);
        _mm_storeu_pd(bv, blo);
        _mm_storeu_pd(bv + 2, bhi);
        _mm_storeu_pd(sv, s);
        print_step(i, av, bv, sv, x);
        SLEEP_KEEP("+x"(alo), "+x"(ahi), "+x"(blo), "+x"(bhi), "+x"(s), "+t"(x));
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s STEPS SLEEP_MS [auto|sse]\n", argv[0]);
        return 2;
    }
    long steps = atol(argv[1]), ms = atol(argv[2]);
    int use_avx = !(argc > 3 && !strcmp(argv[3], "sse")) && __builtin_cpu_supports("avx");
    nap.tv_sec = ms / 1000;
    nap.tv_nsec = (ms % 1000) * 1000000L;
    self_pid = getpid();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) { perror("sigaction"); return 1; }
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0) { perror("sigprocmask"); return 1; }

    _MM_SET_ROUNDING_MODE(_MM_ROUND_TOWARD_ZERO);
    unsigned short cw;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    cw = (cw & ~0x0C00) | 0x0800;   /* x87 rounding: upward */
    __asm__ volatile("fldcw %0" : : "m"(cw));

    if (use_avx) run_avx(steps);
    else run_sse(steps);

    sigset_t now;
    struct sigaction cur;
    sigprocmask(SIG_BLOCK, NULL, &now);
    sigaction(SIGUSR1, NULL, &cur);
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    printf("done steps=%ld handled=%d h=%.17g usr1-handler=%s usr1-restart=%s usr1-blocked=%s usr2-blocked=%s"
           " mxcsr=0x%04x x87cw=0x%04x\n",
           steps, (int)handled, hval, cur.sa_handler == on_usr1 ? "yes" : "no",
           (cur.sa_flags & SA_RESTART) ? "yes" : "no", sigismember(&now, SIGUSR1) ? "yes" : "no",
           sigismember(&now, SIGUSR2) ? "yes" : "no", _mm_getcsr() & 0xffc0u, (unsigned)cw);
    fflush(stdout);
    return 0;
}
