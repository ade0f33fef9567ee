/* malloc.c: the contract of every function of the malloc family, checked twice: through the prefixed
 * names (rallocs_malloc, ...) and through the override (malloc, ...), which the library exports with its
 * default feature `override`. Every call goes through a function-pointer table read through a volatile
 * pointer, so the compiler cannot treat the calls as builtins (it may not fold an alignment check or a
 * zeroing check away, nor warn about the deliberately huge sizes).
 *
 * What is checked, for both tables:
 *   - alignment (16 bytes, or the requested alignment) of every returned pointer, usable size >= request,
 *     writable up to the usable size, no two live blocks overlap (1 B .. 8 MiB, ~220 sizes all live at once);
 *   - realloc growing and shrinking through the same sizes, contents preserved, realloc(NULL, n),
 *     realloc(p, 0) frees (live bytes fall), failed realloc leaves the block intact;
 *   - calloc zeroes, also memory that was just freed dirty (small, medium and large sizes);
 *   - zero sizes everywhere give unique freeable pointers; free(NULL) & co. do nothing;
 *   - the "Bad input" list of issue 3: overflow -> NULL + ENOMEM, non-power-of-two alignment -> NULL +
 *     EINVAL, posix_memalign returns the error without touching *ptr or errno;
 *   - every power-of-two alignment from 1 to 64 MiB through aligned_alloc, memalign and posix_memalign;
 *   - valloc / pvalloc page alignment and rounding; free_sized / free_aligned_sized / cfree;
 *   - statistics: live_bytes moves by exactly the usable size, mallocs/frees counts move by exactly the
 *     calls made, committed/reserved/peak ordering, large blocks, rallocs_trim releases memory and counts;
 *   - mallinfo2, malloc_stats, rallocs_stats_print produce output;
 *   - free/realloc of a pointer rallocs never returned (stack, interior of a small and of a large block,
 *     mmap, glibc's own malloc, a block freed twice in a row) aborts with SIGABRT and exactly one line
 *     `rallocs: <function>(): invalid pointer 0x<ptr> (<why>)` on stderr (the test re-executes itself).
 *
 * Options (the program re-executed with them): RALLOCS_PURGE_DELAY_MS=0 gives freed memory back at once,
 * a long delay keeps it; RALLOCS_SHOW_STATS=1 prints the statistics at exit.
 *
 * Also: malloc from a constructor (before main), glibc's __libc_* aliases are rallocs, realloc of
 * over-aligned blocks, many malloc(0) are all distinct.
 *
 * Plus a prototype redeclaration of every rallocs_* function of the family (a mismatch with rallocs.h
 * fails to compile) and _Static_asserts on the layout of rallocs_stats_t. */
#define _GNU_SOURCE
#include <rallocs.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* ---- Prototype checks: each must match the header's declaration exactly. ---- */
void *rallocs_malloc(size_t size);
void rallocs_free(void *ptr);
void *rallocs_calloc(size_t nmemb, size_t size);
void *rallocs_realloc(void *ptr, size_t size);
void *rallocs_reallocarray(void *ptr, size_t nmemb, size_t size);
void *rallocs_aligned_alloc(size_t alignment, size_t size);
int rallocs_posix_memalign(void **memptr, size_t alignment, size_t size);
void *rallocs_memalign(size_t alignment, size_t size);
void *rallocs_valloc(size_t size);
void *rallocs_pvalloc(size_t size);
size_t rallocs_malloc_usable_size(void *ptr);
void rallocs_free_sized(void *ptr, size_t size);
void rallocs_free_aligned_sized(void *ptr, size_t alignment, size_t size);
int rallocs_trim(void);
void rallocs_stats_get(rallocs_stats_t *out);
void rallocs_stats_print(int fd);

/* The override exports these too; glibc 2.36's headers do not declare them. */
void cfree(void *ptr);
void free_sized(void *ptr, size_t size);
void free_aligned_sized(void *ptr, size_t alignment, size_t size);

/* glibc's internal names, which the override exports as aliases too (some programs call them). */
void *__libc_malloc(size_t size);
void __libc_free(void *ptr);
void *__libc_calloc(size_t nmemb, size_t size);
void *__libc_realloc(void *ptr, size_t size);
void *__libc_memalign(size_t alignment, size_t size);

/* ---- Layout of rallocs_stats_t ---- */
#define FIELD_IS(field, type) _Generic(((rallocs_stats_t *)0)->field, type: 1, default: 0)
_Static_assert(FIELD_IS(live_bytes, size_t), "live_bytes is size_t");
_Static_assert(FIELD_IS(committed_bytes, size_t), "committed_bytes is size_t");
_Static_assert(FIELD_IS(reserved_bytes, size_t), "reserved_bytes is size_t");
_Static_assert(FIELD_IS(peak_committed_bytes, size_t), "peak_committed_bytes is size_t");
_Static_assert(FIELD_IS(thread_superblocks, size_t), "thread_superblocks is size_t");
_Static_assert(FIELD_IS(global_superblocks, size_t), "global_superblocks is size_t");
_Static_assert(FIELD_IS(large_blocks, size_t), "large_blocks is size_t");
_Static_assert(FIELD_IS(large_bytes, size_t), "large_bytes is size_t");
_Static_assert(FIELD_IS(heaps, size_t), "heaps is size_t");
_Static_assert(FIELD_IS(mallocs, uint64_t), "mallocs is uint64_t");
_Static_assert(FIELD_IS(frees, uint64_t), "frees is uint64_t");
_Static_assert(FIELD_IS(remote_frees, uint64_t), "remote_frees is uint64_t");
_Static_assert(FIELD_IS(trims, uint64_t), "trims is uint64_t");
#define Z sizeof(size_t)
_Static_assert(offsetof(rallocs_stats_t, live_bytes) == 0 * Z, "live_bytes offset");
_Static_assert(offsetof(rallocs_stats_t, committed_bytes) == 1 * Z, "committed_bytes offset");
_Static_assert(offsetof(rallocs_stats_t, reserved_bytes) == 2 * Z, "reserved_bytes offset");
_Static_assert(offsetof(rallocs_stats_t, peak_committed_bytes) == 3 * Z, "peak_committed_bytes offset");
_Static_assert(offsetof(rallocs_stats_t, thread_superblocks) == 4 * Z, "thread_superblocks offset");
_Static_assert(offsetof(rallocs_stats_t, global_superblocks) == 5 * Z, "global_superblocks offset");
_Static_assert(offsetof(rallocs_stats_t, large_blocks) == 6 * Z, "large_blocks offset");
_Static_assert(offsetof(rallocs_stats_t, large_bytes) == 7 * Z, "large_bytes offset");
_Static_assert(offsetof(rallocs_stats_t, heaps) == 8 * Z, "heaps offset");
#if SIZE_MAX == UINT64_MAX
_Static_assert(offsetof(rallocs_stats_t, mallocs) == 72, "mallocs offset");
_Static_assert(offsetof(rallocs_stats_t, frees) == 80, "frees offset");
_Static_assert(offsetof(rallocs_stats_t, remote_frees) == 88, "remote_frees offset");
_Static_assert(offsetof(rallocs_stats_t, trims) == 96, "trims offset");
_Static_assert(sizeof(rallocs_stats_t) == 104, "rallocs_stats_t size");
#endif
#undef Z

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* ---- The two tables ---- */
typedef struct api {
    const char *name, *free_name, *realloc_name;
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*usable)(void *);
    void (*free_sized)(void *, size_t);
    void (*free_aligned_sized)(void *, size_t, size_t);
    int (*trim)(void);
} api_t;

