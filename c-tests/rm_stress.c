/* rm_stress.c: randomized rmalloc workload (issue 7).
 *
 * Phase 1, one thread, under a heap limit so that allocations compact and purge on their own: tens of
 * thousands of random operations (allocate, lock, write a pattern derived from the handle, unlock, free,
 * resize, mark purgeable, compact with and without a budget). After every compaction, explicit or
 * automatic, every live block's contents are verified and every locked block's pointer is checked to be
 * the one rmlock returned.
 * Phase 2, threaded: workers allocate, lock, verify and free their own blocks, keep some locked for a
 * while, and all lock a shared set of blocks concurrently, while a compactor thread compacts in a loop.
 * Phase 3: fork while another thread allocates and compacts; the child must find the heap usable. */
#define _POSIX_C_SOURCE 200809L
#include <rallocs.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* The pattern of byte i of the block of handle h (version v changes when a purged block is revived). */
static inline unsigned char pat(const rm_memory_t *h, unsigned v, size_t i) {
    uint64_t x = (uint64_t)(uintptr_t)h * 0x9E3779B97F4A7C15ULL + v * 0x100000001B3ULL + (i >> 3);
    x ^= x >> 29;
    return (unsigned char)(x >> (8 * (i & 7)));
}

static void fill(const rm_memory_t *h, unsigned v, unsigned char *p, size_t from, size_t to) {
    for (size_t i = from; i < to; i++) p[i] = pat(h, v, i);
}

static bool intact(const rm_memory_t *h, unsigned v, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(h, v, i)) return false;
    return true;
}

static size_t pick_size(uint64_t *r) {
    uint64_t k = rng_next(r) % 100;
    if (k < 60) return (size_t)(rng_next(r) % 256);
    if (k < 95) return (size_t)(rng_next(r) % 4096);
    return (size_t)(rng_next(r) % 65536);
}

/* ---- phase 1 ---- */

enum { SLOTS = 1500, OPS = 60000 };

struct ent {
    rm_memory_t *h;
    size_t size;
    unsigned v;
    int locks;
    unsigned char *ptr;
    bool purgeable, purged;
};

static struct ent ents[SLOTS];
static int bad_contents, bad_pointers, bad_status;
static unsigned verifies;

static void verify_all(void) {
    verifies++;
    for (int i = 0; i < SLOTS; i++) {
        struct ent *e = &ents[i];
        if (!e->h) continue;
        void *p;
        rm_status_t st = rmlock(e->h, &p);
        if (e->purged || (e->purgeable && e->locks == 0 && st == RM_PURGED)) {
            if (st != RM_PURGED) bad_status++;
            e->purged = true;
            continue;
        }
        if (st != RM_OK) {
            bad_status++;
            continue;
        }
        if (e->locks > 0 && p != e->ptr) bad_pointers++;
        if (!intact(e->h, e->v, p, e->size)) bad_contents++;
        if (rmunlock(e->h) != RM_OK) bad_status++;
    }
}

