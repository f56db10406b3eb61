/* The guest's hot path in C: wait for the guest's next stop and, while each stop
 * is a forwarded call of a simple shape (values and at most one input or output
 * buffer), send it home, put the reply into the guest and resume it — without
 * returning to Python. Everything else is handed back to Python (mosix_core/remote/
 * fastpath.py), which handles it as it always did.
 *
 * Frames are those of mosix_core/remote/frames.py:
 *   frame    length u32 | body
 *   request  "Q" | nr u16 | nargs u8 | ninputs u8 | noutputs u8 | arg u64 * nargs
 *            | (index u8 | size u32 | bytes) * ninputs | (index u8 | capacity u32) * noutputs
 *   reply    "R" | result i64 | noutputs u8 | (index u8 | size u32 | bytes) * noutputs
 * Signal and control frames that come while a call waits for its reply are kept,
 * whole, for Python (after the call). */

#include <errno.h>
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
 *   TRAP_ERROR        errno in *status: the socket or ptrace failed
 *   SHAPE_NONE (not for us), SHAPE_VALUES, SHAPE_IN, SHAPE_OUT
 *   FLAG_CLAMP        an output larger than MAX_TRANSFER is cut (reads may return less)
 *   MAX_TRANSFER      one call's buffers, at most */
#if !defined(TRAP_STOP) || !defined(SHAPE_OUT) || !defined(FLAG_CLAMP) || !defined(MAX_TRANSFER)
#error "build with python -m mosix_core.remote.trap_build"
#endif

#define PIECE (256 << 10)  /* a large buffer is read from, or written into, the guest in pieces */
#define REPLY_HEAD 15      /* "R", result, noutputs, and the first output's index and size */

struct shape {
    uint8_t kind, nargs, buffer, size_arg;  /* size_arg 255: fixed size */
    uint32_t fixed;
    uint8_t flags, string, pad[2];          /* string: the index of a path argument, 255: none */
};

#define PATH_MAX_BYTES 4096

/* The NUL-terminated string at ``address`` (with its NUL) into ``to``: its length,
 * or -1 when it cannot be read or is not shorter than PATH_MAX_BYTES. */
static ssize_t read_string(int mem, uint64_t address, uint8_t *to)
{
    size_t done = 0;
    while (done < PATH_MAX_BYTES) {
        size_t piece = 4096 - ((address + done) & 4095);   /* up to the page's end */
        if (piece > PATH_MAX_BYTES - done)
            piece = PATH_MAX_BYTES - done;
        ssize_t got = pread(mem, to + done, piece, (off_t)(address + done));
        if (got <= 0)
            return -1;
        uint8_t *nul = memchr(to + done, 0, (size_t)got);
        if (nul)
            return nul - to + 1;
        done += (size_t)got;
    }
    return -1;
}

/* All of ``size`` bytes sent or received on socket ``fd``: 0, or -1 with errno (a
 * closed connection is ECONNRESET). */
static int transfer(int fd, void *data, size_t size, int sending)
{
    char *at = data;
    while (size) {
        ssize_t n = sending ? send(fd, at, size, MSG_NOSIGNAL) : recv(fd, at, size, 0);
        if (n == 0 && !sending) {
            errno = ECONNRESET;
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        at += n;
        size -= (size_t)n;
    }
    return 0;
}

/* Wait for ``fd`` to become readable spinning, for at most ``spin_ns``: a reply that
 * comes meanwhile is taken without this CPU having gone idle and been woken for it,
 * which costs a virtual machine some 25 µs each way. (The guest is stopped, so the
 * CPU it shares with us has nothing else to do.) */
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
    static struct iovec remote[1024];
    uint8_t sink[1024];
    uint64_t page = address & ~(uint64_t)4095, end = address + size;
    while (page < end) {
        int count = 0;
        for (; page < end && count < 1024; page += 4096, count++) {
            remote[count].iov_base = (void *)(uintptr_t)(page < address ? address : page);
            remote[count].iov_len = 1;
        }
        struct iovec local = {.iov_base = sink, .iov_len = (size_t)count};
        if (process_vm_readv(pid, &local, 1, remote, (unsigned long)count, 0) != count)
            return 0;
    }
    return 1;
}

/* One forwarded call, the guest stopped at its seccomp stop. 0: done (resumed,
 * unless frames came for Python meanwhile);
 * TRAP_RESTART; -1 with errno: the link or ptrace failed; 1: not for us after all
 * (the guest is untouched: Python handles the stop). */
