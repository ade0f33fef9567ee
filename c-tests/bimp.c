/* bimp.c: the contract of every bimp_* function, its edge cases and errors; the pop cascade in every
 * order; in-place realloc at the top; pages returned after a deep unwind; threads with pattern-checked
 * contents (skipped when the library is built single-threaded); aborts on bad pointers (the program
 * re-executes itself, see RALLOCS_TEST_EXE, and checks SIGABRT and the one-line message).
 *
 * The test adapts to the build: bimp_alignment() gives BIMP_ALIGN, bimp_thread_safe() tells whether
 * threads may be used. */
#define _GNU_SOURCE
#include <rallocs.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* Prototype checks: each must match the header's declaration exactly. */
void *bimp_malloc(size_t size);
void *bimp_calloc(size_t n, size_t size);
void bimp_free(void *p);
void *bimp_realloc(void *p, size_t size);
void *bimp_reallocarray(void *p, size_t n, size_t size);
void *bimp_reallocf(void *p, size_t size);
void *bimp_aligned_alloc(size_t alignment, size_t size);
void *bimp_memalign(size_t alignment, size_t size);
int bimp_posix_memalign(void **memptr, size_t alignment, size_t size);
void *bimp_valloc(size_t size);
void *bimp_pvalloc(size_t size);
size_t bimp_malloc_usable_size(void *p);
size_t bimp_alignment(void);
bool bimp_thread_safe(void);
void bimp_stats_get(struct bimp_stats_t *out);

_Static_assert(sizeof(bimp_stats_t) == 8 * sizeof(size_t), "bimp_stats_t is eight size_t");
_Static_assert(offsetof(bimp_stats_t, top_bytes) == 0, "layout");
_Static_assert(offsetof(bimp_stats_t, live_bytes) == 1 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, live_blocks) == 2 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, free_bytes) == 3 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, free_blocks) == 4 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, committed_bytes) == 5 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, peak_top_bytes) == 6 * sizeof(size_t), "layout");
_Static_assert(offsetof(bimp_stats_t, reserved_bytes) == 7 * sizeof(size_t), "layout");

static size_t A; /* bimp_alignment() */
static size_t page;

static bimp_stats_t stats(void) {
    bimp_stats_t s;
    memset(&s, 0xEE, sizeof s);
    bimp_stats_get(&s);
    return s;
}

static size_t top(void) { return stats().top_bytes; }

static bool aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static bool all_bytes(const void *p, unsigned char v, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != v) return false;
    return true;
}

