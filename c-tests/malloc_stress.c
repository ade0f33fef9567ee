/* malloc_stress.c: many more threads than cores hammer the allocator, hand blocks to each other and free
 * them remotely; threads are created and torn down all through the run.
 *
 *   - WORKERS (24) threads alive at any time on a 2-core machine; each lives for OPS operations, then exits
 *     and is replaced (ROUNDS generations: ~170 thread lifetimes in all);
 *   - sizes from 1 byte to 1 MiB, mostly small (90% <= 256 B, ~9% <= 16 KiB, the rest up to 1 MiB);
 *   - malloc, calloc (checked zero), realloc (contents checked), aligned_alloc, and both the unprefixed
 *     and the rallocs_* names (they are the same heap);
 *   - an exchange of SLOTS slots (striped mutexes): a thread swaps one of its blocks for whatever the slot
 *     holds and frees or keeps that block, so most blocks are freed by a thread that did not allocate them,
 *     often after their allocating thread has exited;
 *   - every block is filled with a pattern derived from its address and size, checked before every free
 *     and realloc; the tail between the request and the usable size is scribbled on too (any overlap
 *     with another block shows up in that block's pattern); 16-byte alignment of every pointer;
 *   - before the stress, Hoard's false-sharing guarantees: blocks of threads that are alive at the same
 *     time never share a 64-byte cache line (active false sharing), and a block freed by a thread other
 *     than its owner goes back to the owner's superblock, never to the freeing thread's next malloc
 *     (passive false sharing);
 *   - a phase of large blocks only (32 KiB .. 4 MiB, alignments to 2 MiB, realloc, hand-offs) from 8 threads;
 *   - the whole run is done twice: as is, then (the program re-executes itself) with
 *     RALLOCS_PURGE_DELAY_MS=0, so that empty superblocks are decommitted while other threads adopt;
 *   - at the end live_bytes is back at its baseline (no leak: a few KiB of slack for what glibc's own
 *     thread machinery keeps, never the megabytes a lost block list would show), mallocs - frees equal,
 *     and remote frees were counted. */
#define _GNU_SOURCE
#include <rallocs.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

void *rallocs_malloc(size_t size);
void rallocs_free(void *ptr);
size_t rallocs_malloc_usable_size(void *ptr);
void rallocs_stats_get(rallocs_stats_t *out);

enum { WORKERS = 24, ROUNDS = 7, OPS = 6000, LOCAL = 128, SLOTS = 2048, STRIPES = 64 };

typedef struct blk {
    uint64_t *p;
    size_t size;
} blk_t;

static blk_t slots[SLOTS];
static pthread_mutex_t stripes[STRIPES];
static atomic_ulong errors;        /* pattern, alignment and NULL failures */
static atomic_ulong cross_frees;   /* blocks freed by a thread other than the one that made them */
static atomic_ulong total_ops;

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static size_t pick_size(uint64_t *r) {
    uint64_t x = rng_next(r), c = x % 1000;
    if (c < 900) return 1 + (size_t)(x >> 20) % 256;
    if (c < 990) return 257 + (size_t)(x >> 20) % (16 * 1024 - 256);
    if (c < 998) return 16 * 1024 + (size_t)(x >> 20) % (240 * 1024);
    return 256 * 1024 + (size_t)(x >> 20) % (768 * 1024 + 1); /* up to 1 MiB */
}

/* Word i of a block at p of size n; big blocks carry the pattern only in their first and last 4 KiB and
 * one word per 4 KiB page in between (so 1 MiB blocks stay cheap). */
