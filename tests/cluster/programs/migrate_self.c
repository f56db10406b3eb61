/* migrate_self NODE...: for each NODE (0: home), writes it to /proc/self/migrate and at
 * once reads /proc/self/whereami, printing "NODE RESULT WHEREAMI ERRNO" (RESULT: what
 * the open returned, 0 or -1). mosix(7): the write returns when the move is over —
 * 0 if it happened, -1 if it failed — so WHEREAMI is already the new place. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        unsigned node = (unsigned)strtoul(argv[i], 0, 0);
        errno = 0;
        int result = open("/proc/self/migrate", 1 | O_CREAT, node);
        int error = result < 0 ? errno : 0;
        int where = open("/proc/self/whereami", 0);
        printf("%u %d %d %d\n", node, result, where, error);
        fflush(stdout);
    }
    return 0;
}
