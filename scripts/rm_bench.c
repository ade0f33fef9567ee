/* rm_bench.c: throwaway measurements of rmalloc against glibc malloc through the seed's adapter
 * (rmalloc -> malloc, rmlock -> the pointer, rmunlock -> nothing). Not part of `make test`.
 *
 *   make && cc -O2 -std=c11 -Iinclude scripts/rm_bench.c -Lbuild -Wl,-rpath,$PWD/build -lrallocs -ldl \
 *        -o /tmp/rm_bench && /tmp/rm_bench
 *
 * glibc's malloc is taken from libc.so.6 with dlsym, so the numbers stay glibc's even when rallocs
 * exports malloc; rallocs' own malloc family goes through the same adapter. Reports: ns per alloc+free
 * pair, ns per lock+unlock pair, compaction ns per MiB moved,
 * and for two workloads (fragmenting; browser-like) the time per operation and the memory needed: for
 * rmalloc the smallest rmsetlimit budget (grown in 5% steps from the peak live bytes) in which the
 * workload completes, then bisected to 0.25%; for glibc its peak footprint (mallinfo2 arena + mmapped
 * bytes), for rallocs' malloc family its peak committed bytes (rallocs_stats_get), both sampled every
 * 256 operations. Operation times are the best of 3 runs in thread CPU time (the machine is shared).
 * Options: --quick (micro only), --browser (that workload only), --profile-browser,
 * --profile-fragment [budget factor] (rmalloc alone, for perf record). */
#define _GNU_SOURCE
#include <rallocs.h>

#include <dlfcn.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *(*g_malloc)(size_t);
static void (*g_free)(void *);
static struct mallinfo2 (*g_mallinfo2)(void);

/* Operation timings use the thread's CPU time (the machine is shared: time spent descheduled is not the
 * allocator's); compaction pauses use the wall clock, which is what a program waits. */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint64_t rs = 88172645463325252ULL;
static uint64_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

/* ---- the adapter ---- */
typedef struct {
    const char *name;
    bool (*alloc)(void **h, size_t n);
    void *(*lock)(void *h);
    void (*unlock)(void *h);
    void (*free)(void *h);
} adapter;

static bool rm_a(void **h, size_t n) { return rmalloc((rm_memory_t **)h, n) == RM_OK; }
static void *rm_l(void *h) {
    void *p;
    return rmlock(h, &p) == RM_OK ? p : NULL;
}
static void rm_u(void *h) { rmunlock(h); }
static void rm_f(void *h) { rmfree(h); }
static bool gl_a(void **h, size_t n) { return (*h = g_malloc(n)) != NULL; }
static void *gl_l(void *h) { return h; }
static void gl_u(void *h) { (void)h; }
static void gl_f(void *h) { g_free(h); }
static bool ra_a(void **h, size_t n) { return (*h = rallocs_malloc(n)) != NULL; }
static void ra_f(void *h) { rallocs_free(h); }
static const adapter RM = {"rmalloc", rm_a, rm_l, rm_u, rm_f};
static const adapter GLIBC = {"glibc", gl_a, gl_l, gl_u, gl_f};
static const adapter RALLOCS = {"rallocs malloc", ra_a, gl_l, gl_u, ra_f};

static size_t rallocs_footprint(void) {
    rallocs_stats_t s;
    rallocs_stats_get(&s);
    return s.committed_bytes;
}

static size_t glibc_footprint(void) {
    struct mallinfo2 m = g_mallinfo2();
    return m.arena + m.hblkhd;
}

/* ---- workloads: return false when an allocation failed; track live bytes and ops ---- */
static size_t live, peak_live, peak_fp, ops;
static size_t (*track)(void); /* footprint of the malloc-style allocator being measured, or NULL */

static void note(void) {
    if (live > peak_live) peak_live = live;
    if (track && (ops & 255) == 0) {
        size_t f = track();
        if (f > peak_fp) peak_fp = f;
    }
}

static bool touch(const adapter *a, void *h, size_t n) {
    unsigned char *p = a->lock(h);
    if (!p) return false;
    if (n) p[0] = p[n - 1] = 1;
    a->unlock(h);
    return true;
}

enum { FRAG_N = 200000, FRAG_BIG = 256 << 10 };
static void *fh[FRAG_N];
static size_t fs[FRAG_N];
static void *bigs[4096];
static size_t nbigs;

