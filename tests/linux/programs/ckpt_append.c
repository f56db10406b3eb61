/* Open files and heap state for checkpoint/restore tests: the output of a run that was
 * checkpointed, killed and restored must equal that of an uninterrupted run.
 * Usage: ckpt_append STEPS SLEEP_MS OUTFILE INFILE
 *   OUTFILE  opened O_WRONLY|O_CREAT|O_APPEND; one line is appended per step with write(2).
 *            Offsets are printed relative to its size at start, so any starting content is fine
 *            (but compare OUTFILEs only between runs that started from the same content).
 *   INFILE   an existing file, opened O_RDONLY and read sequentially, 1 + (step % 7) bytes per
 *            step with read(2); at end of file it is rewound (lseek to 0) and read on.
 * State that a restore must bring back: both file offsets and O_APPEND, a malloc'd buffer that
 * grows by realloc every step (all that was read, plus bytes from a generator in memory), and
 * regions added to the heap with sbrk() every step (up to MAX_REGIONS), each filled from the
 * checksum of the one before. Every step checksums the whole buffer and all regions.
 * Output: one line per step, "step I read=\"...\" inpos=P out=+O heap=LEN:SUM brk=K:SUM", then
 * one "done" line. Nothing depends on time, pids or addresses. */
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

#define MAX_REGIONS 256
#define REGION_SIZE 1000   /* not a multiple of the page size */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static unsigned char *regions[MAX_REGIONS];
static int nregions;

static uint32_t next_rand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static uint32_t fnv(uint32_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static void escape(char *out, const unsigned char *in, ssize_t n) {
    for (ssize_t i = 0; i < n; i++) {
        unsigned c = in[i];
        if (c == '"' || c == '\\') out += sprintf(out, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f) *out++ = (char)c;
        else out += sprintf(out, "\\x%02x", c);
    }
    *out = 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s STEPS SLEEP_MS OUTFILE INFILE\n", argv[0]);
        return 2;
    }
    long steps = atol(argv[1]), ms = atol(argv[2]);
    struct timespec nap = {ms / 1000, (ms % 1000) * 1000000L};
    int out = open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) { perror(argv[3]); return 1; }
    int in = open(argv[4], O_RDONLY);
    if (in < 0) { perror(argv[4]); return 1; }
    struct stat st;
    if (fstat(out, &st) != 0) { perror("fstat"); return 1; }
    off_t base = st.st_size;

    unsigned char *buf = NULL;
    size_t len = 0;
    long total_read = 0, wraps = 0, appended = 0;
    uint32_t heap_sum = 0, brk_sum = 0;
    for (long i = 1; i <= steps; i++) {
        unsigned char got[8];
        ssize_t n = read(in, got, 1 + i % 7);
        if (n == 0) {   /* end of file: start over */
            wraps++;
            if (lseek(in, 0, SEEK_SET) != 0) { perror("lseek"); return 1; }
            n = read(in, got, 1 + i % 7);
        }
        if (n < 0) { perror("read"); return 1; }
        total_read += n;

        /* the malloc'd buffer: grows every step */
        size_t extra = 8 + i % 5;
        unsigned char *nb = realloc(buf, len + n + extra);
        if (!nb) { perror("realloc"); return 1; }
        buf = nb;
        memcpy(buf + len, got, n);
        len += n;
        for (size_t k = 0; k < extra; k++) buf[len++] = (unsigned char)next_rand();
        heap_sum = fnv(2166136261u, buf, len);

        /* the break: a new region every step, chained to the previous ones */
        if (nregions < MAX_REGIONS) {
            void *p = sbrk(REGION_SIZE);
            if (p == (void *)-1) { perror("sbrk"); return 1; }
            unsigned char *r = p;
            uint32_t seed = brk_sum ^ heap_sum;
            for (int k = 0; k < REGION_SIZE; k++) {
                seed = seed * 1103515245u + 12345u;
                r[k] = (unsigned char)(seed >> 16);
            }
            regions[nregions++] = r;
        }
        brk_sum = 2166136261u;
        for (int k = 0; k < nregions; k++) brk_sum = fnv(brk_sum, regions[k], REGION_SIZE);

        char shown[8 * 4 + 1], line[200];
        escape(shown, got, n);
        int w = snprintf(line, sizeof line, "step %ld read=\"%s\" heap=%zu:%08x brk=%d:%08x\n", i, shown, len,
                         heap_sum, nregions, brk_sum);
        if (write(out, line, w) != w) { perror("write"); return 1; }
        appended += w;
        off_t inpos = lseek(in, 0, SEEK_CUR), outpos = lseek(out, 0, SEEK_CUR);
        printf("step %ld read=\"%s\" inpos=%lld out=+%lld heap=%zu:%08x brk=%d:%08x\n", i, shown, (long long)inpos,
               (long long)(outpos - base), len, heap_sum, nregions, brk_sum);
        fflush(stdout);
        while (nanosleep(&nap, &nap) != 0 && errno == EINTR) {}
        nap.tv_sec = ms / 1000;
        nap.tv_nsec = (ms % 1000) * 1000000L;
    }
    if (fstat(out, &st) != 0) { perror("fstat"); return 1; }
    printf("done steps=%ld read=%ld wraps=%ld appended=%ld grew=%lld inpos=%lld heap=%zu:%08x brk=%d:%08x\n", steps,
           total_read, wraps, appended, (long long)(st.st_size - base), (long long)lseek(in, 0, SEEK_CUR), len,
           heap_sum, nregions, brk_sum);
    fflush(stdout);
    free(buf);
    return 0;
}