static int override_trim(void) { return malloc_trim(0); }

static const api_t apis[2] = {
    {"prefixed", "rallocs_free", "rallocs_realloc", rallocs_malloc, rallocs_free, rallocs_calloc, rallocs_realloc,
     rallocs_reallocarray, rallocs_aligned_alloc, rallocs_posix_memalign, rallocs_memalign, rallocs_valloc,
     rallocs_pvalloc, rallocs_malloc_usable_size, rallocs_free_sized, rallocs_free_aligned_sized, rallocs_trim},
    {"override", "free", "realloc", malloc, free, calloc, realloc, reallocarray, aligned_alloc, posix_memalign,
     memalign, valloc, pvalloc, malloc_usable_size, free_sized, free_aligned_sized, override_trim},
};
static const api_t *volatile A; /* the table under test; volatile: the compiler cannot see the callee */

/* CK: CHECK with the table's name in front of the check's name. */
#define CK(nm, expr)                                                                               \
    do {                                                                                           \
        char ck_name_[128];                                                                        \
        snprintf(ck_name_, sizeof ck_name_, "%s: %s", A->name, (nm));                              \
        CHECK(ck_name_, expr);                                                                     \
    } while (0)

static volatile size_t vsize_max = SIZE_MAX; /* huge sizes the compiler cannot see */

static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static rallocs_stats_t stats(void) {
    rallocs_stats_t s;
    memset(&s, 0xff, sizeof s);
    rallocs_stats_get(&s);
    return s;
}