/* Many small blocks, half freed at random, then large requests that bring the live bytes back. */
static bool frag_workload(const adapter *a, uint64_t seed) {
    rs = seed;
    live = peak_live = ops = 0;
    nbigs = 0;
    bool ok = true;
    for (int i = 0; i < FRAG_N; i++) fh[i] = NULL;
    for (int i = 0; i < FRAG_N && ok; i++) {
        fs[i] = 16 + rnd() % 497;
        ok = a->alloc(&fh[i], fs[i]) && touch(a, fh[i], fs[i]);
        if (!ok) fh[i] = NULL;
        live += fs[i];
        ops++;
        note();
    }
    size_t freed = 0;
    for (int i = 0; i < FRAG_N && ok; i++) {
        if (rnd() & 1) {
            a->free(fh[i]);
            fh[i] = NULL;
            live -= fs[i];
            freed += fs[i];
            ops++;
            note();
        }
    }
    while (ok && freed >= FRAG_BIG) {
        ok = a->alloc(&bigs[nbigs], FRAG_BIG) && touch(a, bigs[nbigs], FRAG_BIG);
        if (!ok) break;
        nbigs++;
        live += FRAG_BIG;
        freed -= FRAG_BIG;
        ops++;
        note();
    }
    return ok;
}

static void frag_cleanup(const adapter *a) {
    for (int i = 0; i < FRAG_N; i++)
        if (fh[i]) a->free(fh[i]);
    for (size_t i = 0; i < nbigs; i++) a->free(bigs[i]);
}

/* Browser-like: pages open with a burst of objects (mostly small, some images), pages close at random
 * freeing all their objects; at most 24 pages open. */
enum { PAGES = 600, OPEN = 24, PER = 1500 };
static void *ph[OPEN][PER];
static size_t psz[OPEN][PER];
static int pn[OPEN];

static size_t browser_size(void) {
    uint64_t k = rnd() % 1000;
    if (k < 700) return 16 + rnd() % 112;
    if (k < 950) return 128 + rnd() % 1920;
    if (k < 995) return 2048 + rnd() % 30000;
    return 32768 + rnd() % 400000; /* an image */
}

static void close_page(const adapter *a, int p) {
    for (int i = 0; i < pn[p]; i++) {
        a->free(ph[p][i]);
        live -= psz[p][i];
        ops++;
    }
    pn[p] = 0;
}

static bool browser_workload(const adapter *a, uint64_t seed) {
    rs = seed;
    live = peak_live = ops = 0;
    memset(pn, 0, sizeof pn);
    for (int page = 0; page < PAGES; page++) {
        int slot = (int)(rnd() % OPEN);
        if (pn[slot]) close_page(a, slot);
        int n = (int)(PER / 2 + rnd() % (PER / 2));
        for (int i = 0; i < n; i++) {
            size_t s = browser_size();
            if (!a->alloc(&ph[slot][i], s) || !touch(a, ph[slot][i], s)) {
                pn[slot] = i;
                return false;
            }
            psz[slot][i] = s;
            pn[slot] = i + 1;
            live += s;
            ops++;
            note();
            /* Some objects die young within the page. */
            if (i > 8 && rnd() % 4 == 0) {
                int j = (int)(rnd() % (uint64_t)i);
                a->free(ph[slot][j]);
                live -= psz[slot][j];
                ops++;
                ph[slot][j] = ph[slot][i];
                psz[slot][j] = psz[slot][i];
                i--;
                n--;
                pn[slot] = i + 1;
            }
        }
    }
    return true;
}

static void browser_cleanup(const adapter *a) {
    for (int p = 0; p < OPEN; p++) close_page(a, p);
}

typedef bool (*workload)(const adapter *, uint64_t);
typedef void (*cleanup)(const adapter *);

