/* region.c: every region_* entry point and error, compressed pointers across many regions, pages going
 * back to the pool and the OS, cleanup callback order, threads, and the abort on a bad free (the program
 * re-executes itself through RALLOCS_TEST_EXE for each abort case). */
#define _GNU_SOURCE
#include <rallocs.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
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
region_t *region_create(void);
void region_destroy(region_t *r);
void region_reset(region_t *r);
void *region_alloc(region_t *r, size_t size);
void *region_alloc_aligned(region_t *r, size_t size, size_t align);
void *region_calloc(region_t *r, size_t n, size_t size);
void *region_realloc(region_t *r, void *p, size_t size);
void region_free(region_t *r, void *p);
size_t region_usable_size(const void *p);
bool region_contains(const region_t *r, const void *p);
uint32_t region_offset(const void *p);
void *region_at(uint32_t offset);
int region_on_destroy(region_t *r, void (*fn)(void *), void *arg);
void region_stats_get(const region_t *r, region_stats_t *stats);

_Static_assert(sizeof(region_stats_t) == 9 * sizeof(size_t), "region_stats_t has nine size_t fields");
_Static_assert(offsetof(region_stats_t, live_bytes) == 0, "live_bytes first");
_Static_assert(offsetof(region_stats_t, pages_cached) == 4 * sizeof(size_t), "pages_cached fifth");
_Static_assert(offsetof(region_stats_t, pool_pages_carved) == 8 * sizeof(size_t), "pool_pages_carved last");

static region_stats_t stats(const region_t *r) {
    region_stats_t s;
    memset(&s, 0xff, sizeof s);
    region_stats_get(r, &s);
    return s;
}

static size_t rss_bytes(void) {
    return statm_pages(1) * (size_t)sysconf(_SC_PAGESIZE);
}

/* ---- abort cases, run in a child process ---------------------------------------------------------- */

static int child_case(const char *name) {
    region_t *r = region_create();
    region_t *s = region_create();
    char *a = region_alloc(r, 64);
    char *b = region_alloc(s, 64);
    char *big = region_alloc(r, 100000);
    int local = 0;
    if (!strcmp(name, "free-stack")) region_free(r, &local);
    else if (!strcmp(name, "free-other-region")) region_free(r, b);
    else if (!strcmp(name, "free-interior")) region_free(r, a + 16);
    else if (!strcmp(name, "free-twice")) { region_free(r, a); region_free(r, a); }
    else if (!strcmp(name, "free-large-twice")) { region_free(r, big); region_free(r, big); }
    else if (!strcmp(name, "free-malloc")) { void *m = malloc(32); region_free(r, m); }
    else if (!strcmp(name, "free-null-region")) region_free(NULL, a);
    else if (!strcmp(name, "realloc-other-region")) region_realloc(r, b, 10);
    else if (!strcmp(name, "offset-stack")) region_offset(&local);
    else if (!strcmp(name, "destroy-twice")) { region_destroy(s); region_destroy(s); }
    else if (!strcmp(name, "usable-freed")) { region_free(r, a); region_usable_size(a); }
    else if (!strcmp(name, "ulimit")) {
        /* A fresh process under a low address-space limit: creating a region fails cleanly. */
        return 3; /* handled in main before any region use */
    }
    return 2; /* should have aborted */
}

/* Runs this program with argv[1] = "--child", argv[2] = name; returns 1 when it died of SIGABRT after
 * printing one line naming `func` and "invalid pointer". */