/* A byte pattern that depends on the block (seed) and the offset. */
static inline uint8_t pat(uint32_t seed, size_t i) {
    return (uint8_t)((seed * 0x9E3779B1u) >> 11 ^ (uint32_t)i * 31u ^ (uint32_t)(i >> 8));
}
static void fill(void *p, size_t n, uint32_t seed) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = pat(seed, i);
}
static int intact(const void *p, size_t n, uint32_t seed) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(seed, i)) return 0;
    return 1;
}
static int all_zero(const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* ~220 sizes from 0 to 8 MiB: every size to 64, then ~1.125x steps, plus 2^k-1, 2^k, 2^k+1. */
#define MAX_SIZES 512
static size_t sizes[MAX_SIZES];
static size_t nsizes;
static void make_sizes(void) {
    for (size_t s = 0; s <= 64; s++) sizes[nsizes++] = s;
    for (size_t s = 65; s <= 8 * MiB; s += s / 8 + 1) sizes[nsizes++] = s;
    for (size_t k = 7; k <= 23; k++) {
        sizes[nsizes++] = ((size_t)1 << k) - 1;
        sizes[nsizes++] = (size_t)1 << k;
        if (k < 23) sizes[nsizes++] = ((size_t)1 << k) + 1;
    }
}

typedef struct blk {
    char *p;
    size_t size, usable;
} blk_t;
static int cmp_blk(const void *a, const void *b) {
    const blk_t *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

static int cmp_ptr(const void *a, const void *b) {
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    return x < y ? -1 : x > y;
}

/* All sizes live at once: aligned, usable >= size, writable to the usable size, disjoint. */
static void test_sizes(void) {
    static blk_t b[MAX_SIZES], sorted[MAX_SIZES];
    int ok_nonnull = 1, ok_align = 1, ok_usable = 1, ok_intact = 1, ok_disjoint = 1;
    for (size_t i = 0; i < nsizes; i++) {
        b[i].size = sizes[i];
        b[i].p = A->malloc(sizes[i]);
        if (!b[i].p) { ok_nonnull = 0; continue; }
        ok_align &= aligned(b[i].p, 16);
        b[i].usable = A->usable(b[i].p);
        ok_usable &= b[i].usable >= sizes[i];
        fill(b[i].p, b[i].usable, (uint32_t)i);
    }
    CK("malloc-all-sizes-nonnull", ok_nonnull);
    CK("malloc-all-sizes-16-aligned", ok_align);
    CK("malloc-all-sizes-usable>=size", ok_usable);
    size_t n = 0;
    for (size_t i = 0; i < nsizes; i++) {
        if (!b[i].p) continue;
        ok_intact &= intact(b[i].p, b[i].usable, (uint32_t)i);
        sorted[n++] = b[i];
    }
    CK("malloc-all-sizes-patterns-intact", ok_intact);
    qsort(sorted, n, sizeof *sorted, cmp_blk);
    for (size_t i = 1; i < n; i++) {
        size_t extent = sorted[i - 1].usable ? sorted[i - 1].usable : 1; /* even 0-byte blocks are unique */
        ok_disjoint &= sorted[i - 1].p + extent <= sorted[i].p;
    }
    CK("malloc-all-sizes-disjoint", ok_disjoint);
    for (size_t i = 0; i < nsizes; i++) {
        if (i % 2) A->free(b[i].p);
        else A->free_sized(b[i].p, b[i].size);
    }
}

static void test_zero_and_null(void) {
    void *a = A->malloc(0), *b = A->malloc(0);
    CK("malloc(0)-nonnull", a != NULL && b != NULL);
    CK("malloc(0)-unique", a != b);
    CK("malloc(0)-aligned", aligned(a, 16) && aligned(b, 16));
    A->free(a);
    A->free(b);
    void *c = A->calloc(0, 0), *d = A->calloc(0, 7), *e = A->calloc(7, 0);
    CK("calloc-zero-nonnull", c && d && e);
    CK("calloc-zero-unique", c != d && d != e && c != e);
    A->free(c);
    A->free(d);
    A->free(e);
    void *f = A->realloc(NULL, 0);
    CK("realloc(NULL,0)-nonnull", f != NULL);
    A->free(f);
    void *g = A->aligned_alloc(64, 0), *h = A->memalign(4096, 0), *v = A->valloc(0);
    CK("aligned-zero-nonnull", g && h && v);
    CK("aligned-zero-aligned", aligned(g, 64) && aligned(h, 4096) && aligned(v, 4096));
    A->free(g);
    A->free(h);
    A->free(v);
    void *pm = (void *)1;
    int rc = A->posix_memalign(&pm, 256, 0);
    CK("posix_memalign-zero", rc == 0 && pm != (void *)1 && (pm == NULL || aligned(pm, 256)));
    if (rc == 0) A->free(pm);

    /* The NULL cases do nothing (and do not crash, and do not count as frees of a block). */
    rallocs_stats_t s0 = stats();
    A->free(NULL);
    A->free_sized(NULL, 0);
    A->free_sized(NULL, 100);
    A->free_aligned_sized(NULL, 64, 0);
    rallocs_stats_t s1 = stats();
    CK("free(NULL)-nothing", s1.live_bytes == s0.live_bytes);
    CK("usable(NULL)==0", A->usable(NULL) == 0);

    /* realloc(p, 0) frees p and returns NULL (glibc); realloc(NULL, n) is malloc(n). */
    s0 = stats();
    char *p = A->realloc(NULL, 100);
    size_t u = p ? A->usable(p) : 0;
    s1 = stats();
    CK("realloc(NULL,n)-is-malloc", p != NULL && aligned(p, 16) && u >= 100);
    CK("realloc(NULL,n)-counts-live", s1.live_bytes - s0.live_bytes == u);
    void *q = A->realloc(p, 0);
    rallocs_stats_t s2 = stats();
    CK("realloc(p,0)-returns-NULL", q == NULL);
    CK("realloc(p,0)-frees", s2.live_bytes == s0.live_bytes);
    if (q) A->free(q);
}

/* realloc up through all sizes and back down; contents preserved each step. */
static void test_realloc(void) {
    char *p = A->malloc(1);
    size_t cur = 1;
    uint32_t seed = 1;
    fill(p, cur, seed);
    int ok_nonnull = 1, ok_align = 1, ok_usable = 1, ok_kept = 1;
    void *blockers[2 * MAX_SIZES];
    size_t nb = 0;
    for (int dir = 0; dir < 2; dir++) {
        for (size_t k = 0; k < nsizes; k++) {
            size_t i = dir == 0 ? k : nsizes - 1 - k;
            size_t ns = sizes[i] ? sizes[i] : 1;
            char *q = A->realloc(p, ns);
            if (!q) { ok_nonnull = 0; break; }
            ok_align &= aligned(q, 16);
            ok_usable &= A->usable(q) >= ns;
            ok_kept &= intact(q, cur < ns ? cur : ns, seed);
            p = q;
            cur = ns;
            fill(p, cur, ++seed);
            if (k % 4 == 0) blockers[nb++] = A->malloc(sizes[i] % 512); /* neighbours: not always in place */
        }
    }
    CK("realloc-chain-nonnull", ok_nonnull);
    CK("realloc-chain-aligned", ok_align);
    CK("realloc-chain-usable", ok_usable);
    CK("realloc-chain-contents-kept", ok_kept);
    /* Growing within the usable size keeps the contents too. */
    size_t u = A->usable(p);
    char *q = A->realloc(p, u);
    CK("realloc-to-usable", q != NULL && intact(q, cur, seed));
    if (q) p = q;
    for (size_t i = 0; i < nb; i++) A->free(blockers[i]);

    /* A failed realloc leaves the block alone. */
    fill(p, cur, 777);
    errno = 0;
    q = A->realloc(p, vsize_max);
    CK("realloc-SIZE_MAX-NULL-ENOMEM", q == NULL && errno == ENOMEM);
    errno = 0;
    q = A->realloc(p, vsize_max / 2 + 1);
    CK("realloc-PTRDIFF_MAX+1-NULL-ENOMEM", q == NULL && errno == ENOMEM);
    CK("realloc-failed-block-intact", intact(p, cur, 777));
    A->free(p);

    /* reallocarray */
    p = A->reallocarray(NULL, 10, 100);
    CK("reallocarray(NULL)-is-malloc", p != NULL && aligned(p, 16) && A->usable(p) >= 1000);
    fill(p, 1000, 5);
    q = A->reallocarray(p, 1000, 100);
    CK("reallocarray-grow", q != NULL && A->usable(q) >= 100000 && intact(q, 1000, 5));
    if (q) p = q;
    errno = 0;
    q = A->reallocarray(p, vsize_max / 2 + 1, 2);
    CK("reallocarray-overflow-NULL-ENOMEM", q == NULL && errno == ENOMEM);
    errno = 0;
    q = A->reallocarray(p, (size_t)1 << 32, (size_t)1 << 32);
    CK("reallocarray-overflow2-NULL-ENOMEM", q == NULL && errno == ENOMEM);
    CK("reallocarray-failed-block-intact", intact(p, 1000, 5));
    q = A->reallocarray(p, 3, 5);
    CK("reallocarray-shrink", q != NULL && intact(q, 15, 5));
    A->free(q ? q : p);
}

static void test_calloc(void) {
    static const size_t nm[][2] = {{1, 1},    {3, 5},        {16, 16},     {100, 100},   {1, 4096},
                                   {1000, 1000}, {1, 1 << 20}, {4, 1 << 21}, {1, 5 << 20}, {3, 3 << 20}};
    int ok = 1;
    for (size_t i = 0; i < sizeof nm / sizeof nm[0]; i++) {
        size_t n = nm[i][0] * nm[i][1];
        char *p = A->calloc(nm[i][0], nm[i][1]);
        ok &= p != NULL && aligned(p, 16) && A->usable(p) >= n && all_zero(p, n);
        if (p) fill(p, n, 3); /* dirty it for the next round */
        A->free(p);
    }
    CK("calloc-fresh-zeroed", ok);

    /* Recycled memory: dirty blocks of the same size freed just before, then calloc. */
    static const size_t rs[] = {8, 24, 200, 3000, 40000, 300000, 2 * MiB + 100};
    int ok_nonnull = 1, ok_zero = 1;
    for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++) {
        enum { N = 64 };
        char *b[N];
        size_t n = rs[i] >= MiB ? 4 : N;
        for (size_t j = 0; j < n; j++) {
            b[j] = A->malloc(rs[i]);
            if (b[j]) memset(b[j], 0xa5, A->usable(b[j]));
        }
        for (size_t j = 0; j < n; j++) A->free(b[j]);
        for (size_t j = 0; j < n; j++) {
            b[j] = A->calloc(1, rs[i]);
            ok_nonnull &= b[j] != NULL;
            if (b[j]) ok_zero &= all_zero(b[j], rs[i]);
            if (b[j]) memset(b[j], 0x5a, rs[i]);
        }
        for (size_t j = 0; j < n; j++) A->free(b[j]);
        /* calloc(n, m) with n > 1 through recycled memory as well */
        for (size_t j = 0; j < n; j++) {
            b[j] = A->calloc(rs[i] > 16 ? rs[i] / 8 : 1, 8);
            ok_nonnull &= b[j] != NULL;
            if (b[j]) ok_zero &= all_zero(b[j], rs[i] > 16 ? rs[i] / 8 * 8 : 8);
        }
        for (size_t j = 0; j < n; j++) A->free(b[j]);
    }
    CK("calloc-recycled-nonnull", ok_nonnull);
    CK("calloc-recycled-zeroed", ok_zero);

    errno = 0;
    CK("calloc-overflow-NULL", A->calloc(vsize_max / 2 + 1, 2) == NULL);
    CK("calloc-overflow-ENOMEM", errno == ENOMEM);
    errno = 0;
    CK("calloc-overflow2-NULL-ENOMEM", A->calloc((size_t)1 << 32, (size_t)1 << 32) == NULL && errno == ENOMEM);
    errno = 0;
    CK("calloc-overflow3-NULL-ENOMEM", A->calloc(vsize_max, vsize_max) == NULL && errno == ENOMEM);
    errno = 0;
    CK("calloc-huge-NULL-ENOMEM", A->calloc(1, vsize_max) == NULL && errno == ENOMEM);
}

static void test_errors(void) {
    static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 15, SIZE_MAX - 4096, PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1,
                                  (size_t)1 << 62, (size_t)1 << 50};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        size_t n = huge[i] & vsize_max;
        errno = 0;
        void *p = A->malloc(n);
        CK("malloc-huge-NULL", p == NULL);
        CK("malloc-huge-ENOMEM", errno == ENOMEM);
        A->free(p);
        errno = 0;
        p = A->aligned_alloc(64, n);
        CK("aligned_alloc-huge-NULL-ENOMEM", p == NULL && errno == ENOMEM);
        errno = 0;
        p = A->memalign(1 << 20, n);
        CK("memalign-huge-NULL-ENOMEM", p == NULL && errno == ENOMEM);
        errno = 0;
        p = A->valloc(n);
        CK("valloc-huge-NULL-ENOMEM", p == NULL && errno == ENOMEM);
        errno = 0;
        p = A->pvalloc(n);
        CK("pvalloc-huge-NULL-ENOMEM", p == NULL && errno == ENOMEM);
        void *sentinel = (void *)0x1230, *out = sentinel;
        errno = 4242;
        int rc = A->posix_memalign(&out, 4096, n);
        CK("posix_memalign-huge-ENOMEM", rc == ENOMEM);
        CK("posix_memalign-huge-untouched", out == sentinel && errno == 4242);
    }
    /* size + alignment overflows */
    errno = 0;
    CK("aligned_alloc-size+align-overflow", A->aligned_alloc(64 * MiB, vsize_max - 32 * MiB) == NULL && errno == ENOMEM);

    /* Non-power-of-two alignments */
    static const size_t bad[] = {0, 3, 5, 6, 12, 24, 48, 100, 4095, 4097, 3 * MiB, ((size_t)1 << 40) + 1, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t a = bad[i] & vsize_max;
        errno = 0;
        CK("aligned_alloc-bad-align-NULL-EINVAL", A->aligned_alloc(a, 64) == NULL && errno == EINVAL);
        if (a != 0) { /* glibc's memalign treats 0 like malloc; the issue only names non-powers of two */
            errno = 0;
            CK("memalign-bad-align-NULL-EINVAL", A->memalign(a, 64) == NULL && errno == EINVAL);
        }
        void *sentinel = (void *)0x4560, *out = sentinel;
        errno = 4242;
        int rc = A->posix_memalign(&out, a, 64);
        CK("posix_memalign-bad-align-EINVAL", rc == EINVAL);
        CK("posix_memalign-bad-align-untouched", out == sentinel && errno == 4242);
    }
    /* posix_memalign also wants a multiple of sizeof(void *) */
    for (size_t a = 1; a < sizeof(void *); a *= 2) {
        void *sentinel = (void *)0x7890, *out = sentinel;
        errno = 4242;
        int rc = A->posix_memalign(&out, a, 64);
        CK("posix_memalign-align<sizeof(void*)-EINVAL", rc == EINVAL && out == sentinel && errno == 4242);
    }
    /* A power of two so large that no block can have it */
    errno = 0;
    void *p = A->aligned_alloc((size_t)1 << 62, 1);
    CK("aligned_alloc-2^62-NULL", p == NULL && (errno == ENOMEM || errno == EINVAL));
    /* pvalloc rounds up to a page: overflow there too */
    errno = 0;
    CK("pvalloc-round-overflow", A->pvalloc(vsize_max - 100) == NULL && errno == ENOMEM);
}

