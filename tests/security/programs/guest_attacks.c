/* What a MOSIX process that wants out of its sandbox tries (tests/security/).
 *
 *   guest_attacks NODE MODE [ARG]
 *
 * NODE: 0 to stay home, else the node it moves itself to first (/proc/self/migrate,
 * then it waits until /proc/self/whereami says it is there). MODE:
 *   uid          getuid32 through int $0x80 (the i386 ABI)
 *   open PATH    open(PATH, O_WRONLY|O_CREAT) through int $0x80
 *   socket       socketcall(SYS_SOCKET, AF_INET, SOCK_STREAM) through int $0x80
 *   killall      kill(-1, SIGKILL) through int $0x80: every process its uid may signal
 *   prlimit FILE prlimit64(pid read from FILE, RLIMIT_CPU, {0, 0}) through the 64-bit ABI
 * Prints "result=N" (the raw result: -errno on failure), 200 lines "after I" (each a
 * write of its own), and "end". Built with -no-pie so
 * that the i386 calls' pointers (static buffers) fit in 32 bits. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long sys32(long n, long a, long c, long d)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(c), "d"(d) : "memory");
    return r;
}

static char path[4096];
static unsigned int socket_args[3] = {2, 1, 0};

static long read_pid(const char *file)
{
    for (int i = 0; i < 3000; i++) {
        FILE *f = fopen(file, "r");
        long pid = 0;
        if (f) {
            int got = fscanf(f, "%ld", &pid);
            fclose(f);
            if (got == 1 && pid > 0)
                return pid;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, 0);
    }
    return -1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, 0, _IONBF, 0);
    if (argc < 3)
        return 2;
    int node = atoi(argv[1]);
    if (node) {
        open("/proc/self/migrate", O_WRONLY | O_CREAT, node);
        for (int i = 0; i < 3000 && open("/proc/self/whereami", O_RDONLY) != node; i++) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, 0);
        }
        printf("away=%d\n", (int)open("/proc/self/whereami", O_RDONLY));
    }
    long result;
    if (!strcmp(argv[2], "uid")) {
        result = sys32(199, 0, 0, 0);
    } else if (!strcmp(argv[2], "open") && argc > 3) {
        strncpy(path, argv[3], sizeof path - 1);
        result = sys32(5, (long)path, O_WRONLY | O_CREAT, 0600);
    } else if (!strcmp(argv[2], "killall")) {
        result = sys32(37, -1, 9, 0);
    } else if (!strcmp(argv[2], "socket")) {
        result = sys32(102, 1, (long)socket_args, 0);
    } else if (!strcmp(argv[2], "prlimit") && argc > 3) {
        struct rlimit zero = {0, 0};
        result = syscall(SYS_prlimit64, read_pid(argv[3]), RLIMIT_CPU, &zero, 0);
        if (result < 0)
            result = -(long)errno;
    } else {
        return 2;
    }
    printf("result=%ld\n", result);
    /* what it does after the call: none of it may happen when the call kills it */
    for (int i = 0; i < 200; i++)
        printf("after %d\n", i);
    printf("end\n");
    return 0;
}
