/* Exercise the mosix(7) programming interface: open("/proc/self/{name}", ...) returns the value.
 * Usage: procself CMD NAME [VALUE] ...   (commands run in order, one line of output each)
 *   get NAME         open(path, 0)
 *   set NAME VAL     open(path, 1|O_CREAT, VAL)
 *   swap NAME VAL    open(path, 2|O_CREAT, VAL)
 *   incluster NODE   open("/proc/self/in_cluster", O_CREAT, NODE)
 *   file NAME STR    the value is a pointer to STR (as checkpointfile wants), via syscall()
 * Each line: "NAME=VALUE" or "NAME:ERRNONAME". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long r) {
    if (r < 0) printf("%s:%s\n", name, strerrorname_np(errno));
    else printf("%s=%ld\n", name, r);
}

int main(int argc, char **argv) {
    char path[256];
    for (int i = 1; i < argc; i++) {
        const char *cmd = argv[i], *name = argv[++i];
        snprintf(path, sizeof path, "/proc/self/%s", name);
        errno = 0;
        if (!strcmp(cmd, "get")) report(name, open(path, 0));
        else if (!strcmp(cmd, "set")) report(name, open(path, 1 | O_CREAT, (int)strtol(argv[++i], 0, 0)));
        else if (!strcmp(cmd, "swap")) report(name, open(path, 2 | O_CREAT, (int)strtol(argv[++i], 0, 0)));
        else if (!strcmp(cmd, "incluster"))
            report("in_cluster", open("/proc/self/in_cluster", O_CREAT, (unsigned)strtoul(name, 0, 0)));
        else if (!strcmp(cmd, "file")) report(name, syscall(SYS_openat, AT_FDCWD, path, 1 | O_CREAT, argv[++i]));
        else { fprintf(stderr, "bad command %s\n", cmd); return 2; }
    }
    return 0;
}
