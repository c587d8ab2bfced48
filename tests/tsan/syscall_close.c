/*
 * syscall_close.c - linked into every binary of the TSan build (MODE=tsan)
 * only: lets ThreadSanitizer see the descriptors libuv closes.
 *
 * TSan keeps a shadow word per descriptor number and learns of a close
 * through its close() interceptor. libuv on Linux closes with
 * syscall(SYS_close, fd) (uv__close_nocancel in src/unix/core.c: glibc's
 * close() is a cancellation point); only a libuv itself built with clang's
 * TSan calls the sanitizer's syscall hooks around it, and Debian's libuv1 is
 * not. So TSan never saw a worker close a client socket, and when another
 * thread got the same number (the admin thread's mkostemp() in
 * src/conf/conf_file.c file_replace) and closed it, TSan reported a data race on
 * "file descriptor 36" between that close() and the worker's read() of the
 * old socket: two different files.
 *
 * This definition of syscall() takes precedence over glibc's for the
 * program and the libraries it loads (libuv calls syscall through the PLT).
 * It calls the hooks that clang-built libuv would call around SYS_close, and
 * forwards every call to glibc's syscall unchanged.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <sys/syscall.h>

void __sanitizer_syscall_pre_impl_close(long fd);
void __sanitizer_syscall_post_impl_close(long res, long fd);
long syscall(long number, ...);

static long (*real_syscall)(long, ...);

/* Before any thread: the pointer is only read afterwards. */
__attribute__((constructor)) static void find_real_syscall(void)
{
    real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
}

long syscall(long number, ...)
{
    long a[6], rc;
    va_list ap;

    /* glibc's syscall() reads six arguments whatever the call passed. */
    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real_syscall)
        find_real_syscall();
    if (number == SYS_close)
        __sanitizer_syscall_pre_impl_close(a[0]);
    rc = real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (number == SYS_close)
        __sanitizer_syscall_post_impl_close(rc, a[0]);
    return rc;
}
