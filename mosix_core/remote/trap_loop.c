/* The guest's hot path in C: wait for the guest's next stop and, while each stop
 * is a forwarded call of a simple shape (values and at most one input or output
 * buffer), send it home, put the reply into the guest and resume it — without
 * returning to Python. Everything else is handed back to Python (mosix_core/remote/
 * fastpath.py), which handles it as it always did.
 *
 * One forwarded call goes through four steps, each returning an ``enum outcome``
 * (errno, when there is one, in ``loop->error``):
 *   build_request   the request frame's head into the loop's buffer (NOT_OURS: Python
 *                   answers the call; nothing has been sent and the guest is untouched)
 *   send_request    the head, then a large input as it is read from the guest
 *   receive_reply   the reply (signal and control frames before it kept for Python),
 *                   its output written into the guest
 *   apply_result    the result into the guest's registers; the guest resumed
 *
 * Frames are those of mosix_core/remote/frames.py:
 *   frame    length u32 | body
 *   request  "Q" | nr u16 | nargs u8 | ninputs u8 | noutputs u8 | arg u64 * nargs
 *            | (index u8 | size u32 | bytes) * ninputs | (index u8 | capacity u32) * noutputs
 *   reply    "R" | result i64 | noutputs u8 | (index u8 | size u32 | bytes) * noutputs
 * Signal and control frames that come while a call waits for its reply are kept,
 * whole, for Python (after the call). */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/ptrace.h>

/* What the loop's answers, the shapes' kinds and flags and the largest transfer are
 * comes from Python (mosix_core/remote/fastpath.py and calls.py, through trap_build.py),
 * so the two sides cannot disagree:
 *   TRAP_STOP         a stop for Python: *status holds it
 *   TRAP_SOCKET       the socket has a frame for Python
 *   TRAP_TIMEOUT
 *   TRAP_INTERRUPTED  a signal for the host itself (Python's handlers run next)
 *   TRAP_RESTART      the call was interrupted at home: *status = nr, *result = -ERESTART*
 *   TRAP_ERROR        errno in *status: the socket or ptrace failed, or home sent nonsense
 *   SHAPE_NONE (not for us), SHAPE_VALUES, SHAPE_IN, SHAPE_OUT
 *   FLAG_CLAMP        an output larger than MAX_TRANSFER is cut (reads may return less)
 *   MAX_TRANSFER      one call's buffers, at most */
#if !defined(TRAP_STOP) || !defined(SHAPE_OUT) || !defined(FLAG_CLAMP) || !defined(MAX_TRANSFER)
#error "build with python -m mosix_core.remote.trap_build"
#endif

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "frames are little-endian and copied as they are"
#endif

#define PIECE (256 << 10)  /* a large buffer is read from, or written into, the guest in pieces */
#define MAX_ARGS 6         /* a system call's arguments (frames.MAX_ARGS) */
#define NO_ARG 255         /* shape.size_arg: a fixed size; shape.string: no path */
/* a call interrupted at home answers one of the kernel's -ERESTART* codes, which only
   the guest's own kernel may act on (Python hands the stop back to it) */
#define ERESTARTSYS 512
#define ERESTART_RESTARTBLOCK 516

/* One call number's shape, as fastpath.shapes() makes it. */
struct shape {
    uint8_t kind, nargs, buffer, size_arg;  /* size_arg NO_ARG: ``fixed`` bytes */
    uint32_t fixed;
    uint8_t flags, string, pad[2];          /* string: the index of a path argument, or NO_ARG */
};

/* What Python gives the loop, once (fastpath.TrapLoop); ``pending_len`` and ``handled``
 * are the loop's answers besides trap_serve's. */
struct trap_loop {
    int pid, sock, mem;      /* the guest, the link home, the guest's /proc/PID/mem */
    int sigfd, wakefd;       /* SIGCHLD's signalfd; Python's signal wake-up fd or -1 */
    const struct shape *shapes;
    int nshapes;
    uint8_t *buf;            /* one frame, at most ``room`` bytes */
    size_t room;
    uint8_t *pending;        /* frames kept for Python, each with its length */
    size_t pending_room, pending_len;
    long handled;            /* calls answered here, ever */
    long spin_ns;            /* a reply is waited for spinning this long, then sleeping */
    int error;               /* errno of the last FAILED or MALFORMED step */
};

