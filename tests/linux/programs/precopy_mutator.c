/* Keeps changing its memory in every way a pre-copied migration must follow:
 * writes pages of the first 16th of a large buffer, empties some (MADV_DONTNEED), replaces a region
 * by a new mapping at the same address, maps and unmaps others, grows its heap.
 * Prints "ready" once its buffer is filled; runs until killed. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MB (1UL << 20)
#define PAGE 4096UL

int main(int argc, char **argv) {
    size_t size = (argc > 1 ? strtoul(argv[1], 0, 10) : 64) * MB;
    uint8_t *buffer = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) return 1;
    for (size_t at = 0; at < size; at += 8) *(uint64_t *)(buffer + at) = at * 2654435761UL;
    uint8_t *spare = 0;
    char *heap = 0;
    printf("ready\n");
    fflush(stdout);
    for (uint64_t turn = 1;; turn++) {
        size_t page = (turn * 7919) % (size / PAGE / 16);
        memset(buffer + page * PAGE, (int)turn, PAGE / 2);               /* a write (its first 16th) */
        if (turn % 97 == 0)                                              /* emptied */
            madvise(buffer + ((turn * 104729) % (size / PAGE)) * PAGE, 3 * PAGE, MADV_DONTNEED);
        if (turn % 1009 == 0) {                                          /* replaced */
            uint8_t *region = buffer + MB;
            mmap(region, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            memset(region, (int)(turn >> 3), MB / 2);
        }
        if (turn % 2003 == 0) {                                          /* made and dropped */
            if (spare) munmap(spare, 2 * MB);
            spare = mmap(0, 2 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            memset(spare, (int)turn, MB);
        }
        if (turn % 5003 == 0) {                                          /* the heap grows */
            heap = malloc(64 * 1024);
            if (heap) memset(heap, (int)turn, 64 * 1024);
        }
    }
}