static void phase1(void) {
    uint64_t r = 0x5EED5EED12345ULL;
    rm_stats_t s;
    CHECK("limit", rmsetlimit(2u << 20) == RM_OK);
    rm_stats_get(&s);
    uint64_t compactions = s.compactions;
    unsigned ooms = 0, locked_refusals = 0;
    for (int op = 0; op < OPS; op++) {
        struct ent *e = &ents[rng_next(&r) % SLOTS];
        unsigned k = (unsigned)(rng_next(&r) % 100);
        if (!e->h) {
            if (k < 60) {
                size_t n = pick_size(&r);
                rm_memory_t *h;
                rm_status_t st = rmalloc(&h, n);
                if (st == RM_OUT_OF_MEMORY) {
                    ooms++;
                } else if (st != RM_OK) {
                    bad_status++;
                } else {
                    void *p;
                    memset(e, 0, sizeof *e);
                    e->h = h;
                    e->size = n;
                    if (rmlock(h, &p) != RM_OK) bad_status++;
                    else {
                        fill(h, 0, p, 0, n);
                        rmunlock(h);
                    }
                }
            }
        } else if (k < 20) { /* lock (nested) */
            void *p;
            rm_status_t st = rmlock(e->h, &p);
            if (e->purged) {
                if (st != RM_PURGED) bad_status++;
            } else if (st == RM_PURGED && e->purgeable && e->locks == 0) {
                e->purged = true;
            } else if (st != RM_OK) {
                bad_status++;
            } else {
                if (e->locks > 0 && p != e->ptr) bad_pointers++;
                if (!intact(e->h, e->v, p, e->size)) bad_contents++;
                e->ptr = p;
                e->locks++;
            }
        } else if (k < 40) { /* unlock */
            rm_status_t st = rmunlock(e->h);
            if (e->locks == 0 ? st != RM_NOT_LOCKED : st != RM_OK) bad_status++;
            if (e->locks > 0) e->locks--;
        } else if (k < 60) { /* free */
            rm_status_t st = rmfree(e->h);
            if (e->locks > 0) {
                if (st != RM_LOCKED) bad_status++;
            } else if (st != RM_OK) {
                bad_status++;
            } else {
                void *p;
                if (rmlock(e->h, &p) != RM_INVALID_HANDLE) bad_status++;
                e->h = NULL;
            }
        } else if (k < 75) { /* resize */
            size_t n = pick_size(&r);
            bool was_purged = e->purged;
            if (!was_purged && e->purgeable && e->locks == 0) {
                void *p;
                rm_status_t st = rmlock(e->h, &p);
                if (st == RM_PURGED) e->purged = was_purged = true;
                else if (st == RM_OK) rmunlock(e->h);
            }
            rm_status_t st = rmrealloc(e->h, n);
            if (st == RM_OK) {
                void *p;
                if (rmlock(e->h, &p) != RM_OK) {
                    bad_status++;
                } else {
                    if (was_purged) {
                        e->v++;
                        e->purged = false;
                        fill(e->h, e->v, p, 0, n);
                    } else {
                        if (e->locks > 0 && p != e->ptr) bad_pointers++;
                        size_t keep = n < e->size ? n : e->size;
                        if (!intact(e->h, e->v, p, keep)) bad_contents++;
                        fill(e->h, e->v, p, keep, n);
                    }
                    rmunlock(e->h);
                    e->size = n;
                }
            } else if (st == RM_LOCKED) {
                if (e->locks == 0) bad_status++;
                locked_refusals++;
            } else if (st == RM_OUT_OF_MEMORY) {
                ooms++;
            } else {
                bad_status++;
            }
        } else if (k < 82) { /* purgeable or not */
            bool v = rng_next(&r) & 1;
            if (rmsetpurgeable(e->h, v) != RM_OK) bad_status++;
            e->purgeable = v;
        } else if (k < 85) { /* compact */
            if (rmcompact(k & 1 ? 0 : 20) != RM_OK) bad_status++;
        }
        rm_stats_get(&s);
        if (s.compactions != compactions) {
            compactions = s.compactions;
            verify_all();
        }
    }
    verify_all();
    CHECK("phase1-contents", bad_contents == 0);
    CHECK("phase1-locked-pointers", bad_pointers == 0);
    CHECK("phase1-statuses", bad_status == 0);
    rm_stats_get(&s);
    printf("phase 1: %d ops, %u verifications after compactions, %u OOMs, %u locked resizes refused, "
           "%lu compactions, %lu bytes moved, %lu purges, longest pause %lu ns\n",
           OPS, verifies, ooms, locked_refusals, (unsigned long)s.compactions, (unsigned long)s.bytes_moved,
           (unsigned long)s.purges, (unsigned long)s.longest_pause_ns);
    CHECK("phase1-exercised", verifies > 100 && s.purges > 0 && ooms > 0 && locked_refusals > 0);
    for (int i = 0; i < SLOTS; i++) {
        struct ent *e = &ents[i];
        if (!e->h) continue;
        while (e->locks-- > 0) rmunlock(e->h);
        if (rmfree(e->h) != RM_OK) bad_status++;
        e->h = NULL;
    }
    rmsetlimit(0);
    rmcompact(0);
    rm_stats_get(&s);
    CHECK("phase1-empty", bad_status == 0 && s.handles == 0 && s.used == 0 && s.fragmentation == 0.0);
}

/* ---- phase 2: threads ---- */

enum { THREADS = 4, TOPS = 20000, SHARED = 16, MINE = 200 };

static rm_memory_t *shared[SHARED];
static atomic_int stop;
static atomic_int t_bad;

struct mine {
    rm_memory_t *h;
    size_t size;
    int locks;
    unsigned char *ptr;
};