/* The frames' fixed parts, as they are on the wire. */
struct __attribute__((packed)) request_head {
    uint8_t kind;            /* 'Q' */
    uint16_t nr;
    uint8_t nargs, ninputs, noutputs;
};

struct __attribute__((packed)) reply_head {
    uint8_t kind;            /* 'R' */
    int64_t result;
    uint8_t noutputs;
};

struct __attribute__((packed)) buffer_head {   /* an input or output; a capacity asked */
    uint8_t index;
    uint32_t size;
};

typedef uint32_t frame_length;

/* what is received of a frame before it is known whether it is poured (pour_reply) */
#define POURED_HEAD (sizeof(struct reply_head) + sizeof(struct buffer_head))

_Static_assert(sizeof(struct request_head) == 6, "request head as frames.py packs it");
_Static_assert(sizeof(struct reply_head) == 10, "reply head as frames.py packs it");
_Static_assert(sizeof(struct buffer_head) == 5, "buffer head as frames.py packs it");

/* the most a request's head takes besides an input that is in it: length, head, the
   arguments, and a path's, an input's and an output's buffer heads */
#define REQUEST_HEAD_ROOM \
    (sizeof(frame_length) + sizeof(struct request_head) + 8 * MAX_ARGS + 3 * sizeof(struct buffer_head) + PATH_MAX)

enum outcome {
    DONE,        /* the step is done: on to the next */
    NOT_OURS,    /* Python answers this call (nothing was sent; the guest is untouched) */
    RESTARTED,   /* home interrupted the call: its result is an -ERESTART* for the guest's kernel */
    FAILED,      /* the socket, the guest's memory or ptrace failed: errno in loop->error */
    MALFORMED,   /* home sent a frame that is not a valid answer: loop->error is EPROTO */
};

/* The call being forwarded. */
struct call {
    int nr;
    const struct shape *shape;
    const uint64_t *args;        /* MAX_ARGS of them */
    uint64_t pointer, size;      /* the guest's buffer and its size (clamped) */
    int in, out, string;         /* whether it has an input, an output, a path */
    size_t head;                 /* bytes of loop->buf the frame's head takes */
    uint64_t streamed;           /* input bytes sent after the head, read from the guest as they go */
    int64_t result;
};

static size_t page_size(void)
{
    static size_t size;
    if (!size)
        size = (size_t)sysconf(_SC_PAGESIZE);
    return size;
}

static enum outcome failed(struct trap_loop *loop, int error)
{
    loop->error = error;
    return FAILED;
}

static enum outcome malformed(struct trap_loop *loop)
{
    loop->error = EPROTO;
    return MALFORMED;
}

/* The NUL-terminated string at ``address`` (with its NUL) into ``to``, its length in
 * ``*length``: NOT_OURS when it cannot be read or is not shorter than PATH_MAX. */
static enum outcome read_string(int mem, uint64_t address, uint8_t *to, size_t *length)
{
    size_t done = 0, page = page_size();
    while (done < PATH_MAX) {
        size_t piece = page - ((address + done) & (page - 1));   /* up to the page's end */
        if (piece > PATH_MAX - done)
            piece = PATH_MAX - done;
        ssize_t got = pread(mem, to + done, piece, (off_t)(address + done));
        if (got <= 0)
            return NOT_OURS;
        uint8_t *nul = memchr(to + done, 0, (size_t)got);
        if (nul) {
            *length = (size_t)(nul - to) + 1;
            return DONE;
        }
        done += (size_t)got;
    }
    return NOT_OURS;
}

/* All of ``size`` bytes sent on the link home, or received from it (a closed
 * connection is ECONNRESET). */
static enum outcome send_all(struct trap_loop *loop, const void *data, size_t size)
{
    const char *at = data;
    while (size) {
        ssize_t n = send(loop->sock, at, size, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return failed(loop, errno);
        }
        at += n;
        size -= (size_t)n;
    }
    return DONE;
}