static inline uint64_t word(const void *p, size_t n, size_t i) {
    return ((uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)n << 32) ^ (uint64_t)i;
}
static inline int patterned(size_t n, size_t i) {
    size_t words = n / 8;
    return words <= 1024 || i < 512 || i >= words - 512 || (i % 512) == 0;
}
static void fill(void *p, size_t n) {
    uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i++)
        if (patterned(n, i)) w[i] = word(p, n, i);
    for (size_t i = (n / 8) * 8; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)word(p, n, i);
}
static int intact(const void *p, size_t n) {
    const uint64_t *w = p;
    for (size_t i = 0; i < n / 8; i++)
        if (patterned(n, i) && w[i] != word(p, n, i)) return 0;
    for (size_t i = (n / 8) * 8; i < n; i++)
        if (((const uint8_t *)p)[i] != (uint8_t)word(p, n, i)) return 0;
    return 1;
}

/* A thread's own blocks, each with the id of the thread that allocated it (~0: unknown, from the exchange). */
typedef struct local {
    blk_t b[LOCAL];
    unsigned owner[LOCAL];
    size_t n;
} local_t;

static void bad(const char *what, const void *p, size_t n) {
    atomic_fetch_add(&errors, 1);
    fprintf(stderr, "malloc_stress: %s: block %p size %zu\n", what, p, n);
}

static int use_prefixed(uint64_t *r) { return (rng_next(r) & 7) == 0; }

static blk_t make(uint64_t *r) {
    blk_t b = {NULL, pick_size(r)};
    unsigned kind = (unsigned)(rng_next(r) % 16);
    if (kind == 0) {
        b.p = calloc(1, b.size);
        if (b.p) {
            const uint8_t *c = (const uint8_t *)b.p;
            for (size_t i = 0; i < b.size; i += (i < 4096 || i + 4096 > b.size) ? 1 : 4093)
                if (c[i]) { bad("calloc not zero", b.p, b.size); break; }
        }
    } else if (kind == 1) {
        size_t a = (size_t)32 << (rng_next(r) % 8); /* 32 .. 4096 */
        b.p = aligned_alloc(a, b.size);
        if (b.p && ((uintptr_t)b.p & (a - 1))) bad("aligned_alloc misaligned", b.p, b.size);
    } else {
        b.p = use_prefixed(r) ? rallocs_malloc(b.size) : malloc(b.size);
    }
    if (!b.p) {
        bad("allocation returned NULL", NULL, b.size);
        return b;
    }
    if ((uintptr_t)b.p & 15) bad("not 16-byte aligned", b.p, b.size);
    size_t u = malloc_usable_size(b.p);
    if (u < b.size) bad("usable size < request", b.p, b.size);
    /* the tail between request and usable size is ours too: scribble on it */
    memset((char *)b.p + b.size, 0xee, u - b.size < 64 ? u - b.size : 64);
    fill(b.p, b.size);
    return b;
}

static void destroy(blk_t b, uint64_t *r) {
    if (!b.p) return;
    if (!intact(b.p, b.size)) bad("pattern corrupted before free", b.p, b.size);
    if (use_prefixed(r)) rallocs_free(b.p);
    else free(b.p);
}

static blk_t grow_to(blk_t b, size_t ns) {
    if (!intact(b.p, b.size)) bad("pattern corrupted before realloc", b.p, b.size);
    uintptr_t old = (uintptr_t)b.p; /* the pattern's key, kept as a number across the realloc */
    void *q = realloc(b.p, ns);
    if (!q) {
        bad("realloc returned NULL", b.p, ns);
        return b;
    }
    if ((uintptr_t)q & 15) bad("realloc result not 16-byte aligned", q, ns);
    /* The old pattern (made for the old address and size) must have moved with the block. */
    size_t keep = ns < b.size ? ns : b.size;
    uint64_t *w = q;
    for (size_t i = 0; i < keep / 8; i++)
        if (patterned(b.size, i) && w[i] != word((const void *)old, b.size, i)) {
            bad("realloc lost contents", q, ns);
            break;
        }
    blk_t nb = {q, ns};
    fill(nb.p, nb.size);
    return nb;
}

static blk_t grow(blk_t b, uint64_t *r) { return grow_to(b, pick_size(r)); }