static void test_alignments(void) {
    long page = sysconf(_SC_PAGESIZE);
    int ok_nonnull = 1, ok_align = 1, ok_usable = 1, ok_data = 1, ok_disjoint = 1;
    /* Small alignments: still at least 16. */
    for (size_t a = 1; a <= 8; a *= 2) {
        void *p = A->aligned_alloc(a, 10), *q = A->memalign(a, 10);
        ok_nonnull &= p && q;
        ok_align &= aligned(p, 16) && aligned(q, 16);
        A->free(p);
        A->free(q);
    }
    void *pm = NULL;
    CK("posix_memalign-align-8", A->posix_memalign(&pm, 8, 10) == 0 && pm && aligned(pm, 16));
    A->free(pm);
    /* 16 .. 64 MiB, with sizes below, at and above the alignment. */
    for (size_t a = 16; a <= 64 * MiB; a *= 2) {
        size_t sz[] = {1, a / 2 + 1, a, a + 16, 100};
        for (size_t k = 0; k < sizeof sz / sizeof sz[0]; k++) {
            size_t n = sz[k];
            char *b[3] = {A->aligned_alloc(a, n), A->memalign(a, n), NULL};
            int rc = A->posix_memalign((void **)&b[2], a, n);
            ok_nonnull &= b[0] && b[1] && rc == 0 && b[2];
            for (int j = 0; j < 3; j++) {
                if (!b[j]) continue;
                ok_align &= aligned(b[j], a);
                size_t u = A->usable(b[j]);
                ok_usable &= u >= n;
                size_t head = u < 8 * KiB ? u : 8 * KiB;
                fill(b[j], head, (uint32_t)(a + k * 3 + (size_t)j));
                b[j][u - 1] = (char)j;
            }
            for (int j = 0; j < 3; j++) {
                if (!b[j]) continue;
                size_t u = A->usable(b[j]);
                size_t head = u < 8 * KiB ? u : 8 * KiB;
                ok_data &= intact(b[j], head - (head == u), (uint32_t)(a + k * 3 + (size_t)j));
                ok_data &= b[j][u - 1] == (char)j;
                for (int m = 0; m < 3; m++)
                    if (m != j && b[m]) ok_disjoint &= b[j] + u <= b[m] || b[m] + A->usable(b[m]) <= b[j];
            }
            A->free(b[0]);
            A->free_aligned_sized(b[1], a, n);
            A->free(b[2]);
        }
    }
    CK("aligned-nonnull", ok_nonnull);
    CK("aligned-alignment", ok_align);
    CK("aligned-usable>=size", ok_usable);
    CK("aligned-data-intact", ok_data);
    CK("aligned-disjoint", ok_disjoint);

    /* valloc / pvalloc */
    static const size_t vs[] = {1, 100, 4095, 4096, 4097, 65536 + 1, 3 * MiB + 5};
    int ok_v = 1, ok_pv = 1;
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        char *v = A->valloc(vs[i]), *pv = A->pvalloc(vs[i]);
        size_t rounded = (vs[i] + (size_t)page - 1) / (size_t)page * (size_t)page;
        ok_v &= v && aligned(v, (size_t)page) && A->usable(v) >= vs[i];
        ok_pv &= pv && aligned(pv, (size_t)page) && A->usable(pv) >= rounded;
        if (pv) memset(pv, 1, rounded); /* pvalloc's rounded size is all usable */
        if (v) memset(v, 2, vs[i]);
        A->free(v);
        A->free(pv);
    }
    char *pv0 = A->pvalloc(0);
    CK("pvalloc(0)-one-page", pv0 && aligned(pv0, (size_t)page) && A->usable(pv0) >= (size_t)page);
    A->free(pv0);
    CK("valloc-page-aligned", ok_v);
    CK("pvalloc-page-aligned-rounded", ok_pv);
}