static void *worker(void *arg) {
    uint64_t r = 0xABCDEF01ULL + (uintptr_t)arg * 7919;
    struct mine *m = calloc(MINE, sizeof *m);
    int bad = 0;
    for (int op = 0; op < TOPS; op++) {
        struct mine *e = &m[rng_next(&r) % MINE];
        unsigned k = (unsigned)(rng_next(&r) % 100);
        void *p;
        if (!e->h) {
            size_t n = pick_size(&r);
            if (rmalloc(&e->h, n) != RM_OK || rmlock(e->h, &p) != RM_OK) {
                bad++;
                e->h = NULL;
                continue;
            }
            fill(e->h, 0, p, 0, n);
            rmunlock(e->h);
            e->size = n;
        } else if (k < 25) {
            if (rmlock(e->h, &p) != RM_OK) bad++;
            else {
                if (e->locks > 0 && p != e->ptr) bad++;
                if (!intact(e->h, 0, p, e->size)) bad++;
                e->ptr = p;
                e->locks++;
            }
        } else if (k < 50) {
            if (e->locks > 0) {
                if (!intact(e->h, 0, e->ptr, e->size)) bad++;
                if (rmunlock(e->h) != RM_OK) bad++;
                e->locks--;
            }
        } else if (k < 65) {
            if (e->locks == 0) {
                if (rmfree(e->h) != RM_OK) bad++;
                e->h = NULL;
            } else if (rmfree(e->h) != RM_LOCKED) {
                bad++;
            }
        } else if (k < 75) {
            size_t n = pick_size(&r);
            rm_status_t st = rmrealloc(e->h, n);
            if (st == RM_OK) {
                if (rmlock(e->h, &p) != RM_OK) bad++;
                else {
                    if (e->locks > 0 && p != e->ptr) bad++;
                    size_t keep = n < e->size ? n : e->size;
                    if (!intact(e->h, 0, p, keep)) bad++;
                    fill(e->h, 0, p, keep, n);
                    rmunlock(e->h);
                    e->size = n;
                }
            } else if (st != RM_LOCKED || e->locks == 0) {
                bad++;
            }
        } else {
            /* Every thread locks the shared blocks at once: contents and pointer stable meanwhile. */
            rm_memory_t *h = shared[rng_next(&r) % SHARED];
            void *q;
            if (rmlock(h, &p) != RM_OK) bad++;
            else {
                if (!intact(h, 0, p, 1024)) bad++;
                if (rmlock(h, &q) != RM_OK || q != p) bad++;
                else rmunlock(h);
                if (!intact(h, 0, p, 1024)) bad++;
                rmunlock(h);
            }
        }
    }
    for (int i = 0; i < MINE; i++) {
        struct mine *e = &m[i];
        if (!e->h) continue;
        while (e->locks > 0) {
            if (!intact(e->h, 0, e->ptr, e->size)) bad++;
            rmunlock(e->h);
            e->locks--;
        }
        if (rmfree(e->h) != RM_OK) bad++;
    }
    free(m);
    atomic_fetch_add(&t_bad, bad);
    return NULL;
}

static void *compactor(void *arg) {
    (void)arg;
    unsigned long n = 0;
    while (!atomic_load(&stop)) {
        rmcompact(n % 3 == 0 ? 0 : 50);
        n++;
        /* Let the workers fragment the heap between passes. */
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    }
    return (void *)n;
}

static void phase2(void) {
    void *p;
    int ok = 1;
    for (int i = 0; i < SHARED; i++) {
        ok &= rmalloc(&shared[i], 1024) == RM_OK && rmlock(shared[i], &p) == RM_OK;
        if (ok) {
            fill(shared[i], 0, p, 0, 1024);
            rmunlock(shared[i]);
        }
    }
    CHECK("phase2-setup", ok);
    pthread_t t[THREADS], c;
    pthread_create(&c, NULL, compactor, NULL);
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    atomic_store(&stop, 1);
    void *passes;
    pthread_join(c, &passes);
    rm_stats_t s;
    rm_stats_get(&s);
    printf("phase 2: %d threads x %d ops with %lu concurrent compactions; %lu bytes moved in total\n", THREADS,
           TOPS, (unsigned long)(uintptr_t)passes, (unsigned long)s.bytes_moved);
    CHECK("phase2-workers", atomic_load(&t_bad) == 0);
    CHECK("phase2-compactor-ran", (uintptr_t)passes > 0);
    ok = 1;
    for (int i = 0; i < SHARED; i++) {
        ok &= rmlock(shared[i], &p) == RM_OK && intact(shared[i], 0, p, 1024) && rmunlock(shared[i]) == RM_OK;
        ok &= rmfree(shared[i]) == RM_OK;
    }
    CHECK("phase2-shared", ok);
    rm_stats_get(&s);
    CHECK("phase2-empty", s.handles == 0 && s.used == 0);
}

/* ---- phase 3: fork while another thread holds the heap now and then ---- */

static void *churner(void *arg) {
    (void)arg;
    rm_memory_t *hs[64] = {0};
    unsigned long n = 0;
    while (!atomic_load(&stop)) {
        rm_memory_t **h = &hs[n % 64];
        if (*h) rmfree(*h);
        if (rmalloc(h, 100 + n % 3000) != RM_OK) *h = NULL;
        if (n % 16 == 0) rmcompact(0);
        n++;
    }
    for (int i = 0; i < 64; i++)
        if (hs[i]) rmfree(hs[i]);
    return NULL;
}

static void phase3(void) {
    atomic_store(&stop, 0);
    pthread_t t;
    pthread_create(&t, NULL, churner, NULL);
    int children_ok = 0, forks = 20;
    for (int i = 0; i < forks; i++) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10); /* a deadlocked child dies instead of hanging the test */
            rm_memory_t *h;
            void *p;
            int ok = rmalloc(&h, 5000) == RM_OK && rmlock(h, &p) == RM_OK;
            if (ok) {
                fill(h, 0, p, 0, 5000);
                ok = rmunlock(h) == RM_OK && rmcompact(0) == RM_OK && rmlock(h, &p) == RM_OK &&
                     intact(h, 0, p, 5000) && rmunlock(h) == RM_OK && rmfree(h) == RM_OK;
            }
            _exit(ok ? 0 : 1);
        }
        int st = 0;
        if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0) children_ok++;
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    printf("phase 3: %d of %d children forked during allocation and compaction used the heap\n", children_ok, forks);
    CHECK("phase3-fork", children_ok == forks);
}

int main(void) {
    phase1();
    phase2();
    phase3();
    return check_summary();
}