/* Takes slot k out of l: the last block moves into it. */
static void local_remove(local_t *l, size_t k) {
    l->n--;
    l->b[k] = l->b[l->n];
    l->owner[k] = l->owner[l->n];
}

/* Frees slot k of l, counting a block another thread allocated as a cross-thread free. */
static void local_free(local_t *l, size_t k, unsigned me, uint64_t *r) {
    if (l->owner[k] != me) atomic_fetch_add(&cross_frees, 1);
    destroy(l->b[k], r);
    local_remove(l, k);
}

typedef struct worker {
    pthread_t th;
    unsigned id;
    uint64_t seed;
} worker_t;

static void *worker(void *arg) {
    worker_t *me = arg;
    uint64_t r = me->seed;
    local_t *l = calloc(1, sizeof *l); /* itself from the heap under test */
    if (!l) {
        bad("calloc(local) returned NULL", NULL, sizeof *l);
        return NULL;
    }
    for (int op = 0; op < OPS; op++) {
        unsigned c = (unsigned)(rng_next(&r) % 100);
        if (c < 40 || l->n == 0) { /* allocate */
            if (l->n == LOCAL) local_free(l, rng_next(&r) % l->n, me->id, &r);
            l->b[l->n] = make(&r);
            l->owner[l->n] = me->id;
            if (l->b[l->n].p) l->n++;
        } else if (c < 70) { /* free one of ours (maybe one received from another thread) */
            local_free(l, rng_next(&r) % l->n, me->id, &r);
        } else if (c < 95) { /* swap one of ours with a slot of the exchange */
            size_t k = rng_next(&r) % l->n;
            size_t s = rng_next(&r) % SLOTS;
            pthread_mutex_lock(&stripes[s % STRIPES]);
            blk_t got = slots[s];
            slots[s] = l->b[k];
            pthread_mutex_unlock(&stripes[s % STRIPES]);
            if (got.p) { /* keep it (owner unknown: count it as foreign) or free it right away */
                if (rng_next(&r) & 1) {
                    l->b[k] = got;
                    l->owner[k] = ~0u;
                } else {
                    atomic_fetch_add(&cross_frees, 1);
                    destroy(got, &r);
                    local_remove(l, k);
                }
            } else {
                local_remove(l, k);
            }
        } else { /* realloc */
            size_t k = rng_next(&r) % l->n;
            l->b[k] = grow(l->b[k], &r);
        }
    }
    /* Exit: half of what is left goes to the exchange (freed later, after this thread is gone). */
    for (size_t k = 0; k < l->n; k++) {
        if (k % 2 == 0) {
            size_t s = rng_next(&r) % SLOTS;
            pthread_mutex_lock(&stripes[s % STRIPES]);
            blk_t got = slots[s];
            slots[s] = l->b[k];
            pthread_mutex_unlock(&stripes[s % STRIPES]);
            if (got.p) destroy(got, &r);
        } else {
            destroy(l->b[k], &r);
        }
    }
    free(l);
    atomic_fetch_add(&total_ops, OPS);
    return NULL;
}

/* ---- False sharing ---- */
#define LINE 64
enum { FS_THREADS = 8, FS_BLOCKS = 2000 };
typedef struct fs_rec {
    uintptr_t addr;
    size_t usable;
    int tid;
} fs_rec_t;
static fs_rec_t fs_recs[FS_THREADS * FS_BLOCKS];
static pthread_barrier_t fs_barrier;