static enum outcome receive_all(struct trap_loop *loop, void *data, size_t size)
{
    char *at = data;
    while (size) {
        ssize_t n = recv(loop->sock, at, size, 0);
        if (n == 0)
            return failed(loop, ECONNRESET);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return failed(loop, errno);
        }
        at += n;
        size -= (size_t)n;
    }
    return DONE;
}

/* Wait for ``fd`` to become readable spinning, for at most ``spin_ns``: a reply that
 * comes meanwhile is taken without this CPU having gone idle and been woken for it,
 * which costs a virtual machine dearly each way (bench/RESULTS.md). (The guest is
 * stopped, so the CPU it shares with us has nothing else to do.) */
static void spin_until_readable(int fd, long spin_ns)
{
    if (spin_ns <= 0)
        return;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd one = {.fd = fd, .events = POLLIN};
        if (poll(&one, 1, 0) != 0)
            return;
        sched_yield();            /* whoever shares this CPU goes first: home itself, in a test cluster */
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) > spin_ns)
            return;
    }
}

/* Whether all of the guest's ``size`` bytes at ``address`` can be read: one byte of
 * each page, in one process_vm_readv of at most IOV_MAX pieces at a time. */
static int readable(int pid, uint64_t address, uint64_t size)
{
    struct iovec remote[IOV_MAX];
    uint8_t sink[IOV_MAX];
    uint64_t page = page_size(), at = address & ~(page - 1), end = address + size;
    while (at < end) {
        int count = 0;
        for (; at < end && count < IOV_MAX; at += page, count++) {
            remote[count].iov_base = (void *)(uintptr_t)(at < address ? address : at);
            remote[count].iov_len = 1;
        }
        struct iovec local = {.iov_base = sink, .iov_len = (size_t)count};
        if (process_vm_readv(pid, &local, 1, remote, (unsigned long)count, 0) != count)
            return 0;
    }
    return 1;
}

static uint8_t *put_buffer_head(uint8_t *at, uint8_t index, uint64_t size)
{
    struct buffer_head head = {.index = index, .size = (uint32_t)size};
    memcpy(at, &head, sizeof head);
    return at + sizeof head;
}

/* Which buffer the call has and how large, from its shape: NOT_OURS for a size
 * Python must judge (negative, or too large to cut). */
static enum outcome size_up(struct call *call)
{
    const struct shape *s = call->shape;
    if (s->nargs > MAX_ARGS || (s->string != NO_ARG && s->string >= MAX_ARGS))
        return NOT_OURS;
    call->string = s->string != NO_ARG && call->args[s->string];
    if (s->kind != SHAPE_IN && s->kind != SHAPE_OUT)
        return DONE;
    if (s->buffer >= MAX_ARGS || (s->size_arg != NO_ARG && s->size_arg >= MAX_ARGS))
        return NOT_OURS;
    int64_t wanted = s->size_arg == NO_ARG ? (int64_t)s->fixed : (int64_t)call->args[s->size_arg];
    if (wanted < 0)
        return NOT_OURS;
    if (wanted > MAX_TRANSFER) {
        if (!(s->flags & FLAG_CLAMP))
            return NOT_OURS;
        wanted = MAX_TRANSFER;
    }
    call->size = (uint64_t)wanted;
    call->pointer = call->args[s->buffer];
    if (call->pointer) {                       /* a NULL buffer: home answers EFAULT itself */
        call->in = s->kind == SHAPE_IN;
        call->out = s->kind == SHAPE_OUT;
    }
    return DONE;
}

/* The request's head (its input too, when small) into loop->buf: NOT_OURS when the
 * guest's path or input cannot be read (Python answers: EFAULT, ENAMETOOLONG). */
