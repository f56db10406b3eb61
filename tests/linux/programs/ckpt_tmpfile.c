/* An unlinked temporary file for checkpoint/restore tests: the output of a run that was
 * checkpointed, killed and restored must equal that of an uninterrupted run.
 * Usage: ckpt_tmpfile STEPS SLEEP_MS DIR
 *   Creates DIR/ckpt_tmpfile.PID.N with open(O_RDWR|O_CREAT|O_EXCL, 0600) and unlinks it at
 *   once (the name is never printed). Every step writes one variable-length record at the
 *   file's current offset (no seek: after the previous step's re-read that is the end), then
 *   lseeks to 0 and re-reads and checks every record, printing a checksum of them all. Each
 *   record carries the previous checksum and bytes from a generator kept in memory.
 * State that a restore must bring back: the unlinked file's contents, its offset, and the
 * generator and checksum in memory.
 * Output: one line per step, "step I records=R bytes=B off=O sum=SUM", then one "done" line
 * (with the file's size and link count from fstat: 0 links, it stays unlinked). Nothing
 * depends on time, pids or addresses. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct header {
    uint32_t magic, step, len;   /* len: payload bytes after the header */
    uint32_t prev_sum;           /* the checksum printed by the step before */
};
#define MAGIC 0x434b5054u        /* "CKPT" */
#define MAX_PAYLOAD 64

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint32_t next_rand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static uint32_t fnv(uint32_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 16777619u;
    return h;
}

static int read_full(int fd, void *p, size_t n) {   /* 1: got n bytes, 0: clean EOF, -1: error */
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return got == 0 ? 0 : -1;
        got += r;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s STEPS SLEEP_MS DIR\n", argv[0]);
        return 2;
    }
    long steps = atol(argv[1]), ms = atol(argv[2]);
    char path[4096];
    int fd = -1;
    for (int n = 0; fd < 0; n++) {
        snprintf(path, sizeof path, "%s/ckpt_tmpfile.%ld.%d", argv[3], (long)getpid(), n);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0 && (errno != EEXIST || n > 1000)) { perror(path); return 1; }
    }
    if (unlink(path) != 0) { perror("unlink"); return 1; }

    uint32_t sum = 0;
    long records = 0;
    for (long i = 1; i <= steps; i++) {
        unsigned char rec[sizeof(struct header) + MAX_PAYLOAD];
        struct header h = {MAGIC, (uint32_t)i, (uint32_t)(1 + next_rand() % MAX_PAYLOAD), sum};
        memcpy(rec, &h, sizeof h);
        for (uint32_t k = 0; k < h.len; k++) rec[sizeof h + k] = (unsigned char)next_rand();
        size_t size = sizeof h + h.len;
        if (write(fd, rec, size) != (ssize_t)size) { perror("write"); return 1; }

        if (lseek(fd, 0, SEEK_SET) != 0) { perror("lseek"); return 1; }
        uint32_t s = 2166136261u, prev = 0;
        long count = 0, bytes = 0;
        for (;;) {
            struct header rh;
            int r = read_full(fd, &rh, sizeof rh);
            if (r == 0) break;
            if (r < 0 || rh.magic != MAGIC || rh.step != (uint32_t)(count + 1) || rh.len < 1 ||
                rh.len > MAX_PAYLOAD || rh.prev_sum != prev) {
                printf("step %ld BAD record %ld at %ld\n", i, count + 1, bytes);
                fflush(stdout);
                return 1;
            }
            unsigned char payload[MAX_PAYLOAD];
            if (read_full(fd, payload, rh.len) != 1) {
                printf("step %ld SHORT record %ld at %ld\n", i, count + 1, bytes);
                fflush(stdout);
                return 1;
            }
            s = fnv(fnv(s, &rh, sizeof rh), payload, rh.len);
            /* the next record's prev_sum is the checksum printed after this one was added */
            prev = s;
            count++;
            bytes += sizeof rh + rh.len;
        }
        sum = s;
        records = count;
        off_t off = lseek(fd, 0, SEEK_CUR);
        printf("step %ld records=%ld bytes=%ld off=%lld sum=%08x\n", i, count, bytes, (long long)off, sum);
        fflush(stdout);
        struct timespec nap = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&nap, &nap) != 0 && errno == EINTR) {}
    }
    struct stat st;
    if (fstat(fd, &st) != 0) { perror("fstat"); return 1; }
    printf("done steps=%ld records=%ld size=%lld nlink=%ld off=%lld sum=%08x\n", steps, records, (long long)st.st_size,
           (long)st.st_nlink, (long long)lseek(fd, 0, SEEK_CUR), sum);
    fflush(stdout);
    return 0;
}