/* Statistics move as the calls say. Single-threaded: nothing else allocates between two reads. */
static void test_stats_moves(void) {
    rallocs_stats_t s0 = stats();
    char *p = A->malloc(100);
    size_t u = A->usable(p);
    rallocs_stats_t s1 = stats();
    CK("stats-malloc-live+usable", s1.live_bytes - s0.live_bytes == u);
    CK("stats-malloc-count+1", s1.mallocs - s0.mallocs == 1);
    A->free(p);
    rallocs_stats_t s2 = stats();
    CK("stats-free-live-back", s2.live_bytes == s0.live_bytes);
    CK("stats-free-count+1", s2.frees - s1.frees == 1);

    enum { N = 1000 };
    static void *b[N];
    size_t sum = 0;
    s0 = stats();
    for (int i = 0; i < N; i++) {
        b[i] = A->malloc((size_t)(i % 300) + 1);
        sum += A->usable(b[i]);
    }
    s1 = stats();
    CK("stats-1000-mallocs", s1.mallocs - s0.mallocs == N);
    CK("stats-1000-live", s1.live_bytes - s0.live_bytes == sum);
    CK("stats-committed>=live", s1.committed_bytes >= s1.live_bytes);
    CK("stats-reserved>=committed", s1.reserved_bytes >= s1.committed_bytes);
    CK("stats-peak>=committed", s1.peak_committed_bytes >= s1.committed_bytes);
    CK("stats-heaps>=1", s1.heaps >= 1);
    CK("stats-superblocks>=1", s1.thread_superblocks + s1.global_superblocks >= 1);
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0) A->free(b[i]);
        else if (i % 3 == 1) A->free_sized(b[i], (size_t)(i % 300) + 1);
        else if (A == &apis[1]) cfree(b[i]);
        else A->free(b[i]);
    }
    s2 = stats();
    CK("stats-1000-frees", s2.frees - s1.frees == N);
    CK("stats-1000-live-back", s2.live_bytes == s0.live_bytes);
    CK("stats-peak-monotonic", s2.peak_committed_bytes >= s1.peak_committed_bytes);

    /* A large block */
    s0 = stats();
    p = A->malloc(32 * MiB);
    u = p ? A->usable(p) : 0;
    if (p) p[0] = p[32 * MiB - 1] = 1;
    s1 = stats();
    CK("stats-large-live", p && s1.live_bytes - s0.live_bytes == u);
    CK("stats-large-block-counted", s1.large_blocks >= 1 && s1.large_bytes >= 32 * MiB);
    CK("stats-large-committed", s1.committed_bytes >= s1.live_bytes && s1.committed_bytes >= 32 * MiB);
    CK("stats-large-reserved", s1.reserved_bytes >= s1.committed_bytes);
    CK("stats-large-peak", s1.peak_committed_bytes >= s1.committed_bytes && s1.peak_committed_bytes >= 32 * MiB);
    A->free(p);
    s2 = stats();
    CK("stats-large-live-back", s2.live_bytes == s0.live_bytes);

    /* realloc moves live bytes by exactly the change of usable size, small and large, both ways */
    static const size_t steps[] = {10, 100, 3000, 20000, 300000, 5 * MiB, 40 * MiB, 1 * MiB, 50000, 200, 1};
    p = NULL;
    size_t old_u = 0;
    int ok = 1;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        s0 = stats();
        char *q = A->realloc(p, steps[i]);
        s1 = stats();
        if (!q) { ok = 0; break; }
        size_t nu = A->usable(q);
        ok &= s1.live_bytes - s0.live_bytes == nu - old_u;
        if (s1.live_bytes - s0.live_bytes != nu - old_u)
            fprintf(stderr, "%s: realloc to %zu: live %zu -> %zu, usable %zu -> %zu\n", A->name, steps[i], s0.live_bytes,
                    s1.live_bytes, old_u, nu);
        p = q;
        old_u = nu;
    }
    CK("stats-realloc-live-exact", ok);
    A->free(p);
}