static int forward(int pid, int sock, int mem, const struct shape *s, int nr, const uint64_t *args,
                   uint8_t *buf, size_t room, uint8_t *pending, size_t pending_room, size_t *pending_len,
                   int64_t *restart_result, long spin_ns)
{
    uint8_t *at = buf + 4;
    uint64_t size = 0, pointer = 0, streamed = 0;   /* streamed: input bytes sent after the head */
    int in = 0, out = 0;
    if (s->kind == SHAPE_IN || s->kind == SHAPE_OUT) {
        pointer = args[s->buffer];
        int64_t wanted = s->size_arg == 255 ? (int64_t)s->fixed : (int64_t)args[s->size_arg];
        if (wanted < 0)
            return 1;
        if (wanted > MAX_TRANSFER) {
            if (!(s->flags & FLAG_CLAMP))
                return 1;
            wanted = MAX_TRANSFER;
        }
        size = (uint64_t)wanted;
        if (pointer) {
            in = s->kind == SHAPE_IN;
            out = s->kind == SHAPE_OUT;
        }
    }
    int string = s->string != 255 && args[s->string];
    if (40 + 8 * 6 + PATH_MAX_BYTES + (in ? size : 0) > room)
        return 1;
    *at++ = 'Q';
    *at++ = nr & 0xFF;
    *at++ = (nr >> 8) & 0xFF;
    *at++ = s->nargs;
    *at++ = in + string;
    *at++ = out;
    for (int k = 0; k < s->nargs; k++) {
        uint64_t value = args[k];
        if (k == s->size_arg && s->kind == SHAPE_OUT && (s->flags & FLAG_CLAMP))
            value = size;                         /* as Python clamps the count of a read */
        memcpy(at, &value, 8);
        at += 8;
    }
    if (string) {                                 /* before an input buffer: inputs go by index */
        *at++ = s->string;
        ssize_t length = read_string(mem, args[s->string], at + 4);
        if (length < 0)
            return 1;                             /* unreadable or too long: Python answers it */
        uint32_t length32 = (uint32_t)length;
        memcpy(at, &length32, 4);
        at += 4 + length;
    }
    if (in) {
        uint32_t size32 = (uint32_t)size;
        *at++ = s->buffer;
        memcpy(at, &size32, 4);
        at += 4;
        if (size > PIECE) {
            /* a large input is sent after the frame's head, as it is read, so home
               takes (and writes) its first pieces while the rest are read */
            if (!readable(pid, pointer, size))
                return 1;                         /* Python answers it (EFAULT) */
            streamed = size;
        } else if (size) {
            ssize_t got = pread(mem, at, size, (off_t)pointer);
            if (got != (ssize_t)size)
                return 1;                         /* unreadable: Python answers it (EFAULT) */
            at += size;
        }
    }
    if (out) {
        uint32_t size32 = (uint32_t)size;
        *at++ = s->buffer;
        memcpy(at, &size32, 4);
        at += 4;
    }
    uint32_t length = (uint32_t)(at - buf - 4 + streamed);
    memcpy(buf, &length, 4);
    if (transfer(sock, buf, (size_t)(at - buf), 1) < 0)
        return -1;
    for (uint64_t done = 0; done < streamed; ) {  /* the input, which ends the frame */
        size_t piece = streamed - done < PIECE ? (size_t)(streamed - done) : PIECE;
        ssize_t got = pread(mem, buf, piece, (off_t)(pointer + done));
        size_t have = got > 0 ? (size_t)got : 0;
        if (have < piece)                         /* another thread unmapped it meanwhile: zeros */
            memset(buf + have, 0, piece - have);
        if (transfer(sock, buf, piece, 1) < 0)
            return -1;
        done += piece;
    }
    spin_until_readable(sock, spin_ns);
    /* the reply; signal and control frames before it are kept for Python */
    int64_t result;
    uint32_t body;
    for (;;) {
        if (transfer(sock, &body, 4, 0) < 0)
            return -1;
        if (body == 0 || body > room) {
            errno = EPROTO;
            return -1;
        }
        size_t first = body < REPLY_HEAD ? body : REPLY_HEAD;
        if (transfer(sock, buf, first, 0) < 0)
            return -1;
        if (buf[0] == 'R' && body > PIECE && out && buf[9] == 1) {
            /* a large output is written into the guest as it comes */
            uint32_t got;
            memcpy(&got, buf + 11, 4);
            if (buf[10] != s->buffer || got > size || body != REPLY_HEAD + got) {
                errno = EPROTO;
                return -1;
            }
            memcpy(&result, buf + 1, 8);
            for (uint32_t done = 0; done < got; ) {
                /* whatever has come, not transfer()'s whole piece: written into the guest
                   at once, it overlaps home's sending more (1 MiB reads: ~10 % faster) */
                ssize_t n = recv(sock, buf, got - done < PIECE ? got - done : PIECE, 0);
                if (n <= 0) {
                    if (n < 0 && errno == EINTR)
                        continue;
                    if (n == 0)
                        errno = ECONNRESET;
                    return -1;
                }
                if (pwrite(mem, buf, (size_t)n, (off_t)(pointer + done)) != n)
                    result = -EFAULT;
                done += (uint32_t)n;
            }
            goto received;
        }
        if (transfer(sock, buf + first, body - first, 0) < 0)
            return -1;
        if (buf[0] == 'R')
            break;
        if (buf[0] != 'S' && buf[0] != 'C') {
            errno = EPROTO;
            return -1;
        }
        if (*pending_len + 4 + body > pending_room) {
            errno = ENOBUFS;
            return -1;
        }
        memcpy(pending + *pending_len, &body, 4);
        memcpy(pending + *pending_len + 4, buf, body);
        *pending_len += 4 + body;
    }
    memcpy(&result, buf + 1, 8);
    if (body < REPLY_HEAD - 5) {
        errno = EPROTO;
        return -1;
    }
    uint8_t *reply = buf + REPLY_HEAD - 5, *end = buf + body;
    for (int k = 0; k < buf[9]; k++) {
        uint32_t got;
        if (end - reply < 5) {
            errno = EPROTO;
            return -1;
        }
        memcpy(&got, reply + 1, 4);
        if (!out || reply[0] != s->buffer || got > size || (uint64_t)(end - reply - 5) < got) {
            errno = EPROTO;
            return -1;
        }
        if (got && pwrite(mem, reply + 5, got, (off_t)pointer) != (ssize_t)got)
            result = -EFAULT;
        reply += 5 + got;
    }
received:
    if (result <= -512 && result >= -516) {
        *restart_result = result;
        return TRAP_RESTART;
    }
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, pid, 0, &regs) < 0)
        return -1;
    regs.orig_rax = (unsigned long long)-1;       /* skip the call here... */
    regs.rax = (unsigned long long)result;        /* ...it returns what it did at home */
    if (ptrace(PTRACE_SETREGS, pid, 0, &regs) < 0)
        return -1;
    /* with frames from home to deliver first (a signal the call itself sent...), the
       guest stays stopped: Python delivers them, then resumes it */
    if (*pending_len == 0 && ptrace(PTRACE_CONT, pid, 0, 0) < 0)
        return -1;
    return 0;
}