static enum outcome build_request(struct trap_loop *loop, struct call *call)
{
    const struct shape *s = call->shape;
    if (size_up(call) != DONE)
        return NOT_OURS;
    if (REQUEST_HEAD_ROOM + (call->in ? call->size : 0) > loop->room)   /* a streamed input goes through it too */
        return NOT_OURS;
    struct request_head head = {.kind = 'Q', .nr = (uint16_t)call->nr, .nargs = s->nargs,
                                .ninputs = (uint8_t)(call->in + call->string), .noutputs = (uint8_t)call->out};
    uint8_t *at = loop->buf + sizeof(frame_length);
    memcpy(at, &head, sizeof head);
    at += sizeof head;
    for (int k = 0; k < s->nargs; k++) {
        uint64_t value = call->args[k];
        if (k == s->size_arg && s->kind == SHAPE_OUT && (s->flags & FLAG_CLAMP))
            value = call->size;                   /* as Python clamps the count of a read */
        memcpy(at, &value, sizeof value);
        at += sizeof value;
    }
    if (call->string) {                           /* before an input buffer: inputs go by index */
        size_t length;
        if (read_string(loop->mem, call->args[s->string], at + sizeof(struct buffer_head), &length) != DONE)
            return NOT_OURS;
        at = put_buffer_head(at, s->string, length) + length;
    }
    if (call->in) {
        at = put_buffer_head(at, s->buffer, call->size);
        if (call->size > PIECE) {
            /* a large input is sent after the frame's head, as it is read, so home
               takes (and writes) its first pieces while the rest are read */
            if (!readable(loop->pid, call->pointer, call->size))
                return NOT_OURS;
            call->streamed = call->size;
        } else if (call->size) {
            if (pread(loop->mem, at, call->size, (off_t)call->pointer) != (ssize_t)call->size)
                return NOT_OURS;
            at += call->size;
        }
    }
    if (call->out)
        at = put_buffer_head(at, s->buffer, call->size);
    call->head = (size_t)(at - loop->buf);
    frame_length length = (frame_length)(call->head - sizeof(frame_length) + call->streamed);
    memcpy(loop->buf, &length, sizeof length);
    return DONE;
}

/* The request's head, then a large input as it is read from the guest. */
static enum outcome send_request(struct trap_loop *loop, const struct call *call)
{
    if (send_all(loop, loop->buf, call->head) != DONE)
        return FAILED;
    for (uint64_t done = 0; done < call->streamed; ) {
        size_t piece = call->streamed - done < PIECE ? (size_t)(call->streamed - done) : PIECE;
        ssize_t got = pread(loop->mem, loop->buf, piece, (off_t)(call->pointer + done));
        size_t have = got > 0 ? (size_t)got : 0;
        if (have < piece)                         /* another thread unmapped it meanwhile: zeros */
            memset(loop->buf + have, 0, piece - have);
        if (send_all(loop, loop->buf, piece) != DONE)
            return FAILED;
        done += piece;
    }
    return DONE;
}

/* Whether output ``head`` answers the call: its buffer, within the capacity asked,
 * and within the ``left`` bytes of the frame that follow it. */
static int fits(const struct call *call, const struct buffer_head *head, uint64_t left)
{
    return call->out && head->index == call->shape->buffer && head->size <= call->size && head->size <= left;
}

/* A reply whose whole ``length`` bytes are in ``body``: its outputs into the guest. */
static enum outcome take_reply(struct trap_loop *loop, struct call *call, const uint8_t *body, size_t length)
{
    struct reply_head head;
    if (length < sizeof head)
        return malformed(loop);
    memcpy(&head, body, sizeof head);
    call->result = head.result;
    const uint8_t *at = body + sizeof head, *end = body + length;
    for (int k = 0; k < head.noutputs; k++) {
        struct buffer_head output;
        if ((size_t)(end - at) < sizeof output)
            return malformed(loop);
        memcpy(&output, at, sizeof output);
        at += sizeof output;
        if (!fits(call, &output, (uint64_t)(end - at)))
            return malformed(loop);
        if (output.size && pwrite(loop->mem, at, output.size, (off_t)call->pointer) != (ssize_t)output.size)
            call->result = -EFAULT;
        at += output.size;
    }
    return at == end ? DONE : malformed(loop);
}

/* A large reply with one output, of which ``head`` (the reply's head and the output's
 * buffer head) has been received: the output written into the guest as it comes. */