static void run_workload(const char *name, workload w, cleanup c) {
    /* Time: best of 3 alternating untracked runs of glibc, rallocs' malloc and rmalloc without a limit. */
    double tg = 1e30, ta = 1e30, tr = 1e30, t0;
    size_t g_ops = 0;
    bool ok = true;
    rm_stats_t s0, s1;
    rmsetlimit(0);
    for (int k = 0; k < 3; k++) {
        t0 = now();
        w(&GLIBC, 42);
        double t = now() - t0;
        if (t < tg) tg = t;
        g_ops = ops;
        c(&GLIBC);
        t0 = now();
        w(&RALLOCS, 42);
        t = now() - t0;
        if (t < ta) ta = t;
        c(&RALLOCS);
        t0 = now();
        ok = w(&RM, 42);
        t = now() - t0;
        if (t < tr) tr = t;
        c(&RM);
        rmcompact(0);
    }
    /* Peak footprints (sampled every 256 operations and at the end). */
    size_t peaks[2];
    const adapter *mallocs[2] = {&GLIBC, &RALLOCS};
    size_t (*fps[2])(void) = {glibc_footprint, rallocs_footprint};
    for (int m = 0; m < 2; m++) {
        track = fps[m];
        peak_fp = track();
        w(mallocs[m], 42);
        size_t f = track();
        if (f > peak_fp) peak_fp = f;
        peaks[m] = peak_fp;
        c(mallocs[m]);
        track = NULL;
    }
    size_t g_peak_live = peak_live, g_peak = peaks[0], a_peak = peaks[1];
    /* rmalloc: smallest budget in 5% steps from the peak live bytes. */
    size_t budget = peak_live;
    double tb = 0;
    int tries = 0;
    for (;;) {
        if (rmsetlimit(budget) != RM_OK) {
            printf("rmsetlimit refused\n");
            break;
        }
        rm_stats_get(&s0);
        t0 = now();
        ok = w(&RM, 42);
        tb = now() - t0;
        rm_stats_get(&s1);
        c(&RM);
        rmsetlimit(0);
        rmcompact(0);
        tries++;
        if (ok || tries > 60) break;
        budget = budget + budget / 20;
    }
    /* Time at that budget: best of 3 (the first run above and two more). */
    for (int k = 0; k < 2 && ok; k++) {
        rmsetlimit(budget);
        rm_stats_t a, b;
        rm_stats_get(&a);
        t0 = now();
        bool fine = w(&RM, 42);
        double t = now() - t0;
        rm_stats_get(&b);
        c(&RM);
        rmsetlimit(0);
        rmcompact(0);
        if (fine && t < tb) {
            tb = t;
            s0 = a;
            s1 = b;
        }
    }
    /* Finer: bisect between the last failing step and the first that succeeded, to 0.25%. */
    size_t lo = tries > 1 ? budget - budget / 21 : peak_live / 2, hi = budget;
    while (hi - lo > peak_live / 400) {
        size_t mid = lo + (hi - lo) / 2;
        rmsetlimit(mid);
        bool fine = w(&RM, 42);
        c(&RM);
        rmsetlimit(0);
        rmcompact(0);
        if (fine) hi = mid;
        else lo = mid;
    }
    printf("%-10s %8zu ops  peak live %7.2f MiB | glibc %6.1f ns/op peak %7.2f MiB (%.3fx) | rallocs malloc "
           "%6.1f ns/op peak %7.2f MiB (%.3fx) | rmalloc "
           "%6.1f ns/op unlimited, %6.1f ns/op at budget %7.2f MiB (%.3fx, %d steps; %lu compactions, %.1f MiB "
           "moved, %lu purges); least budget %.3fx\n",
           name, g_ops, g_peak_live / 1048576.0, tg / g_ops, g_peak / 1048576.0, (double)g_peak / g_peak_live,
           ta / g_ops, a_peak / 1048576.0, (double)a_peak / g_peak_live,
           tr / g_ops, tb / g_ops, budget / 1048576.0, (double)budget / peak_live, tries - 1,
           (unsigned long)(s1.compactions - s0.compactions), (s1.bytes_moved - s0.bytes_moved) / 1048576.0,
           (unsigned long)(s1.purges - s0.purges), (double)hi / peak_live);
}

/* ---- micro: alloc+free pairs, lock+unlock pairs, compaction per MiB ---- */
enum { LIVE = 10000, PAIRS = 2000000 };
static void *mh[LIVE];

static double pairs(const adapter *a) {
    rs = 7;
    for (int i = 0; i < LIVE; i++) a->alloc(&mh[i], 16 + rnd() % 497);
    double t0 = now();
    for (int k = 0; k < PAIRS; k++) {
        int i = (int)(rnd() % LIVE);
        a->free(mh[i]);
        a->alloc(&mh[i], 16 + rnd() % 497);
    }
    double t = (now() - t0) / PAIRS;
    for (int i = 0; i < LIVE; i++) a->free(mh[i]);
    return t;
}

static double locks(const adapter *a) {
    rs = 9;
    for (int i = 0; i < LIVE; i++) a->alloc(&mh[i], 64);
    volatile unsigned char sink = 0;
    double t0 = now();
    for (int k = 0; k < PAIRS * 5; k++) {
        void *h = mh[rnd() % LIVE];
        unsigned char *p = a->lock(h);
        sink += p[0];
        a->unlock(h);
    }
    double t = (now() - t0) / (PAIRS * 5);
    for (int i = 0; i < LIVE; i++) a->free(mh[i]);
    (void)sink;
    return t;
}

static double rng_cost(void) {
    volatile uint64_t sink = 0;
    double t0 = now();
    for (int k = 0; k < PAIRS * 5; k++) sink += rnd() % LIVE;
    return (now() - t0) / (PAIRS * 5);
}