/* Large blocks grown and shrunk by realloc (in place or moved), with other large blocks in between,
 * also over-aligned ones: the contents follow (head, tail and one word per page are checked). */
static void big_fill(char *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i += 4096) p[i] = (char)pat(seed, i / 4096);
    fill(p, n < 8192 ? n : 8192, seed);
    p[n - 1] = (char)(seed ^ 0x5a);
}
/* The first `keep` bytes of a block that big_fill(p, n, seed) filled. */
static int big_intact(const char *p, size_t keep, size_t n, uint32_t seed) {
    int ok = intact(p, keep < 8192 ? keep : 8192, seed);
    for (size_t i = 8192; i < keep; i += 4096) ok &= p[i] == (char)pat(seed, i / 4096);
    if (keep == n) ok &= p[n - 1] == (char)(seed ^ 0x5a);
    return ok;
}
static void test_large_realloc(void) {
    static const size_t chain[] = {20 * KiB, 100 * KiB, 1 * MiB, 1 * MiB + 4096, 3 * MiB, 9 * MiB, 33 * MiB,
                                   64 * MiB, 20 * MiB, 2 * MiB, 600 * KiB, 40 * KiB, 5 * MiB};
    int ok_nonnull = 1, ok_kept = 1, ok_usable = 1;
    for (int variant = 0; variant < 2; variant++) {
        size_t n = chain[0];
        char *p = variant ? A->aligned_alloc(1 * MiB, n) : A->malloc(n);
        void *others[16] = {0};
        if (!p) { ok_nonnull = 0; continue; }
        uint32_t seed = 900 + (uint32_t)variant;
        fill(p, n, seed);
        for (size_t i = 1; i < sizeof chain / sizeof chain[0]; i++) {
            others[i] = A->malloc(chain[i] / 2); /* a neighbour, so that growth in place is not a given */
            char *q = A->realloc(p, chain[i]);
            if (!q) { ok_nonnull = 0; break; }
            size_t keep = n < chain[i] ? n : chain[i];
            ok_kept &= i == 1 ? intact(q, keep, seed) : big_intact(q, keep, n, seed);
            ok_usable &= A->usable(q) >= chain[i] && aligned(q, 16);
            p = q;
            n = chain[i];
            big_fill(p, n, ++seed);
            if (i % 3 == 0) { A->free(others[i - 1]); others[i - 1] = NULL; }
        }
        A->free(p);
        for (int i = 0; i < 16; i++) A->free(others[i]);
    }
    CK("large-realloc-nonnull", ok_nonnull);
    CK("large-realloc-contents", ok_kept);
    CK("large-realloc-usable", ok_usable);
}

/* Trim gives free memory back and counts the call. */
static void test_trim(void) {
    enum { N = 65536 };
    static void *b[N];
    rallocs_stats_t s0 = stats();
    for (int i = 0; i < N; i++) {
        b[i] = A->malloc(1000);
        if (b[i]) memset(b[i], 7, 1000);
    }
    rallocs_stats_t s1 = stats();
    CK("trim-setup-live", s1.live_bytes - s0.live_bytes >= (size_t)N * 1000);
    CK("trim-setup-committed>=live", s1.committed_bytes >= s1.live_bytes);
    for (int i = 0; i < N; i++) A->free(b[i]);
    rallocs_stats_t s2 = stats();
    CK("trim-setup-live-back", s2.live_bytes == s0.live_bytes);
    int r = A->trim();
    rallocs_stats_t s3 = stats();
    CK("trim-counted", s3.trims - s2.trims == 1);
    /* 1 if memory was released; a purge that already ran before the call is the only excuse for 0 */
    CK("trim-returns-1", r == 1 || s2.committed_bytes + 32 * MiB <= s1.committed_bytes);
    CK("trim-released", s3.committed_bytes <= s0.committed_bytes + 8 * MiB);
    CK("trim-peak-kept", s3.peak_committed_bytes >= s1.committed_bytes);
    int r2 = A->trim();
    rallocs_stats_t s4 = stats();
    CK("trim-again-nothing-to-release", r2 == 0);
    CK("trim-again-counted", s4.trims - s3.trims == 1);
    /* Memory is usable after a trim. */
    char *p = A->malloc(1000), *q = A->malloc(5 * MiB);
    CK("malloc-after-trim", p && q);
    if (p) memset(p, 1, 1000);
    if (q) memset(q, 1, 5 * MiB);
    A->free(p);
    A->free(q);
}