static enum outcome pour_reply(struct trap_loop *loop, struct call *call, const uint8_t *head, size_t length)
{
    struct reply_head reply;
    struct buffer_head output;
    memcpy(&reply, head, sizeof reply);
    memcpy(&output, head + sizeof reply, sizeof output);
    if (!fits(call, &output, length - sizeof reply - sizeof output) ||
        output.size != length - sizeof reply - sizeof output)
        return malformed(loop);
    call->result = reply.result;
    for (uint32_t done = 0; done < output.size; ) {
        /* whatever has come, not receive_all()'s whole piece: written into the guest
           at once, it overlaps home's sending more (1 MiB reads: ~10 % faster) */
        ssize_t n = recv(loop->sock, loop->buf, output.size - done < PIECE ? output.size - done : PIECE, 0);
        if (n == 0)
            return failed(loop, ECONNRESET);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return failed(loop, errno);
        }
        if (pwrite(loop->mem, loop->buf, (size_t)n, (off_t)(call->pointer + done)) != n)
            call->result = -EFAULT;
        done += (uint32_t)n;
    }
    return DONE;
}

/* A signal or control frame that came while the call waited, kept for Python. */
static enum outcome keep_for_python(struct trap_loop *loop, const uint8_t *body, frame_length length)
{
    if (body[0] != 'S' && body[0] != 'C')
        return malformed(loop);
    if (sizeof length + length > loop->pending_room - loop->pending_len)
        return failed(loop, ENOBUFS);
    memcpy(loop->pending + loop->pending_len, &length, sizeof length);
    memcpy(loop->pending + loop->pending_len + sizeof length, body, length);
    loop->pending_len += sizeof length + length;
    return DONE;
}

/* Whether the frame whose first POURED_HEAD bytes (at least) are in ``head`` is a
 * large reply with one output, which is then written into the guest as it comes. */
static int pours(const struct call *call, const uint8_t *head, frame_length length)
{
    struct reply_head reply;
    if (head[0] != 'R' || length <= PIECE || !call->out)
        return 0;
    memcpy(&reply, head, sizeof reply);
    return reply.noutputs == 1;
}

/* The call's reply, its output written into the guest; RESTARTED when home
 * interrupted the call. Frames before it are kept for Python. */
static enum outcome receive_reply(struct trap_loop *loop, struct call *call)
{
    for (;;) {
        frame_length length;
        if (receive_all(loop, &length, sizeof length) != DONE)
            return FAILED;
        if (length == 0 || length > loop->room)
            return malformed(loop);
        uint8_t *body = loop->buf;
        size_t first = length < POURED_HEAD ? length : POURED_HEAD;
        if (receive_all(loop, body, first) != DONE)
            return FAILED;
        enum outcome taken;
        if (pours(call, body, length)) {
            taken = pour_reply(loop, call, body, length);
        } else {
            if (receive_all(loop, body + first, length - first) != DONE)
                return FAILED;
            if (body[0] != 'R') {
                enum outcome kept = keep_for_python(loop, body, length);
                if (kept != DONE)
                    return kept;
                continue;
            }
            taken = take_reply(loop, call, body, length);
        }
        if (taken != DONE)
            return taken;
        return call->result <= -ERESTARTSYS && call->result >= -ERESTART_RESTARTBLOCK ? RESTARTED : DONE;
    }
}

/* The call's result into the guest, which skips the call; it is resumed unless
 * frames came for Python meanwhile (a signal the call itself sent...): Python
 * delivers those first, then resumes it. */
static enum outcome apply_result(struct trap_loop *loop, const struct call *call)
{
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, loop->pid, 0, &regs) < 0)
        return failed(loop, errno);
    regs.orig_rax = (unsigned long long)-1;       /* skip the call here... */
    regs.rax = (unsigned long long)call->result;  /* ...it returns what it did at home */
    if (ptrace(PTRACE_SETREGS, loop->pid, 0, &regs) < 0)
        return failed(loop, errno);
    if (loop->pending_len == 0 && ptrace(PTRACE_CONT, loop->pid, 0, 0) < 0)
        return failed(loop, errno);
    return DONE;
}

