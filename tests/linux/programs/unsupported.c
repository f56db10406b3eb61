/* Make one call MOSIX treats specially, then report what came back.
 * Usage: unsupported WHAT  — prints "WHAT=RESULT" or "WHAT:ERRNONAME" and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(const char *what, long r) {
    if (r == -1) printf("%s:%s\n", what, strerrorname_np(errno));
    else printf("%s=%ld\n", what, r);
    return 0;
}

static int thread_fn(void *arg) { return 0; }
static void on_tstp(int sig) { _exit(42); }

int main(int argc, char **argv) {
    const char *w = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(w, "mmap-shared-rw") || !strcmp(w, "mmap-shared-ro")) {
        int fd = open("/etc/hostname", strcmp(w, "mmap-shared-rw") ? O_RDONLY : O_RDWR);
        int prot = strcmp(w, "mmap-shared-rw") ? PROT_READ : PROT_READ | PROT_WRITE;
        void *p = mmap(NULL, 4096, prot, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return report(w, -1);
        /* a private mapping is unaffected by writes through another mapping of the file */
        printf("%s=mapped first-byte=%c\n", w, *(char *)p);
        return 0;
    }
    if (!strcmp(w, "mmap-anon-shared")) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        return report(w, p == MAP_FAILED ? -1 : 0);
    }
    if (!strcmp(w, "mmap-chr")) {
        int fd = open("/dev/zero", O_RDONLY);
        void *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        return report(w, p == MAP_FAILED ? -1 : 0);
    }
    if (!strcmp(w, "prctl")) return report(w, prctl(PR_SET_DUMPABLE, 1, 0, 0, 0));
    if (!strcmp(w, "prctl-deathsig")) return report(w, prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0));
    if (!strcmp(w, "ioctl")) return report(w, ioctl(0, 0x8914 /* SIOCSIFFLAGS */, NULL));
    if (!strcmp(w, "ioctl-ok")) { int n; return report(w, ioctl(0, FIONREAD, &n) == -1 && errno != ENOTTY && errno != EINVAL ? -1 : 0); }
    if (!strcmp(w, "setrlimit")) {
        struct rlimit rl = {64, 64}, now;
        long r = setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &now);
        printf("%s=%ld nofile=%ld\n", w, r, (long)now.rlim_cur);
        return 0;
    }
    if (!strcmp(w, "getrlimit")) { struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); printf("%s=%ld/%ld\n", w, (long)rl.rlim_cur, (long)rl.rlim_max); return 0; }
    if (!strcmp(w, "shmat")) return report(w, (long)shmat(12345, NULL, 0) == -1 ? -1 : 0);
    if (!strcmp(w, "thread")) {
        static char stack[65536];
        return report(w, clone(thread_fn, stack + sizeof stack, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD, NULL));
    }
    if (!strcmp(w, "fork")) {
        pid_t pid = fork();
        if (pid == 0) _exit(7);
        int st; waitpid(pid, &st, 0);
        return report(w, WEXITSTATUS(st));
    }
    if (!strcmp(w, "vfork")) {
        pid_t pid = vfork();
        if (pid == 0) _exit(9);
        int st; waitpid(pid, &st, 0);
        return report(w, WEXITSTATUS(st));
    }
    if (!strcmp(w, "affinity")) { cpu_set_t s; return report(w, sched_getaffinity(0, sizeof s, &s)); }
    if (!strcmp(w, "priority-self")) return report(w, getpriority(PRIO_PROCESS, 0) == -1 && errno ? -1 : 0);
    if (!strcmp(w, "priority-other")) { errno = 0; return report(w, getpriority(PRIO_PROCESS, getppid()) == -1 && errno ? -1 : 0); }
    if (!strcmp(w, "sysfs")) return report(w, syscall(SYS_sysfs, 7));
    if (!strcmp(w, "illegal")) return report(w, syscall(600));
    if (!strcmp(w, "futex-shared")) { int f = 0; return report(w, syscall(SYS_futex, &f, 1 /* FUTEX_WAKE */, 1, NULL, NULL, 0)); }
    if (!strcmp(w, "futex-private")) { int f = 0; return report(w, syscall(SYS_futex, &f, 1 | 128, 1, NULL, NULL, 0)); }
    if (!strcmp(w, "sleep")) return report(w, usleep(1000));
    if (!strcmp(w, "stop-self")) {
        /* A child sends itself SIGSTOP. SIGSTOP cannot be caught, SIGTSTP can: a child whose
         * handler runs was sent SIGTSTP instead. (Catching also works in an orphaned process
         * group, where the kernel would discard a SIGTSTP with its default action.) */
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGTSTP, on_tstp);
            kill(getpid(), SIGSTOP);
            _exit(0);
        }
        int st; waitpid(pid, &st, WUNTRACED);
        if (WIFSTOPPED(st)) { printf("%s=%s\n", w, sigabbrev_np(WSTOPSIG(st))); kill(pid, SIGCONT); waitpid(pid, &st, 0); }
        else printf("%s=%s\n", w, WIFEXITED(st) && WEXITSTATUS(st) == 42 ? "TSTP" : "other");
        return 0;
    }
    fprintf(stderr, "unknown %s\n", w);
    return 2;
}