/* Reads everything a file descriptor gets from fn(fd) through a pipe. */
static size_t capture(void (*fn)(int), char *buf, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) return 0;
    fn(fds[1]);
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fds[0], buf + n, cap - 1 - n)) > 0) n += (size_t)r;
    buf[n] = 0;
    close(fds[0]);
    return n;
}
static void print_stats_to(int fd) { rallocs_stats_print(fd); }
static void malloc_stats_to(int fd) {
    int saved = dup(2);
    dup2(fd, 2);
    malloc_stats();
    dup2(saved, 2);
    close(saved);
}

static void test_reports(void) {
    enum { N = 10240 };
    static void *b[N];
    for (int i = 0; i < N; i++) b[i] = malloc(1024);
    struct mallinfo2 mi = mallinfo2();
    rallocs_stats_t s = stats();
    CHECK("mallinfo2-uordblks-live", mi.uordblks >= 10 * MiB);
    CHECK("mallinfo2-arena>=uordblks", mi.arena + mi.hblkhd >= mi.uordblks);
    CHECK("mallinfo2-within-committed", mi.uordblks <= s.committed_bytes + s.large_bytes);
    for (int i = 0; i < N; i++) free(b[i]);
    static char buf[1 << 16];
    size_t n = capture(print_stats_to, buf, sizeof buf);
    CHECK("rallocs_stats_print-writes-lines", n > 0 && buf[n - 1] == '\n');
    n = capture(malloc_stats_to, buf, sizeof buf);
    CHECK("malloc_stats-writes-stderr", n > 0);
}

/* A constructor runs before main (and before any constructor of a C++ program would): malloc works. */
static char *early_block;
static size_t early_usable;
__attribute__((constructor)) static void early_malloc(void) {
    early_block = malloc(1000);
    if (early_block) {
        memset(early_block, 0x42, 1000);
        early_usable = malloc_usable_size(early_block);
    }
}

static void test_misc(void) {
    CHECK("constructor-malloc", early_block != NULL && early_usable >= 1000 &&
                                    early_block[999] == 0x42 && rallocs_malloc_usable_size(early_block) == early_usable);
    rallocs_stats_t s0 = stats();
    rallocs_free(early_block);
    rallocs_stats_t s1 = stats();
    CHECK("constructor-block-freed", s0.live_bytes - s1.live_bytes == early_usable);

    /* __libc_* are the same allocator */
    s0 = stats();
    char *a = __libc_malloc(300), *b = __libc_calloc(10, 30), *c = __libc_memalign(256, 300);
    char *d = __libc_realloc(NULL, 300);
    s1 = stats();
    CHECK("__libc_aliases-work", a && b && c && d && aligned(c, 256) && all_zero(b, 300));
    CHECK("__libc_aliases-are-rallocs", s1.mallocs - s0.mallocs == 4 &&
                                            s1.live_bytes - s0.live_bytes == rallocs_malloc_usable_size(a) +
                                                rallocs_malloc_usable_size(b) + rallocs_malloc_usable_size(c) +
                                                rallocs_malloc_usable_size(d));
    free(a);
    rallocs_free(b);
    __libc_free(c);
    __libc_free(d);
    rallocs_stats_t s2 = stats();
    CHECK("__libc_free-frees", s2.live_bytes == s0.live_bytes);

    for (int w = 0; w < 2; w++) {
        A = &apis[w];
        /* realloc of an over-aligned block: contents kept, at least 16-aligned */
        int ok = 1;
        for (size_t al = 32; al <= 1 << 20; al *= 4) {
            char *p = A->aligned_alloc(al, 3000);
            if (!p) { ok = 0; continue; }
            fill(p, 3000, (uint32_t)al);
            char *q = A->realloc(p, 5000);
            ok &= q && aligned(q, 16) && intact(q, 3000, (uint32_t)al);
            char *r = q ? A->realloc(q, 100) : NULL;
            ok &= r && intact(r, 100, (uint32_t)al);
            A->free(r ? r : q);
        }
        CK("realloc-of-aligned-block", ok);
        /* many malloc(0): all distinct */
        enum { Z = 1000 };
        static char *z[Z], *zs[Z];
        for (int i = 0; i < Z; i++) zs[i] = z[i] = A->malloc(0);
        qsort(zs, Z, sizeof *zs, cmp_ptr);
        int distinct = zs[0] != NULL;
        for (int i = 1; i < Z; i++) distinct &= zs[i] != zs[i - 1];
        CK("malloc(0)x1000-distinct", distinct);
        for (int i = 0; i < Z; i++) A->free(z[i]);
    }
}

/* ---- Invalid free: run in a child process (this program re-executed). ---- */
static const char *exe_path(void) {
    const char *e = getenv("RALLOCS_TEST_EXE");
    return e && *e ? e : "/proc/self/exe";
}

static int child_main(const char *kind, const char *fn, const char *which) {
    A = &apis[which[0] == '1'];
    char *ptr = NULL;
    _Alignas(64) char stack[256];
    memset(stack, 0, sizeof stack);
    if (strcmp(kind, "stack") == 0) {
        ptr = stack + 64;
    } else if (strcmp(kind, "interior") == 0) {
        ptr = (char *)A->malloc(256) + 64;
    } else if (strcmp(kind, "interior-large") == 0) {
        ptr = (char *)A->malloc(4 * MiB) + 4096;
    } else if (strcmp(kind, "mmap") == 0) {
        long page = sysconf(_SC_PAGESIZE);
        char *m = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 3;
        ptr = m + page;
    } else if (strcmp(kind, "double") == 0) {
        /* The same small block freed twice in a row. */
        ptr = A->malloc(64);
        A->free(ptr);
    } else if (strcmp(kind, "double-large") == 0) {
        ptr = A->malloc(4 * MiB);
        A->free(ptr);
    } else if (strcmp(kind, "foreign") == 0) {
        void *libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
        void *sym = libc ? dlsym(libc, "malloc") : NULL;
        void *(*glibc_malloc)(size_t);
        if (!sym) return 3;
        memcpy(&glibc_malloc, &sym, sizeof sym);
        ptr = glibc_malloc(64);
    }
    if (!ptr) return 3;
    char line[64];
    int k = snprintf(line, sizeof line, "%p\n", (void *)ptr);
    if (write(1, line, (size_t)k) != k) return 3;
    if (strcmp(fn, "free") == 0) A->free(ptr);
    else A->realloc(ptr, 100);
    return 4; /* should not get here */
}