/* One forwarded call, the guest stopped at its seccomp stop. */
static enum outcome forward(struct trap_loop *loop, struct call *call)
{
    enum outcome step = build_request(loop, call);
    if (step == DONE)
        step = send_request(loop, call);
    if (step == DONE) {
        spin_until_readable(loop->sock, loop->spin_ns);
        step = receive_reply(loop, call);
    }
    if (step == DONE)
        step = apply_result(loop, call);
    return step;
}

enum { SERVING = 0 };   /* trap_serve goes on: none of the TRAP_* answers yet */
_Static_assert(TRAP_STOP != SERVING && TRAP_SOCKET != SERVING && TRAP_TIMEOUT != SERVING &&
               TRAP_INTERRUPTED != SERVING && TRAP_RESTART != SERVING && TRAP_ERROR != SERVING,
               "the answers are not SERVING");

/* The guest stopped with ``status``: its call answered here (SERVING), or the answer
 * for Python. */
static int serve_stop(struct trap_loop *loop, int *status, int64_t *result)
{
    if (!(WIFSTOPPED(*status) && (*status >> 8) == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))))
        return TRAP_STOP;
    struct ptrace_syscall_info info;
    if (ptrace(PTRACE_GET_SYSCALL_INFO, loop->pid, sizeof info, &info) < 0 || info.op != PTRACE_SYSCALL_INFO_SECCOMP)
        return TRAP_STOP;
    int nr = (int)info.seccomp.nr;
    /* an i386 call shares its numbers with unrelated 64-bit ones: Python refuses it */
    if (info.arch != AUDIT_ARCH_X86_64 || nr < 0 || nr >= loop->nshapes || loop->shapes[nr].kind == SHAPE_NONE)
        return TRAP_STOP;
    struct call call = {.nr = nr, .shape = &loop->shapes[nr], .args = (const uint64_t *)info.seccomp.args};
    switch (forward(loop, &call)) {
    case DONE:
        loop->handled++;
        return loop->pending_len ? TRAP_SOCKET : SERVING;   /* frames came during the call: the guest waits */
    case NOT_OURS:
        return TRAP_STOP;
    case RESTARTED:
        *status = nr;
        *result = call.result;
        return TRAP_RESTART;
    case FAILED:
    case MALFORMED:
        break;
    }
    *status = loop->error;
    return TRAP_ERROR;
}

/* Nothing from the guest yet: wait for it (SIGCHLD), home, or a signal for us. */
static int wait_for_news(struct trap_loop *loop, int timeout_ms, int *status)
{
    struct pollfd fds[3] = {{.fd = loop->sock, .events = POLLIN}, {.fd = loop->sigfd, .events = POLLIN},
                            {.fd = loop->wakefd, .events = POLLIN}};
    int ready = poll(fds, 3, timeout_ms);
    if (ready < 0) {
        *status = errno;
        return errno == EINTR ? TRAP_INTERRUPTED : TRAP_ERROR;
    }
    if (ready == 0)
        return TRAP_TIMEOUT;
    if (fds[2].revents)
        return TRAP_INTERRUPTED;
    if (fds[0].revents)
        return TRAP_SOCKET;
    struct signalfd_siginfo drained[8];
    while (read(loop->sigfd, drained, sizeof drained) > 0)
        ;
    return SERVING;
}

/* Serve the guest until something needs Python: one of the TRAP_* answers, with
 * ``*status`` and ``*result`` as they say. SIGCHLD is blocked meanwhile and read from
 * loop->sigfd (made by the caller); the caller's mask comes back. A readable
 * loop->wakefd means a signal for the host has come (its handler runs once we return;
 * the caller empties it). Frames home sent during a call are in loop->pending. */
int trap_serve(struct trap_loop *loop, int timeout_ms, int *status, int64_t *result)
{
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    loop->pending_len = 0;
    int answer = SERVING;
    while (answer == SERVING) {
        int got = waitpid(loop->pid, status, WNOHANG | __WALL);
        if (got < 0) {
            *status = errno;
            answer = TRAP_ERROR;
        } else if (got == loop->pid) {
            answer = serve_stop(loop, status, result);
        } else {
            answer = wait_for_news(loop, timeout_ms, status);
        }
    }
    sigprocmask(SIG_SETMASK, &old, 0);
    return answer;
}