static void compaction_pause(size_t lo, size_t hi, size_t total) {
    size_t n = 0;
    static void *hs[1 << 20];
    rs = 11;
    for (size_t b = 0; b < total && n < (1 << 20); n++) {
        size_t s = lo + rnd() % (hi - lo + 1);
        rmalloc((rm_memory_t **)&hs[n], s);
        b += s;
    }
    for (size_t i = 0; i < n; i += 2) rmfree(hs[i]);
    rm_stats_t a, b;
    rm_stats_get(&a);
    double t0 = wall();
    rmcompact(0);
    double t = wall() - t0;
    rm_stats_get(&b);
    double mib = (b.bytes_moved - a.bytes_moved) / 1048576.0;
    /* Budgeted: the longest single call of 1 ms budget passes over the same kind of heap. */
    for (size_t i = 1; i < n; i += 2) rmfree(hs[i]);
    rmcompact(0);
    n = 0;
    for (size_t bb = 0; bb < total && n < (1 << 20); n++) {
        size_t s = lo + rnd() % (hi - lo + 1);
        rmalloc((rm_memory_t **)&hs[n], s);
        bb += s;
    }
    for (size_t i = 0; i < n; i += 2) rmfree(hs[i]);
    double worst = 0;
    int calls = 0;
    rm_stats_t c, d;
    rm_stats_get(&c);
    do {
        rm_stats_get(&d);
        double t1 = wall();
        rmcompact(1000);
        double dt = wall() - t1;
        if (dt > worst) worst = dt;
        calls++;
        rm_stats_get(&c);
    } while (c.bytes_moved != d.bytes_moved);
    printf("compaction, %zu-%zu B blocks, %.0f MiB heap, half freed: full pass %.2f ms for %.1f MiB moved = "
           "%.2f ms/MiB; budget 1000 us: %d calls, longest %.0f us\n",
           lo, hi, total / 1048576.0, t / 1e6, mib, t / 1e6 / mib, calls, worst / 1e3);
    for (size_t i = 1; i < n; i += 2) rmfree(hs[i]);
    rmcompact(0);
}

int main(int argc, char **argv) {
    void *libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
    g_malloc = (void *(*)(size_t))dlsym(libc, "malloc");
    g_free = (void (*)(void *))dlsym(libc, "free");
    g_mallinfo2 = (struct mallinfo2(*)(void))dlsym(libc, "mallinfo2");
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 2 && strcmp(argv[2], "--warm") == 0) {
        pairs(&RM);
        locks(&RM);
        compaction_pause(16, 512, 64 << 20);
    }
    if (argc > 1 && strcmp(argv[1], "--profile-browser") == 0) { /* rmalloc alone, for perf record */
        double t0 = now();
        browser_workload(&RM, 42);
        printf("rmalloc browser: %.1f ns/op\n", (now() - t0) / ops);
        browser_cleanup(&RM);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--profile-fragment") == 0) { /* rmalloc alone at a budget, for perf */
        frag_workload(&RM, 42);
        size_t budget = argc > 2 ? (size_t)(peak_live * atof(argv[2])) : peak_live + peak_live / 16;
        frag_cleanup(&RM);
        rmcompact(0);
        rmsetlimit(budget);
        double t0 = now();
        bool ok = frag_workload(&RM, 42);
        printf("rmalloc fragment at %zu: %s, %.1f ns/op\n", budget, ok ? "ok" : "failed", (now() - t0) / ops);
        return 0;
    }
    double rc = rng_cost();
    printf("(PRNG cost %.1f ns, included below)\n", rc);
    /* The machine is shared: every timing is the best of 5 alternating runs. */
    double pg = 1e30, pr = 1e30, lg = 1e30, lr = 1e30, pa = 1e30;
    for (int k = 0; k < 5; k++) {
        double x;
        if ((x = pairs(&GLIBC)) < pg) pg = x;
        if ((x = pairs(&RALLOCS)) < pa) pa = x;
        if ((x = pairs(&RM)) < pr) pr = x;
        if ((x = locks(&GLIBC)) < lg) lg = x;
        if ((x = locks(&RM)) < lr) lr = x;
    }
    printf("alloc+free pair (10000 live, 16-512 B): glibc %.1f ns, rallocs malloc %.1f ns, rmalloc %.1f ns "
           "(%.2fx glibc)\n", pg, pa, pr, pr / pg);
    printf("lock+unlock pair (10000 handles): glibc adapter %.1f ns, rmalloc %.1f ns\n", lg, lr);
    compaction_pause(16, 512, 64 << 20);
    compaction_pause(4096, 65536, 64 << 20);
    if (argc > 1 && strcmp(argv[1], "--browser") == 0) {
        run_workload("browser", browser_workload, browser_cleanup);
        return 0;
    }
    if (!quick) {
        run_workload("fragment", frag_workload, frag_cleanup);
        run_workload("browser", browser_workload, browser_cleanup);
    }
    return 0;
}