static void test_basics(void) {
    A = bimp_alignment();
    CHECK("alignment-power-of-two", A >= 16 && (A & (A - 1)) == 0);
    size_t t0 = top();

    void *z1 = bimp_malloc(0), *z2 = bimp_malloc(0);
    CHECK("malloc-zero-unique", z1 != NULL && z2 != NULL && z1 != z2);
    CHECK("malloc-zero-aligned", aligned(z1, A) && aligned(z2, A));
    bimp_free(z2);
    bimp_free(z1);
    CHECK("malloc-zero-popped", top() == t0);

    for (size_t n = 1; n < 5000; n = n * 3 + 1) {
        unsigned char *p = bimp_malloc(n);
        CHECK("malloc-aligned", p != NULL && aligned(p, A));
        CHECK("usable-size", bimp_malloc_usable_size(p) >= n && bimp_malloc_usable_size(p) == round_up(n, A));
        memset(p, 0xAB, n);
        CHECK("malloc-writable", all_bytes(p, 0xAB, n));
        bimp_free(p);
    }
    CHECK("usable-size-null", bimp_malloc_usable_size(NULL) == 0);
    bimp_free(NULL);

    errno = 0;
    CHECK("malloc-size-max", bimp_malloc(SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("malloc-half-size-max", bimp_malloc(SIZE_MAX / 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("malloc-32-tib", bimp_malloc((size_t)1 << 45) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("calloc-overflow", bimp_calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("calloc-size-max", bimp_calloc(1, SIZE_MAX) == NULL && errno == ENOMEM);
    CHECK("failures-leave-top", top() == t0);

    /* calloc zeroes memory that held something before. */
    unsigned char *d = bimp_malloc(4096);
    memset(d, 0xFF, 4096);
    bimp_free(d);
    unsigned char *c = bimp_calloc(64, 64);
    CHECK("calloc-reuses-and-zeroes", c == d && all_bytes(c, 0, 4096));
    bimp_free(c);
    c = bimp_calloc(0, 10);
    CHECK("calloc-zero", c != NULL);
    bimp_free(c);
    CHECK("basics-leave-top", top() == t0);
}

/* The seed's example: a = malloc(100); b = malloc(200); free(a); free(b) leaves nothing behind. */
static void process(void) {
    char *a = bimp_malloc(100);
    char *b = bimp_malloc(200);
    memset(a, 1, 100);
    memset(b, 2, 200);
    bimp_free(a);
    bimp_free(b);
}

static void nested(int depth) {
    char *a = bimp_malloc(24 + (size_t)depth);
    if (depth > 0) nested(depth - 1);
    process();
    char *b = bimp_malloc(64);
    bimp_free(a);
    if (depth > 0) nested(depth - 1);
    bimp_free(b);
}

static void test_process_pattern(void) {
    size_t t0 = top();
    process();
    CHECK("process-leaves-no-trace", top() == t0);
    nested(6);
    bimp_stats_t s = stats();
    CHECK("nested-leaves-no-trace", s.top_bytes == t0 && s.free_blocks == 0);
}

/* Free six blocks in each of the 720 orders: after every free the top is the end of the highest live
 * block, and after the last one it is exactly where it started. */
static int perm[6];
static int cascade_failures;

static void run_order(const size_t *sizes, size_t t0) {
    void *p[6];
    size_t after[6];
    for (int i = 0; i < 6; i++) {
        p[i] = bimp_malloc(sizes[i]);
        after[i] = top();
    }
    bool alive[6] = {true, true, true, true, true, true};
    for (int k = 0; k < 6; k++) {
        int i = perm[k];
        bimp_free(p[i]);
        alive[i] = false;
        size_t expect = t0;
        for (int j = 5; j >= 0; j--)
            if (alive[j]) {
                expect = after[j];
                break;
            }
        if (top() != expect) cascade_failures++;
    }
    if (top() != t0) cascade_failures++;
}

static void permute(int k, const size_t *sizes, size_t t0, int *orders) {
    if (k == 6) {
        run_order(sizes, t0);
        (*orders)++;
        return;
    }
    for (int i = k; i < 6; i++) {
        int t = perm[k];
        perm[k] = perm[i];
        perm[i] = t;
        permute(k + 1, sizes, t0, orders);
        t = perm[k];
        perm[k] = perm[i];
        perm[i] = t;
    }
}

static void test_pop_cascade(void) {
    void *base_block = bimp_malloc(10); /* the cascade must stop at a live block */
    size_t t0 = top();
    const size_t sizes[6] = {100, 200, 0, 3000, 17, 64};
    for (int i = 0; i < 6; i++) perm[i] = i;
    int orders = 0;
    permute(0, sizes, t0, &orders);
    CHECK("cascade-720-orders", orders == 720);
    CHECK("cascade-top-exact", cascade_failures == 0);
    bimp_stats_t s = stats();
    CHECK("cascade-nothing-left", s.top_bytes == t0 && s.free_blocks == 0 && s.live_blocks >= 1);
    bimp_free(base_block);
}

static void test_realloc(void) {
    size_t t0 = top();
    /* At the top: grows and shrinks in place, across many commit chunks. */
    unsigned char *p = bimp_realloc(NULL, 10);
    CHECK("realloc-null-is-malloc", p != NULL);
    memset(p, 7, 10);
    size_t n = 10;
    bool in_place = true;
    while (n < ((size_t)24 << 20)) {
        size_t m = n * 2 + 13;
        unsigned char *q = bimp_realloc(p, m);
        if (q != p) in_place = false;
        memset(q + n, 7, m - n);
        n = m;
    }
    CHECK("realloc-top-grows-in-place", in_place);
    CHECK("realloc-top-keeps-contents", all_bytes(p, 7, n));
    CHECK("realloc-top-usable", bimp_malloc_usable_size(p) == round_up(n, A));
    size_t big = top();
    CHECK("realloc-top-moves-top", big >= t0 + n);
    unsigned char *q = bimp_realloc(p, 100);
    CHECK("realloc-top-shrinks-in-place", q == p && all_bytes(q, 7, 100));
    CHECK("realloc-top-shrink-moves-top", top() == t0 + A + round_up(100, A));
    CHECK("peak-remembers", stats().peak_top_bytes >= big);

    /* Not at the top: shrink in place, grow moves and frees the old block. */
    unsigned char *above = bimp_malloc(32);
    unsigned char *r = bimp_realloc(p, 50);
    CHECK("realloc-shrink-in-place", r == p && all_bytes(r, 7, 50));
    r = bimp_realloc(p, 1000);
    CHECK("realloc-grow-moves", r != NULL && r != p && r > above && all_bytes(r, 7, 50));
    bimp_stats_t s = stats();
    CHECK("realloc-old-block-free", s.free_blocks == 1 && s.live_blocks >= 2);
    r = bimp_realloc(r, 0);
    CHECK("realloc-zero-frees", r == NULL);
    bimp_free(above);
    CHECK("realloc-all-popped", top() == t0);

    errno = 0;
    p = bimp_malloc(16);
    memset(p, 3, 16);
    CHECK("realloc-size-max", bimp_realloc(p, SIZE_MAX) == NULL && errno == ENOMEM);
    CHECK("realloc-failure-keeps-block", bimp_malloc_usable_size(p) == round_up(16, A) && all_bytes(p, 3, 16));
    errno = 0;
    CHECK("reallocarray-overflow", bimp_reallocarray(p, SIZE_MAX / 4, 8) == NULL && errno == ENOMEM);
    CHECK("reallocarray-overflow-keeps", all_bytes(p, 3, 16));
    unsigned char *ra = bimp_reallocarray(p, 100, 4);
    CHECK("reallocarray-grows", ra == p && bimp_malloc_usable_size(ra) >= 400 && all_bytes(ra, 3, 16));
    bimp_free(ra);
    CHECK("reallocarray-null", (ra = bimp_reallocarray(NULL, 3, 5)) != NULL);
    bimp_free(ra);

    /* reallocf frees the block when it fails. */
    p = bimp_malloc(16);
    unsigned char *above2 = bimp_malloc(16);
    size_t live_before = stats().live_blocks;
    errno = 0;
    CHECK("reallocf-fails", bimp_reallocf(p, SIZE_MAX) == NULL && errno == ENOMEM);
    s = stats();
    CHECK("reallocf-freed-on-failure", s.live_blocks == live_before - 1 && s.free_blocks == 1);
    unsigned char *f = bimp_reallocf(above2, 64);
    CHECK("reallocf-succeeds", f == above2);
    bimp_free(f);
    CHECK("reallocf-all-popped", top() == t0);
}

static void test_aligned(void) {
    size_t t0 = top();
    const size_t bad[] = {0, 3, 24, 48, 100};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK("aligned-alloc-bad-alignment", bimp_aligned_alloc(bad[i], 64) == NULL && errno == EINVAL);
    }
    for (size_t a = 1; a <= ((size_t)1 << 20); a <<= 1) {
        void *small = bimp_malloc(8); /* so that the next block is not aligned by chance */
        void *p = bimp_aligned_alloc(a, 100);
        CHECK("aligned-alloc", p != NULL && aligned(p, a) && aligned(p, A));
        memset(p, 1, 100);
        bimp_free(p);
        bimp_free(small);
    }
    void *p = bimp_aligned_alloc(64, 10); /* size need not be a multiple of the alignment */
    CHECK("aligned-alloc-odd-size", p != NULL && aligned(p, 64));
    bimp_free(p);
    errno = 0;
    CHECK("aligned-alloc-huge", bimp_aligned_alloc(64, SIZE_MAX) == NULL && errno == ENOMEM);

    p = bimp_memalign(24, 10);
    CHECK("memalign-rounds-alignment-up", p != NULL && aligned(p, 32));
    bimp_free(p);
    p = bimp_memalign(0, 10);
    CHECK("memalign-zero-alignment", p != NULL && aligned(p, A));
    bimp_free(p);
    errno = 0;
    CHECK("memalign-too-big", bimp_memalign(SIZE_MAX / 2 + 2, 10) == NULL && errno == EINVAL);

    void *out = (void *)&out;
    errno = 1234;
    CHECK("posix-memalign-not-pow2", bimp_posix_memalign(&out, 24, 10) == EINVAL);
    CHECK("posix-memalign-too-small", bimp_posix_memalign(&out, sizeof(void *) / 2, 10) == EINVAL);
    CHECK("posix-memalign-zero", bimp_posix_memalign(&out, 0, 10) == EINVAL);
    CHECK("posix-memalign-enomem", bimp_posix_memalign(&out, 64, SIZE_MAX) == ENOMEM);
    CHECK("posix-memalign-out-untouched", out == (void *)&out);
    CHECK("posix-memalign-errno-untouched", errno == 1234);
    CHECK("posix-memalign-8", bimp_posix_memalign(&out, sizeof(void *), 10) == 0 && out != (void *)&out);
    bimp_free(out);
    CHECK("posix-memalign-4096", bimp_posix_memalign(&out, 4096, 10) == 0 && aligned(out, 4096));
    bimp_free(out);

    p = bimp_valloc(10);
    CHECK("valloc", p != NULL && aligned(p, page));
    bimp_free(p);
    p = bimp_pvalloc(page + 1);
    CHECK("pvalloc-rounds-to-pages", p != NULL && aligned(p, page) && bimp_malloc_usable_size(p) >= 2 * page);
    bimp_free(p);
    p = bimp_pvalloc(0);
    CHECK("pvalloc-zero-one-page", p != NULL && aligned(p, page) && bimp_malloc_usable_size(p) >= page);
    bimp_free(p);
    errno = 0;
    CHECK("pvalloc-overflow", bimp_pvalloc(SIZE_MAX - 10) == NULL && errno == ENOMEM);
    CHECK("aligned-all-popped", top() == t0);
}

static size_t rss_bytes(void) {
    return statm_pages(1) * page;
}

static void test_decommit(void) {
    size_t t0 = top();
    enum { N = 2048 };
    static void *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = bimp_malloc(32 << 10);
        memset(blocks[i], i & 0xFF, 32 << 10);
    }
    bimp_stats_t full = stats();
    size_t rss_full = rss_bytes();
    CHECK("deep-stack-committed", full.committed_bytes >= ((size_t)64 << 20));
    CHECK("deep-stack-live", full.live_blocks >= N && full.live_bytes >= (size_t)N * (32 << 10));
    bool intact = true;
    for (int i = N - 1; i >= 0; i--) {
        if (!all_bytes(blocks[i], i & 0xFF, 32 << 10)) intact = false;
        bimp_free(blocks[i]);
    }
    CHECK("deep-stack-contents", intact);
    bimp_stats_t empty = stats();
    size_t rss_empty = rss_bytes();
    CHECK("deep-unwind-top", empty.top_bytes == t0);
    CHECK("deep-unwind-peak", empty.peak_top_bytes >= full.top_bytes);
    CHECK("deep-unwind-decommits", empty.committed_bytes + ((size_t)48 << 20) <= full.committed_bytes);
    CHECK("deep-unwind-rss-drops", rss_empty + ((size_t)48 << 20) <= rss_full);
    /* Hysteresis: a top moving up and down by a few MiB does not commit and decommit each time. */
    void *p = bimp_malloc(3 << 20);
    bimp_free(p);
    size_t settled = stats().committed_bytes;
    bool steady = true;
    for (int i = 0; i < 200; i++) {
        p = bimp_malloc(3 << 20);
        memset(p, 1, 4096);
        bimp_free(p);
        if (stats().committed_bytes != settled) steady = false;
    }
    CHECK("hysteresis-no-thrash", steady);
}

/* Threads: each keeps a stack of blocks whose contents name their owner, and frees in LIFO and in
 * random order; everything is verified before it is freed. */
enum { THREADS = 4, ITERS = 30000, DEPTH = 48 };
static int thread_errors[THREADS];

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    unsigned long long rng = 0x9E3779B97F4A7C15ULL * (unsigned)(t + 1);
    unsigned char *mine[DEPTH];
    size_t len[DEPTH];
    unsigned char tag[DEPTH];
    int n = 0;
    for (int i = 0; i < ITERS; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (n < DEPTH && (rng & 3) != 0) {
            size_t sz = 1 + (rng >> 8) % 512;
            unsigned char *p = (rng & 64) ? bimp_calloc(1, sz) : bimp_malloc(sz);
            if (!p) {
                thread_errors[t]++;
                continue;
            }
            if (!aligned(p, A)) thread_errors[t]++;
            tag[n] = (unsigned char)(t * 64 + i);
            memset(p, tag[n], sz);
            mine[n] = p;
            len[n] = sz;
            n++;
        } else if (n > 0) {
            int k = (rng & 8) ? n - 1 : (int)((rng >> 20) % (unsigned)n);
            if (!all_bytes(mine[k], tag[k], len[k])) thread_errors[t]++;
            if ((rng & 16) && k == n - 1) {
                size_t grow = len[k] + 100;
                unsigned char *q = bimp_realloc(mine[k], grow);
                if (!q || !all_bytes(q, tag[k], len[k])) thread_errors[t]++;
                if (q) {
                    memset(q, tag[k], grow);
                    mine[k] = q;
                    len[k] = grow;
                }
                continue;
            }
            bimp_free(mine[k]);
            mine[k] = mine[n - 1];
            len[k] = len[n - 1];
            tag[k] = tag[n - 1];
            n--;
        }
    }
    while (n > 0) {
        n--;
        if (!all_bytes(mine[n], tag[n], len[n])) thread_errors[t]++;
        bimp_free(mine[n]);
    }
    return NULL;
}

static void test_threads(void) {
    if (!bimp_thread_safe()) {
        printf("bimp: built single-threaded: thread test skipped\n");
        CHECK("single-threaded-build-says-so", !bimp_thread_safe());
        return;
    }
    size_t t0 = top();
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    int errors = 0;
    for (int t = 0; t < THREADS; t++) errors += thread_errors[t];
    CHECK("threads-contents-intact", errors == 0);
    bimp_stats_t s = stats();
    CHECK("threads-everything-popped", s.top_bytes == t0 && s.free_blocks == 0);
    /* After threads, fork: the child can still allocate (the lock was not left held). */
    pid_t pid = fork();
    if (pid == 0) {
        void *p = bimp_malloc(100);
        bimp_free(p);
        _exit(p != NULL ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK("fork-child-allocates", WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Modes run in a re-executed copy of this program. */
static int child_mode(const char *mode) {
    if (strcmp(mode, "free-max-first") == 0) {
        /* Before any bimp allocation (a fresh process; bimp_alignment does not allocate). */
        bimp_free((void *)UINTPTR_MAX);
    } else if (strcmp(mode, "realloc-max-first") == 0) {
        (void)bimp_realloc((void *)UINTPTR_MAX, 16);
    } else if (strcmp(mode, "free-max-after-pop") == 0) {
        bimp_free(bimp_malloc(10));
        bimp_free((void *)UINTPTR_MAX);
    } else if (strcmp(mode, "free-stack") == 0) {
        int local = 0;
        bimp_free(&local);
    } else if (strcmp(mode, "double-free") == 0) {
        void *a = bimp_malloc(10);
        void *b = bimp_malloc(10);
        bimp_free(a);
        bimp_free(a);
        bimp_free(b);
    } else if (strcmp(mode, "free-popped") == 0) {
        void *a = bimp_malloc(10);
        bimp_free(a);
        bimp_free(a);
    } else if (strcmp(mode, "free-middle") == 0) {
        char *a = bimp_malloc(100);
        memset(a, 0, 100);
        bimp_free(a + 2 * bimp_alignment());
    } else if (strcmp(mode, "free-malloc") == 0) {
        void *a = bimp_malloc(10);
        void *m = malloc(10);
        bimp_free(m);
        bimp_free(a);
    } else if (strcmp(mode, "realloc-freed") == 0) {
        void *a = bimp_malloc(10);
        void *b = bimp_malloc(10);
        bimp_free(a);
        a = bimp_realloc(a, 100);
        bimp_free(b);
    } else if (strcmp(mode, "usable-size-bad") == 0) {
        int local = 0;
        return (int)bimp_malloc_usable_size(&local);
    } else if (strcmp(mode, "rlimit") == 0) {
        /* With 512 MiB of address space left the heap takes a smaller reservation, serves
         * allocations, and reports ENOMEM (never a crash) when it is exhausted. */
        unsigned long vm_pages = statm_pages(0);
        if (vm_pages == 0) return 5;
        rlim_t limit = (rlim_t)vm_pages * page + ((rlim_t)512 << 20);
        struct rlimit rl = {limit, limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0) return 2;
        void *blocks[4096];
        int n = 0;
        while (n < 4096 && (blocks[n] = bimp_malloc(1 << 20)) != NULL) {
            memset(blocks[n], 1, 64);
            n++;
        }
        int err = errno;
        if (n < 16 || n >= 4096 || err != ENOMEM) return 3;
        while (n > 0) bimp_free(blocks[--n]);
        if (top() != 0) return 4;
        return 0;
    }
    return 99;
}

static void expect_abort(const char *mode, const char *func, const char *why) {
    const char *exe = getenv("RALLOCS_TEST_EXE");
    char path[4096];
    if (!exe) {
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        path[n > 0 ? n : 0] = 0;
        exe = path;
    }
    char errfile[] = "/tmp/bimp-test-stderr-XXXXXX";
    int fd = mkstemp(errfile);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        execl(exe, exe, mode, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    char buf[1024] = {0};
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(errfile);
    char want[128];
    snprintf(want, sizeof want, "rallocs: %s(): invalid pointer 0x", func);
    bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(buf, want) != NULL && strstr(buf, why) != NULL &&
              strchr(buf, '\n') == buf + strlen(buf) - 1;
    if (!ok) fprintf(stderr, "mode %s: status %d, stderr: %s\n", mode, st, buf);
    CHECK(mode, ok);
}

static void expect_exit_zero(const char *mode) {
    pid_t pid = fork();
    if (pid == 0) _exit(child_mode(mode));
    int st = 0;
    waitpid(pid, &st, 0);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) fprintf(stderr, "mode %s: status %d\n", mode, st);
    CHECK(mode, WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(int argc, char **argv) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    A = bimp_alignment();
    if (argc > 1) return child_mode(argv[1]);

    bimp_stats_t s0;
    bimp_stats_get(NULL);
    bimp_stats_get(&s0);
    CHECK("stats-start-empty", s0.top_bytes == 0 && s0.live_blocks == 0 && s0.free_blocks == 0);

    /* The address-space limit must be set before the heap exists: run it first, in a fresh process. */
    expect_exit_zero("rlimit");

    test_basics();
    test_process_pattern();
    test_pop_cascade();
    test_realloc();
    test_aligned();
    test_decommit();
    test_threads();

    expect_abort("free-max-first", "bimp_free", "not allocated by bimp");
    expect_abort("realloc-max-first", "bimp_realloc", "not allocated by bimp");
    expect_abort("free-max-after-pop", "bimp_free", "not allocated by bimp");
    expect_abort("free-stack", "bimp_free", "not allocated by bimp");
    expect_abort("double-free", "bimp_free", "double free");
    expect_abort("free-popped", "bimp_free", "above the bimp top");
    expect_abort("free-middle", "bimp_free", "not the start of a bimp block");
    expect_abort("free-malloc", "bimp_free", "not allocated by bimp");
    expect_abort("realloc-freed", "bimp_realloc", "double free");
    expect_abort("usable-size-bad", "bimp_malloc_usable_size", "not allocated by bimp");

    bimp_stats_t s = stats();
    CHECK("end-empty", s.top_bytes == 0 && s.live_blocks == 0 && s.free_blocks == 0 && s.live_bytes == 0);
    CHECK("end-reserved", s.reserved_bytes >= s.committed_bytes && s.committed_bytes > 0);
    printf("bimp: alignment %zu, %s, reserved %zu MiB, peak top %zu KiB\n", A,
           bimp_thread_safe() ? "thread-safe" : "single-threaded", s.reserved_bytes >> 20, s.peak_top_bytes >> 10);
    return check_summary();
}