/* Serve the guest until something needs Python. A reply is waited for spinning for
 * ``spin_ns`` (0: never) before sleeping. SIGCHLD is blocked meanwhile and
 * read from signalfd ``sigfd`` (made by the caller); the caller's mask comes back.
 * ``wakefd`` (or -1) is Python's signal wake-up descriptor: readable, a signal for the
 * host has come (its handler runs once we return; the caller empties it). */
int trap_serve(int pid, int sock, int mem, int sigfd, int wakefd, const struct shape *shapes, int nshapes,
               int timeout_ms, uint8_t *buf, size_t room, uint8_t *pending, size_t pending_room,
               size_t *pending_len, int *status, int64_t *result, long *handled, long spin_ns)
{
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    int answer;
    *pending_len = 0;
    for (;;) {
        int got = waitpid(pid, status, WNOHANG | __WALL);
        if (got < 0) {
            *status = errno;
            answer = TRAP_ERROR;
            break;
        }
        if (got == pid) {
            int st = *status;
            if (!(WIFSTOPPED(st) && (st >> 8) == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8)))) {
                answer = TRAP_STOP;
                break;
            }
            struct ptrace_syscall_info info;
            if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) < 0 ||
                info.op != PTRACE_SYSCALL_INFO_SECCOMP) {
                answer = TRAP_STOP;
                break;
            }
            int nr = (int)info.seccomp.nr;
            /* an i386 call shares its numbers with unrelated 64-bit ones: Python refuses it */
            if (info.arch != AUDIT_ARCH_X86_64 || nr < 0 || nr >= nshapes || shapes[nr].kind == SHAPE_NONE) {
                answer = TRAP_STOP;
                break;
            }
            int done = forward(pid, sock, mem, &shapes[nr], nr, (const uint64_t *)info.seccomp.args, buf, room,
                               pending, pending_room, pending_len, result, spin_ns);
            if (done == 1) {
                answer = TRAP_STOP;
                break;
            }
            if (done < 0) {
                *status = errno;
                answer = TRAP_ERROR;
                break;
            }
            if (done == TRAP_RESTART) {
                *status = nr;
                answer = TRAP_RESTART;
                break;
            }
            (*handled)++;
            if (*pending_len) {
                answer = TRAP_SOCKET;               /* frames that came during the call: the guest waits */
                break;
            }
            continue;
        }
        struct pollfd fds[3] = {{.fd = sock, .events = POLLIN}, {.fd = sigfd, .events = POLLIN},
                                {.fd = wakefd, .events = POLLIN}};
        int ready = poll(fds, 3, timeout_ms);
        if (ready < 0) {
            answer = errno == EINTR ? TRAP_INTERRUPTED : TRAP_ERROR;
            *status = errno;
            break;
        }
        if (ready == 0) {
            answer = TRAP_TIMEOUT;
            break;
        }
        if (fds[2].revents) {
            answer = TRAP_INTERRUPTED;
            break;
        }
        if (fds[0].revents) {
            answer = TRAP_SOCKET;
            break;
        }
        struct signalfd_siginfo drained[8];
        while (read(sigfd, drained, sizeof drained) > 0)
            ;
    }
    sigprocmask(SIG_SETMASK, &old, 0);
    return answer;
}
