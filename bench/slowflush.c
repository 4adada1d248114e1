/* Store-class storage on a fast box: every fsync/fdatasync returns SLOWFLUSH_US
 * microseconds late (default 2000: an SD card or eMMC flush). Built by bench/api.py and put
 * in LD_PRELOAD for the daemon, the floor and the raw-commit loop alike. Bench only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void late(void) {
    const char *s = getenv("SLOWFLUSH_US");
    long ns = (s ? atol(s) : 2000L) * 1000L;
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&t, &t) != 0) {}
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    late();
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    late();
    return r;
}