static size_t read_all(int fd, char *buf, size_t cap) {
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0) n += (size_t)r;
    buf[n] = 0;
    return n;
}

static void expect_abort(const char *kind, const char *fn, int which) {
    const api_t *a = &apis[which];
    const char *fname = strcmp(fn, "free") == 0 ? a->free_name : a->realloc_name;
    char name[128];
    snprintf(name, sizeof name, "invalid-%s-%s(%s)", fn, kind, a->name);
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) {
        CHECK(name, !"pipe");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        struct rlimit rl = {0, 0};
        setrlimit(RLIMIT_CORE, &rl);
        const char *exe = exe_path();
        execl(exe, exe, "child", kind, fn, which ? "1" : "0", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    char obuf[256], ebuf[4096];
    read_all(out[0], obuf, sizeof obuf);
    size_t en = read_all(err[0], ebuf, sizeof ebuf);
    close(out[0]);
    close(err[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    int sig_ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
    unsigned long long want = strtoull(obuf, NULL, 16);
    char prefix[96];
    int pl = snprintf(prefix, sizeof prefix, "rallocs: %s(): invalid pointer 0x", fname);
    int msg_ok = 0;
    if (want != 0 && strncmp(ebuf, prefix, (size_t)pl) == 0) {
        char *end = NULL;
        unsigned long long got = strtoull(ebuf + pl, &end, 16);
        msg_ok = got == want && strncmp(end, " (", 2) == 0 && en >= 2 && ebuf[en - 1] == '\n' &&
                 ebuf[en - 2] == ')' && memchr(ebuf, '\n', en) == ebuf + en - 1;
    }
    if (!sig_ok || !msg_ok)
        fprintf(stderr, "%s: status 0x%x, pointer %s, stderr: %s\n", name, st, obuf, en ? ebuf : "(empty)\n");
    CHECK(name, sig_ok);
    CHECK(name, msg_ok);
}

/* ---- Options ---- */
/* Child: free 32 MiB of small blocks and a large block; exit 0 if committed memory fell, 2 if not. */
static int child_purge(void) {
    enum { N = 32768 };
    static void *b[N];
    rallocs_stats_t s0 = stats();
    for (int i = 0; i < N; i++) {
        b[i] = malloc(1000);
        if (b[i]) memset(b[i], 1, 1000);
    }
    void *big = malloc(8 * MiB);
    if (big) memset(big, 1, 8 * MiB);
    rallocs_stats_t s1 = stats();
    for (int i = 0; i < N; i++) free(b[i]);
    free(big);
    rallocs_stats_t s2 = stats();
    printf("committed %zu -> %zu -> %zu\n", s0.committed_bytes, s1.committed_bytes, s2.committed_bytes);
    return s2.committed_bytes <= s0.committed_bytes + 4 * MiB ? 0 : 2;
}

/* Runs this program with `env` added and `args`; returns the wait status, stdout+stderr in out. */
static int run_self(const char *env, const char *arg, char *out, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        if (env) putenv((char *)env);
        const char *exe = exe_path();
        execl(exe, exe, "child-option", arg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    read_all(fds[0], out, cap);
    close(fds[0]);
    int st = -1;
    waitpid(pid, &st, 0);
    return st;
}

static void test_options(void) {
    char out[4096];
    int st = run_self("RALLOCS_PURGE_DELAY_MS=0", "purge", out, sizeof out);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) fprintf(stderr, "purge delay 0: status 0x%x: %s", st, out);
    CHECK("option-purge-delay-0-gives-memory-back", WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = run_self("RALLOCS_PURGE_DELAY_MS=3600000", "purge", out, sizeof out);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 2)) fprintf(stderr, "purge delay 1 h: status 0x%x: %s", st, out);
    CHECK("option-purge-delay-1h-keeps-memory", WIFEXITED(st) && WEXITSTATUS(st) == 2);
    st = run_self("RALLOCS_SHOW_STATS=1", "noop", out, sizeof out);
    CHECK("option-show-stats-prints-at-exit", WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(out, "rallocs") &&
                                                  strstr(out, "mallocs"));
    st = run_self(NULL, "noop", out, sizeof out);
    CHECK("no-stats-by-default", WIFEXITED(st) && WEXITSTATUS(st) == 0 && out[0] == 0);
}

static void test_invalid_frees(void) {
    static const char *kinds[] = {"stack", "interior", "interior-large", "mmap", "foreign"};
    static const char *fns[] = {"free", "realloc"};
    for (int w = 0; w < 2; w++)
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            for (size_t f = 0; f < 2; f++) expect_abort(kinds[k], fns[f], w);
    /* A block freed twice in a row is detected by free (not by realloc of a freed block). */
    for (int w = 0; w < 2; w++) {
        expect_abort("double", "free", w);
        expect_abort("double-large", "free", w);
    }
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "child") == 0) return child_main(argv[2], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[1], "child-option") == 0) return strcmp(argv[2], "purge") == 0 ? child_purge() : 0;
    make_sizes();
    for (int w = 0; w < 2; w++) {
        A = &apis[w];
        test_sizes();
        test_zero_and_null();
        test_realloc();
        test_calloc();
        test_errors();
        test_alignments();
        test_stats_moves();
        test_large_realloc();
        test_trim();
    }
    test_reports();
    test_misc();
    test_options();
    test_invalid_frees();
    return check_summary();
}