static int aborts_with(const char *name, const char *func) {
    const char *exe = getenv("RALLOCS_TEST_EXE");
    if (!exe) return 0;
    char log[] = "/tmp/rallocs-region-XXXXXX";
    int fd = mkstemp(log);
    if (fd < 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 2);
        execl(exe, exe, "--child", name, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char buf[512] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(log);
    int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && n > 0;
    char want[128];
    snprintf(want, sizeof want, "rallocs: %s(): invalid pointer 0x", func);
    ok = ok && strncmp(buf, want, strlen(want)) == 0 && strchr(buf, '\n') == buf + n - 1;
    if (!ok) fprintf(stderr, "case %s: status %d, stderr: %s\n", name, status, buf);
    return ok;
}

static int ulimit_child(void) {
    struct rlimit rl = {256u << 20, 256u << 20};
    /* VmSize of this small program is far below 256 MiB; 32 GiB cannot be reserved under it. */
    if (setrlimit(RLIMIT_AS, &rl) != 0) return 4;
    void *m = malloc(1000);
    if (!m) return 5;
    free(m);
    errno = 0;
    region_t *r = region_create();
    if (r != NULL) return 6;
    if (errno != ENOMEM) return 7;
    region_stats_t s = stats(NULL);
    if (s.pool_pages_carved != 0) return 8;
    return 0;
}

static int runs_ok_under_ulimit(void) {
    const char *exe = getenv("RALLOCS_TEST_EXE");
    if (!exe) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        execl(exe, exe, "--child", "ulimit", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) fprintf(stderr, "ulimit child: status %d\n", status);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ---- callbacks ------------------------------------------------------------------------------------ */

static int order[16];
static int norder;
static void note(void *arg) { order[norder++] = (int)(intptr_t)arg; }

/* ---- threads -------------------------------------------------------------------------------------- */

static volatile int stop_churn;
static int worker_failures;

static uint64_t xs(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static void *worker(void *arg) {
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    region_t *r = region_create();
    enum { N = 2000 };
    static _Thread_local unsigned char *ptr[N];
    static _Thread_local size_t len[N];
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        size_t k = xs(&seed) % N;
        if (ptr[k]) {
            for (size_t j = 0; j < len[k]; j++) bad |= ptr[k][j] != (unsigned char)(k + j);
            region_free(r, ptr[k]);
        }
        len[k] = xs(&seed) % 300;
        ptr[k] = region_alloc(r, len[k]);
        if (!ptr[k]) { bad = 1; break; }
        for (size_t j = 0; j < len[k]; j++) ptr[k][j] = (unsigned char)(k + j);
    }
    region_stats_t s = stats(r);
    size_t live = 0;
    for (int k = 0; k < N; k++) live += ptr[k] != NULL;
    bad |= s.live_objects != live;
    region_destroy(r);
    if (bad) __atomic_add_fetch(&worker_failures, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *churn(void *arg) {
    size_t *n = arg;
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED) || *n < 100) {
        region_t *r = region_create();
        if (!r) { __atomic_add_fetch(&worker_failures, 1, __ATOMIC_RELAXED); break; }
        for (int i = 0; i < 40; i++) region_alloc(r, (size_t)i * 200);
        region_alloc(r, 50000);
        region_destroy(r);
        ++*n;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--child")) {
        if (!strcmp(argv[2], "ulimit")) return ulimit_child();
        return child_case(argv[2]);
    }

    /* Before any region: a process that never uses regions pays nothing. */
    region_stats_t s0 = stats(NULL);
    CHECK("no-region-no-pages", s0.pool_pages_carved == 0 && s0.live_bytes == 0 && s0.page_size > 0);
    CHECK("offset-null", region_offset(NULL) == 0);
    CHECK("at-zero", region_at(0) == NULL);

    /* NULL arguments. */
    errno = 0;
    CHECK("alloc-null-region", region_alloc(NULL, 8) == NULL && errno == EINVAL);
    errno = 0;
    CHECK("calloc-null-region", region_calloc(NULL, 1, 8) == NULL && errno == EINVAL);
    errno = 0;
    CHECK("aligned-null-region", region_alloc_aligned(NULL, 8, 64) == NULL && errno == EINVAL);
    errno = 0;
    CHECK("realloc-null-region", region_realloc(NULL, NULL, 8) == NULL && errno == EINVAL);
    CHECK("on-destroy-null-region", region_on_destroy(NULL, note, NULL) == EINVAL);
    region_destroy(NULL);
    region_reset(NULL);
    region_free(NULL, NULL);
    CHECK("usable-null", region_usable_size(NULL) == 0);
    CHECK("contains-null", !region_contains(NULL, &s0));
    region_stats_get(NULL, NULL);

    region_t *r = region_create();
    CHECK("create", r != NULL);
    CHECK("contains-null-pointer", !region_contains(r, NULL));
    region_free(r, NULL);

    /* Allocation: alignment, distinct blocks, usable size, contents. */
    void *z1 = region_alloc(r, 0), *z2 = region_alloc(r, 0);
    CHECK("alloc-zero-unique", z1 && z2 && z1 != z2);
    int aligned = 1, usable = 1, inside = 1;
    char *blocks[100];
    for (int i = 0; i < 100; i++) {
        size_t n = (size_t)i * 37 + 1;
        blocks[i] = region_alloc(r, n);
        aligned &= blocks[i] && (uintptr_t)blocks[i] % 16 == 0;
        usable &= region_usable_size(blocks[i]) >= n;
        inside &= region_contains(r, blocks[i]) && region_contains(r, blocks[i] + n - 1);
        memset(blocks[i], i, n);
    }
    CHECK("alloc-16-aligned", aligned);
    CHECK("usable-size-at-least-asked", usable);
    CHECK("contains-own-blocks", inside);
    int intact = 1;
    for (int i = 0; i < 100; i++)
        for (size_t j = 0; j < (size_t)i * 37 + 1; j++) intact &= blocks[i][j] == (char)i;
    CHECK("blocks-do-not-overlap", intact);
    region_stats_t s = stats(r);
    CHECK("stats-live-objects", s.live_objects == 102);
    CHECK("stats-live-bytes", s.live_bytes >= 100 * 1832 && s.peak_bytes >= s.live_bytes);
    CHECK("stats-pages", s.pages_in_use >= 2 && s.page_size == 16384 && s.pool_pages_carved >= s.pages_in_use);
    for (int i = 0; i < 100; i += 2) region_free(r, blocks[i]);
    CHECK("free-drops-live", stats(r).live_objects == 52);

    /* Aligned allocation. */
    int al = 1;
    for (size_t a = 1; a <= (1u << 22); a <<= 1) {
        char *p = region_alloc_aligned(r, 100, a);
        al &= p && (uintptr_t)p % a == 0 && region_usable_size(p) >= 100;
        if (p) { memset(p, 1, 100); region_free(r, p); }
    }
    CHECK("aligned-every-power-of-two", al);
    errno = 0;
    CHECK("aligned-not-power-of-two", region_alloc_aligned(r, 10, 24) == NULL && errno == EINVAL);
    errno = 0;
    CHECK("aligned-zero", region_alloc_aligned(r, 10, 0) == NULL && errno == EINVAL);

    /* Large blocks get runs of pages. */
    char *big = region_alloc(r, 1u << 20);
    CHECK("large-alloc", big && (uintptr_t)big % 16 == 0 && region_usable_size(big) >= (1u << 20));
    if (big) { memset(big, 7, 1u << 20); CHECK("large-contains-end", region_contains(r, big + (1u << 20) - 1)); }
    region_free(r, big);

    /* Overflow and exhaustion. */
    errno = 0;
    CHECK("alloc-huge", region_alloc(r, SIZE_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("alloc-beyond-reservation", region_alloc(r, (size_t)64 << 30) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("calloc-overflow", region_calloc(r, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK("realloc-huge", region_realloc(r, blocks[1], SIZE_MAX) == NULL && errno == ENOMEM);
    CHECK("realloc-huge-keeps-block", blocks[1][0] == 1 && region_usable_size(blocks[1]) >= 38);

    /* Exhausting the 32 GiB reservation: NULL with ENOMEM; the space comes back when freed. Only the
     * first page of each large block is touched, so this costs address space, not memory. */
    {
        size_t huge = (size_t)15 << 30;
        char *h1 = region_alloc(r, huge), *h2 = region_alloc(r, huge);
        CHECK("huge-blocks", h1 && h2 && region_usable_size(h1) >= huge);
        errno = 0;
        char *h3 = region_alloc(r, huge);
        CHECK("reservation-exhausted-enomem", h3 == NULL && errno == ENOMEM);
        region_free(r, h1);
        char *h4 = region_alloc(r, huge);
        CHECK("huge-space-reused", h4 != NULL);
        region_free(r, h2);
        region_free(r, h4);
        char *h5 = region_alloc(r, huge);
        CHECK("huge-freed-space-reused", h5 != NULL);
        region_free(r, h5);
    }

    /* calloc zeroes recycled memory. */
    char *d = region_alloc(r, 500);
    memset(d, 0xAB, 500);
    region_free(r, d);
    unsigned char *c = region_calloc(r, 10, 50);
    int zero = c != NULL;
    for (int i = 0; c && i < 500; i++) zero &= c[i] == 0;
    CHECK("calloc-zeroes", zero);

    /* realloc: NULL, in place for the last block, moving keeps contents. */
    char *q = region_realloc(r, NULL, 40);
    CHECK("realloc-null-allocates", q && region_contains(r, q));
    memcpy(q, "0123456789012345678901234567890123456789", 40);
    char *q2 = region_realloc(r, q, 400);
    CHECK("realloc-last-in-place", q2 == q && region_usable_size(q2) >= 400);
    region_alloc(r, 8); /* q is no longer last */
    char *q3 = region_realloc(r, q2, 4000);
    CHECK("realloc-moves", q3 && q3 != q2 && memcmp(q3, "0123456789", 10) == 0);
    char *q4 = region_realloc(r, q3, 100000);
    CHECK("realloc-to-large", q4 && memcmp(q4, "0123456789", 10) == 0 && region_usable_size(q4) >= 100000);
    char *q5 = region_realloc(r, q4, 10);
    CHECK("realloc-shrink-from-large", q5 && memcmp(q5, "0123456789", 10) == 0);

    /* Cleanup callbacks: reverse order, on reset and on destroy. */
    norder = 0;
    for (int i = 1; i <= 5; i++) CHECK("on-destroy-ok", region_on_destroy(r, note, (void *)(intptr_t)i) == 0);
    CHECK("on-destroy-null-fn", region_on_destroy(r, NULL, NULL) == EINVAL);
    CHECK("callbacks-not-yet", norder == 0);
    region_reset(r);
    CHECK("callbacks-reverse-on-reset", norder == 5 && order[0] == 5 && order[1] == 4 && order[4] == 1);
    s = stats(r);
    CHECK("reset-frees-all", s.live_objects == 0 && s.live_bytes == 0 && s.pages_in_use == 1);
    CHECK("reset-keeps-peak", s.peak_bytes >= (1u << 20));
    region_on_destroy(r, note, (void *)(intptr_t)7);
    region_on_destroy(r, note, (void *)(intptr_t)8);
    region_destroy(r);
    CHECK("callbacks-reverse-on-destroy", norder == 7 && order[5] == 8 && order[6] == 7);

    /* Compressed pointers: blocks of many regions round-trip through 32-bit offsets. */
    enum { NR = 64, NB = 200 };
    region_t *rs[NR];
    static void *bp[NR][NB];
    int rt = 1, distinct = 1;
    for (int i = 0; i < NR; i++) {
        rs[i] = region_create();
        for (int j = 0; j < NB; j++) bp[i][j] = region_alloc(rs[i], (size_t)(j % 7) * 100 + (j == 0 ? 70000 : 1));
    }
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NB; j++) {
            uint32_t off = region_offset(bp[i][j]);
            rt &= off != 0 && region_at(off) == bp[i][j];
            rt &= region_offset((char *)bp[i][j] + 8) == off + 1;
            distinct &= region_contains(rs[i], bp[i][j]) && !region_contains(rs[(i + 1) % NR], bp[i][j]);
        }
    CHECK("offsets-round-trip", rt);
    CHECK("blocks-belong-to-their-region", distinct);
    for (int i = 0; i < NR; i++) region_destroy(rs[i]);

    /* Pages go back to the pool, and past its limit to the OS. */
    r = region_create();
    enum { NBIG = 40000 };
    static void *many[NBIG];
    size_t rss0 = rss_bytes();
    for (int i = 0; i < NBIG; i++) { many[i] = region_alloc(r, 1000); memset(many[i], 1, 1000); }
    s = stats(r);
    size_t rss1 = rss_bytes();
    CHECK("many-pages", s.pages_in_use > 2000 && rss1 > rss0 + 30000000);
    for (int i = 0; i < NBIG; i++) region_free(r, many[i]);
    s = stats(r);
    size_t rss2 = rss_bytes();
    CHECK("empty-pages-leave-region", s.pages_in_use <= 2 && s.pages_cached <= 8 && s.live_objects == 0);
    CHECK("pool-keeps-few-resident", s.pool_pages_free <= 256);
    CHECK("pool-releases-to-os", s.pool_pages_released >= 2000);
    CHECK("rss-goes-down", rss2 + 25000000 < rss1);
    region_destroy(r);

    /* Two threads use two regions while a third creates and destroys regions. */
    pthread_t t1, t2, t3;
    size_t churned = 0;
    pthread_create(&t3, NULL, churn, &churned);
    pthread_create(&t1, NULL, worker, (void *)1);
    pthread_create(&t2, NULL, worker, (void *)2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    pthread_join(t3, NULL);
    CHECK("threads-own-regions", worker_failures == 0);
    CHECK("churn-ran", churned >= 100);

    /* Bad pointers abort with one line naming the function and the pointer. */
    CHECK("abort-free-stack", aborts_with("free-stack", "region_free"));
    CHECK("abort-free-other-region", aborts_with("free-other-region", "region_free"));
    CHECK("abort-free-interior", aborts_with("free-interior", "region_free"));
    CHECK("abort-free-twice", aborts_with("free-twice", "region_free"));
    CHECK("abort-free-large-twice", aborts_with("free-large-twice", "region_free"));
    CHECK("abort-free-malloc", aborts_with("free-malloc", "region_free"));
    CHECK("abort-free-null-region", aborts_with("free-null-region", "region_free"));
    CHECK("abort-realloc-other-region", aborts_with("realloc-other-region", "region_realloc"));
    CHECK("abort-offset-stack", aborts_with("offset-stack", "region_offset"));
    CHECK("abort-destroy-twice", aborts_with("destroy-twice", "region_destroy"));
    CHECK("abort-usable-freed", aborts_with("usable-freed", "region_usable_size"));
    CHECK("ulimit-v-create-fails-cleanly", runs_ok_under_ulimit());

    return check_summary();
}