static void *fs_thread(void *arg) {
    int tid = (int)(intptr_t)arg;
    uint64_t r = 77 + (uint64_t)tid;
    void *b[FS_BLOCKS];
    pthread_barrier_wait(&fs_barrier); /* everyone allocates at the same time */
    for (int i = 0; i < FS_BLOCKS; i++) {
        size_t sz = 1 + (size_t)(rng_next(&r) % 64);
        b[i] = malloc(sz);
        if (b[i]) memset(b[i], tid, sz);
        fs_recs[tid * FS_BLOCKS + i] = (fs_rec_t){(uintptr_t)b[i], b[i] ? malloc_usable_size(b[i]) : 0, tid};
    }
    pthread_barrier_wait(&fs_barrier); /* all alive until every thread has allocated */
    pthread_barrier_wait(&fs_barrier); /* main checked */
    for (int i = 0; i < FS_BLOCKS; i++) free(b[i]);
    return NULL;
}
static int cmp_rec(const void *a, const void *b) {
    const fs_rec_t *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static void test_active_false_sharing(void) {
    pthread_t t[FS_THREADS];
    pthread_barrier_init(&fs_barrier, NULL, FS_THREADS + 1);
    for (int i = 0; i < FS_THREADS; i++) pthread_create(&t[i], NULL, fs_thread, (void *)(intptr_t)i);
    pthread_barrier_wait(&fs_barrier);
    pthread_barrier_wait(&fs_barrier);
    static fs_rec_t sorted[FS_THREADS * FS_BLOCKS];
    memcpy(sorted, fs_recs, sizeof sorted);
    qsort(sorted, FS_THREADS * FS_BLOCKS, sizeof *sorted, cmp_rec);
    size_t shared_lines = 0, nulls = 0;
    for (int i = 0; i < FS_THREADS * FS_BLOCKS; i++) {
        if (!sorted[i].addr) nulls++;
        if (i > 0 && sorted[i - 1].addr && sorted[i - 1].tid != sorted[i].tid &&
            (sorted[i - 1].addr + sorted[i - 1].usable - 1) / LINE == sorted[i].addr / LINE)
            shared_lines++;
    }
    pthread_barrier_wait(&fs_barrier);
    for (int i = 0; i < FS_THREADS; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&fs_barrier);
    if (shared_lines) fprintf(stderr, "malloc_stress: %zu cache lines shared by blocks of different threads\n", shared_lines);
    CHECK("active-false-sharing-none", shared_lines == 0 && nulls == 0);
}

enum { PS_BLOCKS = 512 };
static void *ps_blocks[PS_BLOCKS];
static pthread_barrier_t ps_barrier;
static size_t ps_hits;

static void *ps_owner(void *arg) {
    (void)arg;
    for (int i = 0; i < PS_BLOCKS; i++) ps_blocks[i] = malloc(32);
    pthread_barrier_wait(&ps_barrier); /* hand them over */
    pthread_barrier_wait(&ps_barrier); /* stay alive (and owner) while the other thread works */
    return NULL;
}
static int line_of_owner_block(uintptr_t a) {
    for (int i = 0; i < PS_BLOCKS; i++) {
        uintptr_t o = (uintptr_t)ps_blocks[i];
        if (o && (o / LINE == a / LINE || (o + 31) / LINE == a / LINE || o / LINE == (a + 31) / LINE)) return 1;
    }
    return 0;
}
static void *ps_freer(void *arg) {
    (void)arg;
    pthread_barrier_wait(&ps_barrier);
    for (int i = 0; i < PS_BLOCKS; i++) free(ps_blocks[i]); /* remote frees */
    void *mine[PS_BLOCKS];
    for (int i = 0; i < PS_BLOCKS; i++) {
        mine[i] = malloc(32);
        if (mine[i] && line_of_owner_block((uintptr_t)mine[i])) ps_hits++;
    }
    for (int i = 0; i < PS_BLOCKS; i++) free(mine[i]);
    pthread_barrier_wait(&ps_barrier);
    return NULL;
}

static void test_passive_false_sharing(void) {
    pthread_t a, b;
    pthread_barrier_init(&ps_barrier, NULL, 2);
    pthread_create(&a, NULL, ps_owner, NULL);
    pthread_create(&b, NULL, ps_freer, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    pthread_barrier_destroy(&ps_barrier);
    if (ps_hits)
        fprintf(stderr, "malloc_stress: %zu of %d blocks malloc'd after remote frees share a line with the owner's blocks\n",
                ps_hits, (int)PS_BLOCKS);
    CHECK("passive-false-sharing-none", ps_hits == 0);
}

/* ---- Large blocks from many threads at once: malloc, aligned_alloc, realloc (in place or moved),
 * handed between threads, freed remotely. ---- */
enum { LG_THREADS = 8, LG_OPS = 150, LG_SLOTS = 32 };
static blk_t lg_slots[LG_SLOTS];
static pthread_mutex_t lg_mu = PTHREAD_MUTEX_INITIALIZER;

static size_t lg_size(uint64_t *r) { /* 32 KiB .. 4 MiB, log-uniform */
    unsigned shift = 15 + (unsigned)(rng_next(r) % 7);
    size_t base = (size_t)1 << shift;
    return base + (size_t)(rng_next(r) % base);
}

static void *lg_worker(void *arg) {
    uint64_t r = 0xABCDEF12345ULL + (uint64_t)(uintptr_t)arg * 7919;
    blk_t mine[4] = {{0}};
    for (int op = 0; op < LG_OPS; op++) {
        int k = (int)(rng_next(&r) % 4);
        unsigned c = (unsigned)(rng_next(&r) % 10);
        if (!mine[k].p) {
            size_t n = lg_size(&r);
            if (c < 3) {
                size_t al = (size_t)65536 << (rng_next(&r) % 6); /* 64 KiB .. 2 MiB */
                mine[k].p = aligned_alloc(al, n);
                if (mine[k].p && ((uintptr_t)mine[k].p & (al - 1))) bad("large aligned_alloc misaligned", mine[k].p, n);
            } else {
                mine[k].p = malloc(n);
            }
            if (!mine[k].p) { bad("large allocation returned NULL", NULL, n); continue; }
            if (malloc_usable_size(mine[k].p) < n) bad("large usable size < request", mine[k].p, n);
            mine[k].size = n;
            fill(mine[k].p, n);
        } else if (c < 4) {
            mine[k] = grow_to(mine[k], lg_size(&r));
        } else if (c < 7) {
            size_t s = rng_next(&r) % LG_SLOTS;
            pthread_mutex_lock(&lg_mu);
            blk_t got = lg_slots[s];
            lg_slots[s] = mine[k];
            pthread_mutex_unlock(&lg_mu);
            mine[k] = got;
        } else {
            destroy(mine[k], &r);
            mine[k].p = NULL;
        }
    }
    for (int k = 0; k < 4; k++) destroy(mine[k], &r);
    return NULL;
}

static void test_large_threads(void) {
    rallocs_stats_t s0, s1;
    rallocs_stats_get(&s0);
    pthread_t t[LG_THREADS];
    for (uintptr_t i = 0; i < LG_THREADS; i++) pthread_create(&t[i], NULL, lg_worker, (void *)i);
    for (int i = 0; i < LG_THREADS; i++) pthread_join(t[i], NULL);
    uint64_t r = 5;
    for (int s = 0; s < LG_SLOTS; s++) {
        destroy(lg_slots[s], &r);
        lg_slots[s].p = NULL;
    }
    rallocs_stats_get(&s1);
    printf("malloc_stress: large blocks from %d threads: live %zu -> %zu, large_blocks %zu -> %zu, committed %.1f MiB\n",
           (int)LG_THREADS, s0.live_bytes, s1.live_bytes, s0.large_blocks, s1.large_blocks,
           s1.committed_bytes / 1048576.0);
    CHECK("large-threads-no-errors", atomic_load(&errors) == 0);
    CHECK("large-threads-live-back", s1.live_bytes <= s0.live_bytes + 64 * 1024 && s1.live_bytes + 1024 >= s0.live_bytes);
    CHECK("large-threads-large-blocks-back", s1.large_blocks == s0.large_blocks);
}

static void *idle(void *arg) {
    void *p = malloc(64);
    free(p);
    return arg;
}

int main(void) {
    for (int i = 0; i < STRIPES; i++) pthread_mutex_init(&stripes[i], NULL);
    /* Warm up glibc's thread machinery (stack cache, its own small allocations) before the baseline. */
    test_active_false_sharing();
    test_passive_false_sharing();
    test_large_threads();
    pthread_t idle_th[WORKERS];
    for (int i = 0; i < WORKERS; i++) pthread_create(&idle_th[i], NULL, idle, NULL);
    for (int i = 0; i < WORKERS; i++) pthread_join(idle_th[i], NULL);

    rallocs_stats_t s0, s1;
    rallocs_stats_get(&s0);
    static worker_t w[WORKERS];
    unsigned next_id = 1;
    int create_failed = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < WORKERS; i++) {
            if (round > 0) pthread_join(w[i].th, NULL); /* the others keep running meanwhile */
            w[i].id = next_id++;
            w[i].seed = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)w[i].id * 0x100000001B3ULL);
            if (pthread_create(&w[i].th, NULL, worker, &w[i]) != 0) create_failed++;
        }
    }
    for (int i = 0; i < WORKERS; i++) pthread_join(w[i].th, NULL);
    uint64_t r = 42;
    size_t drained = 0;
    for (int s = 0; s < SLOTS; s++)
        if (slots[s].p) {
            destroy(slots[s], &r);
            slots[s].p = NULL;
            drained++;
        }
    rallocs_stats_get(&s1);

    unsigned long long mallocs = s1.mallocs - s0.mallocs, frees = s1.frees - s0.frees;
    unsigned long long remote = s1.remote_frees - s0.remote_frees;
    printf("malloc_stress%s: %u threads, %lu ops, %llu mallocs, %llu frees, %llu remote (test counted %lu "
           "cross-thread), %zu drained at the end; live %zu -> %zu bytes, committed %zu, peak %zu\n",
           getenv("RALLOCS_PURGE_DELAY_MS") ? " (RALLOCS_PURGE_DELAY_MS=0)" : "", next_id - 1,
           (unsigned long)atomic_load(&total_ops), mallocs, frees, remote,
           (unsigned long)atomic_load(&cross_frees), drained, s0.live_bytes, s1.live_bytes, s1.committed_bytes,
           s1.peak_committed_bytes);
    CHECK("threads-created", create_failed == 0);
    CHECK("all-ops-ran", atomic_load(&total_ops) == (unsigned long)ROUNDS * WORKERS * OPS);
    CHECK("no-pattern-or-alignment-errors", atomic_load(&errors) == 0);
    CHECK("test-did-cross-thread-frees", atomic_load(&cross_frees) > 10000 && drained > 100);
    /* Up: glibc's thread machinery may keep a few small blocks (DTVs of cached stacks). Down: nothing
     * that was live at the baseline has been freed, so live bytes may not fall below it (1 KiB of slack). */
    CHECK("live-bytes-back-to-baseline",
          s1.live_bytes <= s0.live_bytes + 64 * 1024 && s1.live_bytes + 1024 >= s0.live_bytes);
    CHECK("mallocs-counted", mallocs >= atomic_load(&total_ops) / 4);
    CHECK("mallocs-equal-frees", mallocs <= frees + 64 && frees <= mallocs + 64);
    CHECK("remote-frees-counted", remote > 0 && remote <= frees);
    CHECK("committed>=live", s1.committed_bytes >= s1.live_bytes);
    if (!getenv("RALLOCS_PURGE_DELAY_MS")) { /* second pass, purging at once */
        const char *exe = getenv("RALLOCS_TEST_EXE");
        if (!exe || !*exe) exe = "/proc/self/exe";
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("RALLOCS_PURGE_DELAY_MS", "0", 1);
            execl(exe, exe, (char *)NULL);
            _exit(127);
        }
        int st = -1;
        waitpid(pid, &st, 0);
        CHECK("second-pass-with-RALLOCS_PURGE_DELAY_MS=0", WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return check_summary();
}
