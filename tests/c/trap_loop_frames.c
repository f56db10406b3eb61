/* A harness for the C trap loop's reply steps (mosix_core/remote/trap_loop.c), fed
 * hand-made frames by tests/unit/test_trap_loop_frames.py. It includes the loop's
 * source, so it calls the static steps themselves, and is compiled with the loop's
 * flags and, where the compiler has them, -fsanitize=address,undefined: a step that
 * read past the frame it was given would end the run with a sanitizer's report.
 *
 *   trap_loop_frames MODE KIND CAPACITY ROOM PENDING_ROOM
 *
 * The call is a read(3, buffer, CAPACITY) (KIND out), a write(3, buffer, CAPACITY)
 * (in), a getppid() (values) or an access(path, CAPACITY) (path); the guest's memory
 * is a memfd filled with 0xEE. MODE
 *   receive  receive_reply on stdin, which is a stream socket the test writes to;
 *   take     take_reply on stdin's whole content (one reply frame's body), given in
 *            a buffer of exactly its size;
 *   build    build_request, stdin's content put into the guest's buffer (or path)
 *            first.
 * Prints "verdict NAME error ERRNO result RESULT", then "memory HEX" (CAPACITY + 16
 * bytes of the guest from its buffer on; not when built), "pending HEX" (the frames kept for
 * Python) and, when built, "frame HEX" (the request's head: length, then the body or
 * its beginning) and "streamed N" (its input's bytes that follow it). */

#define _GNU_SOURCE
#include "trap_loop.c"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static const char *VERDICTS[] = {[DONE] = "DONE", [NOT_OURS] = "NOT_OURS", [RESTARTED] = "RESTARTED",
                                 [FAILED] = "FAILED", [MALFORMED] = "MALFORMED"};

static void print_hex(const char *name, int fd, const uint8_t *data, size_t size, off_t offset)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (fd >= 0) {
        if (pread(fd, copy, size, offset) != (ssize_t)size) {
            perror("pread");
            exit(2);
        }
        data = copy;
    }
    printf("%s ", name);
    for (size_t k = 0; k < size; k++)
        printf("%02x", data[k]);
    printf("\n");
    free(copy);
}

/* stdin's whole content in a buffer of exactly its size */
static uint8_t *slurp(size_t *size)
{
    size_t room = 1 << 16, have = 0;
    uint8_t *data = malloc(room);
    ssize_t got;
    while ((got = read(0, data + have, room - have)) > 0) {
        have += (size_t)got;
        if (have == room)
            data = realloc(data, room *= 2);
    }
    uint8_t *exact = malloc(have ? have : 1);
    memcpy(exact, data, have);
    free(data);
    *size = have;
    return exact;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s receive|take|build values|in|out|path CAPACITY ROOM PENDING_ROOM\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1], *kind = argv[2];
    uint64_t capacity = strtoull(argv[3], 0, 0);
    size_t room = strtoull(argv[4], 0, 0), pending_room = strtoull(argv[5], 0, 0);
    uint64_t pointer = page_size();

    int mem = memfd_create("guest", 0);
    size_t guest_size = pointer + capacity + 2 * page_size();
    uint8_t *filler = malloc(guest_size);
    memset(filler, 0xEE, guest_size);
    if (mem < 0 || pwrite(mem, filler, guest_size, 0) != (ssize_t)guest_size) {
        perror("guest memory");
        return 2;
    }
    free(filler);

    struct shape shape = {.kind = SHAPE_VALUES, .nargs = 0, .size_arg = NO_ARG, .string = NO_ARG};
    int nr = SYS_getppid;
    if (!strcmp(kind, "out") || !strcmp(kind, "in")) {
        int out = !strcmp(kind, "out");
        shape = (struct shape){.kind = out ? SHAPE_OUT : SHAPE_IN, .nargs = 3, .buffer = 1, .size_arg = 2,
                               .flags = out ? FLAG_CLAMP : 0, .string = NO_ARG};
        nr = out ? SYS_read : SYS_write;
    } else if (!strcmp(kind, "path")) {
        shape = (struct shape){.kind = SHAPE_VALUES, .nargs = 2, .size_arg = NO_ARG, .string = 0};
        nr = SYS_access;
    }
    uint64_t args[MAX_ARGS] = {3, pointer, capacity};
    if (shape.string == 0)
        args[0] = pointer, args[1] = capacity;
    uint8_t *buf = malloc(room), *pending = malloc(pending_room ? pending_room : 1);
    struct trap_loop loop = {.pid = 0, .sock = 0, .mem = mem, .sigfd = -1, .wakefd = -1, .shapes = &shape,
                             .nshapes = 1, .buf = buf, .room = room, .pending = pending,
                             .pending_room = pending_room};
    struct call call = {.nr = nr, .shape = &shape, .args = args};
    int built = !strcmp(mode, "build");
    if (!built && size_up(&call) != DONE) {       /* as build_request has sized it up */
        fprintf(stderr, "the call is not ours\n");
        return 2;
    }

    enum outcome verdict;
    if (built) {
        size_t length;
        uint8_t *data = slurp(&length);
        if (pwrite(mem, data, length, (off_t)pointer) != (ssize_t)length) {
            perror("guest memory");
            return 2;
        }
        free(data);
        verdict = build_request(&loop, &call);
    } else if (!strcmp(mode, "receive")) {
        verdict = receive_reply(&loop, &call);
    } else {
        size_t length;
        uint8_t *body = slurp(&length);
        verdict = take_reply(&loop, &call, body, length);
        free(body);
    }
    printf("verdict %s error %d result %lld\n", VERDICTS[verdict], loop.error, (long long)call.result);
    if (!built)
        print_hex("memory", mem, 0, capacity + 16, (off_t)pointer);
    print_hex("pending", -1, pending, loop.pending_len, 0);
    if (built && verdict == DONE) {
        print_hex("frame", -1, buf, call.head, 0);
        printf("streamed %llu\n", (unsigned long long)call.streamed);
    }
    free(buf);
    free(pending);
    return 0;
}
