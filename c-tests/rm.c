/* rm.c: the contract of every rmalloc call and every status it can return (issue 7).
 *
 * The prototypes below are the issue's, redeclared exactly: a mismatch with rallocs.h fails to compile.
 * This program owns the process's rmalloc heap, so it checks exact statistics too. */
#include <rallocs.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

rm_status_t rmalloc(rm_memory_t **handle, size_t size);
rm_status_t rmlock(rm_memory_t *h, void **ptr);
rm_status_t rmunlock(rm_memory_t *h);
rm_status_t rmfree(rm_memory_t *h);
rm_status_t rmrealloc(rm_memory_t *h, size_t size);
size_t rmsize(const rm_memory_t *h);
rm_status_t rmsetpurgeable(rm_memory_t *h, bool purgeable);
rm_status_t rmcompact(uint64_t budget_us);
rm_status_t rmsetlimit(size_t bytes);
void rm_stats_get(rm_stats_t *out);

_Static_assert(RM_OK == 0 && RM_INVALID_ARGUMENT == 1 && RM_OUT_OF_MEMORY == 2 && RM_INVALID_HANDLE == 3 &&
                   RM_LOCKED == 4 && RM_NOT_LOCKED == 5 && RM_PURGED == 6,
               "rm_status_t values");
_Static_assert(sizeof(rm_status_t) == sizeof(int), "rm_status_t is a C enum");
_Static_assert(offsetof(rm_stats_t, capacity) == 0 && offsetof(rm_stats_t, fragmentation) == 4 * sizeof(size_t) &&
                   offsetof(rm_stats_t, purges) == sizeof(rm_stats_t) - sizeof(uint64_t),
               "rm_stats_t layout");

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 131u + i * 7u + (i >> 8));
}

static int same(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed * 131u + i * 7u + (i >> 8))) return 0;
    return 1;
}

static rm_stats_t stats(void) {
    rm_stats_t s;
    memset(&s, 0xff, sizeof s);
    rm_stats_get(&s);
    return s;
}

int main(void) {
    rm_memory_t *h = NULL, *g = NULL;
    void *p = NULL, *q = NULL;

    /* Empty heap. */
    rm_stats_t s = stats();
    CHECK("stats-empty", s.handles == 0 && s.used == 0 && s.compactions == 0 && s.purges == 0);
    rm_stats_get(NULL); /* NULL out: nothing happens */

    /* NULL arguments. */
    CHECK("rmalloc-null-out", rmalloc(NULL, 16) == RM_INVALID_ARGUMENT);
    CHECK("rmlock-null-handle", rmlock(NULL, &p) == RM_INVALID_ARGUMENT);
    CHECK("rmunlock-null", rmunlock(NULL) == RM_INVALID_ARGUMENT);
    CHECK("rmfree-null", rmfree(NULL) == RM_INVALID_ARGUMENT);
    CHECK("rmrealloc-null", rmrealloc(NULL, 8) == RM_INVALID_ARGUMENT);
    CHECK("rmsize-null", rmsize(NULL) == 0);
    CHECK("rmsetpurgeable-null", rmsetpurgeable(NULL, true) == RM_INVALID_ARGUMENT);

    /* A pointer that is not a handle. */
    int not_a_handle;
    rm_memory_t *bogus = (rm_memory_t *)(void *)&not_a_handle;
    CHECK("rmlock-bogus-before-any", rmlock(bogus, &p) == RM_INVALID_HANDLE);

    /* Allocate, lock, write, unlock. */
    CHECK("rmalloc-ok", rmalloc(&h, 1000) == RM_OK && h != NULL);
    CHECK("rmsize", rmsize(h) == 1000);
    CHECK("rmlock-null-out", rmlock(h, NULL) == RM_INVALID_ARGUMENT);
    CHECK("rmlock-ok", rmlock(h, &p) == RM_OK && p != NULL);
    CHECK("rmlock-aligned", ((uintptr_t)p & 15) == 0);
    fill(p, 1000, 1);
    CHECK("rmlock-nests", rmlock(h, &q) == RM_OK && q == p);
    CHECK("rmfree-locked", rmfree(h) == RM_LOCKED);
    CHECK("rmunlock-1", rmunlock(h) == RM_OK);
    CHECK("rmfree-still-locked", rmfree(h) == RM_LOCKED);
    CHECK("rmunlock-2", rmunlock(h) == RM_OK);
    CHECK("rmunlock-not-locked", rmunlock(h) == RM_NOT_LOCKED);
    CHECK("rmlock-bogus", rmlock(bogus, &p) == RM_INVALID_HANDLE);
    CHECK("rmlock-inside-handle", rmlock((rm_memory_t *)((char *)h + 1), &p) == RM_INVALID_HANDLE);
    s = stats();
    CHECK("stats-one", s.handles == 1 && s.used >= 1000 && s.capacity == s.used + s.free);

    /* Out-parameters untouched on failure. */
    g = (rm_memory_t *)0x1234;
    CHECK("rmalloc-overflow", rmalloc(&g, SIZE_MAX) == RM_OUT_OF_MEMORY && g == (rm_memory_t *)0x1234);
    CHECK("rmalloc-huge", rmalloc(&g, (size_t)1 << 46) == RM_OUT_OF_MEMORY && g == (rm_memory_t *)0x1234);
    p = (void *)0x5678;
    CHECK("rmlock-bogus-keeps-out", rmlock(bogus, &p) == RM_INVALID_HANDLE && p == (void *)0x5678);

    /* Zero size: a distinct, lockable handle. */
    CHECK("rmalloc-zero", rmalloc(&g, 0) == RM_OK && g != NULL && g != h && rmsize(g) == 0);
    CHECK("rmlock-zero", rmlock(g, &q) == RM_OK && q != NULL && rmunlock(g) == RM_OK);

    /* Realloc keeps contents; grows and shrinks; refused when a locked block must move. */
    CHECK("rmrealloc-grow", rmrealloc(h, 5000) == RM_OK && rmsize(h) == 5000);
    CHECK("rmrealloc-keeps", rmlock(h, &p) == RM_OK && same(p, 1000, 1));
    fill(p, 5000, 2);
    CHECK("rmrealloc-shrink-locked", rmrealloc(h, 3000) == RM_OK && rmsize(h) == 3000);
    CHECK("rmrealloc-shrink-in-place", rmlock(h, &q) == RM_OK && q == p && same(q, 3000, 2) && rmunlock(h) == RM_OK);
    /* Something after h so that it cannot grow in place. */
    rm_memory_t *after = NULL;
    CHECK("rmalloc-after", rmalloc(&after, 2000) == RM_OK);
    rm_memory_t *after2 = NULL;
    CHECK("rmalloc-after2", rmalloc(&after2, 2000) == RM_OK);
    CHECK("rmrealloc-locked-must-move", rmrealloc(h, 1 << 20) == RM_LOCKED && rmsize(h) == 3000);
    CHECK("rmrealloc-locked-unchanged", rmlock(h, &q) == RM_OK && q == p && same(q, 3000, 2) && rmunlock(h) == RM_OK);
    CHECK("rmunlock-h", rmunlock(h) == RM_OK);
    CHECK("rmrealloc-moves-unlocked", rmrealloc(h, 1 << 20) == RM_OK && rmsize(h) == 1 << 20);
    CHECK("rmrealloc-moved-keeps", rmlock(h, &p) == RM_OK && same(p, 3000, 2) && rmunlock(h) == RM_OK);
    CHECK("rmrealloc-overflow", rmrealloc(h, SIZE_MAX) == RM_OUT_OF_MEMORY && rmsize(h) == 1 << 20);
    CHECK("rmrealloc-back", rmrealloc(h, 3000) == RM_OK);

    /* Freed handles are detected by every call. */
    CHECK("rmfree-ok", rmfree(g) == RM_OK);
    CHECK("rmfree-double", rmfree(g) == RM_INVALID_HANDLE);
    CHECK("rmlock-freed", rmlock(g, &p) == RM_INVALID_HANDLE);
    CHECK("rmunlock-freed", rmunlock(g) == RM_INVALID_HANDLE);
    CHECK("rmrealloc-freed", rmrealloc(g, 10) == RM_INVALID_HANDLE);
    CHECK("rmsetpurgeable-freed", rmsetpurgeable(g, true) == RM_INVALID_HANDLE);
    CHECK("rmsize-freed", rmsize(g) == 0);
    /* ... also after many more allocations and frees (slot reuse is delayed and generation-tagged). */
    enum { MANY = 5000 };
    static rm_memory_t *many[MANY];
    int ok = 1;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < MANY; i++) ok &= rmalloc(&many[i], 24) == RM_OK && many[i] != g;
        for (int i = 0; i < MANY; i++) ok &= rmfree(many[i]) == RM_OK;
    }
    CHECK("reuse-delayed", ok);
    ok = 1;
    for (int i = 0; i < MANY; i++) ok &= rmlock(many[i], &p) == RM_INVALID_HANDLE;
    CHECK("stale-handles-after-reuse", ok && rmlock(g, &p) == RM_INVALID_HANDLE);

    /* Compaction: a fragmented heap, some blocks locked; locked ones stay, all contents survive. */
    enum { N = 4000 };
    static rm_memory_t *blk[N];
    static void *pinned[N];
    ok = 1;
    for (int i = 0; i < N; i++) {
        ok &= rmalloc(&blk[i], 32 + (size_t)(i % 13) * 40) == RM_OK;
        ok &= rmlock(blk[i], &p) == RM_OK;
        fill(p, rmsize(blk[i]), (unsigned)i);
        ok &= rmunlock(blk[i]) == RM_OK;
    }
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0) {
            ok &= rmfree(blk[i]) == RM_OK;
            blk[i] = NULL;
        } else if (i % 101 == 1) {
            ok &= rmlock(blk[i], &pinned[i]) == RM_OK;
        }
    }
    CHECK("fragment", ok);
    s = stats();
    rm_stats_t before_frag = s;
    CHECK("fragmented-stats", s.fragmentation > 0.5 && s.largest_free < s.free);
    uint64_t compactions = s.compactions;
    /* Budgeted passes resume where the last one stopped: repeat until nothing moves any more. */
    int steps = 0, still = 0;
    ok = 1;
    while (still < 3 && steps < 100000) {
        uint64_t moved = s.bytes_moved;
        ok &= rmcompact(5) == RM_OK;
        s = stats();
        still = s.bytes_moved == moved ? still + 1 : 0;
        steps++;
    }
    CHECK("rmcompact-budget", ok && steps < 100000 && steps > 3);
    CHECK("rmcompact-budget-progresses", s.compactions > compactions && s.bytes_moved > 0);
    CHECK("rmcompact-budget-no-worse", s.largest_free >= before_frag.largest_free && s.used == before_frag.used);
    CHECK("rmcompact-full", rmcompact(0) == RM_OK);
    ok = 1;
    for (int i = 1; i < N; i += 2) {
        ok &= rmlock(blk[i], &p) == RM_OK && same(p, rmsize(blk[i]), (unsigned)i);
        if (pinned[i]) ok &= p == pinned[i];
        ok &= rmunlock(blk[i]) == RM_OK;
    }
    CHECK("compaction-keeps-contents-and-locked-pointers", ok);
    for (int i = 1; i < N; i += 2)
        if (pinned[i]) rmunlock(blk[i]);
    rm_stats_t before = stats();
    CHECK("rmcompact-full-unlocked", rmcompact(0) == RM_OK);
    s = stats();
    CHECK("full-compaction-one-run", s.fragmentation == 0.0 && s.largest_free == s.free);
    CHECK("full-compaction-returns-pages", s.free < 4096 && s.capacity <= before.capacity);
    CHECK("stats-pause", s.longest_pause_ns > 0 && s.bytes_moved > 0);
    ok = 1;
    for (int i = 1; i < N; i += 2) {
        ok &= rmlock(blk[i], &p) == RM_OK && same(p, rmsize(blk[i]), (unsigned)i) && rmunlock(blk[i]) == RM_OK;
        ok &= rmfree(blk[i]) == RM_OK;
    }
    CHECK("contents-after-full-compaction", ok);

    /* Limit, automatic compaction and purging. */
    rmfree(after);
    rmfree(after2);
    rmcompact(0);
    s = stats();
    size_t base_used = s.used; /* h (3000 bytes) */
    CHECK("rmsetlimit-too-small", rmsetlimit(64) == RM_OUT_OF_MEMORY);
    CHECK("rmsetlimit", rmsetlimit(base_used + (1 << 20)) == RM_OK);
    CHECK("rmalloc-above-limit", rmalloc(&g, 2 << 20) == RM_OUT_OF_MEMORY);
    rm_memory_t *a = NULL, *b = NULL, *c = NULL;
    CHECK("rmalloc-a", rmalloc(&a, 400 << 10) == RM_OK);
    CHECK("rmalloc-b", rmalloc(&b, 400 << 10) == RM_OK);
    CHECK("rmsetpurgeable", rmsetpurgeable(a, true) == RM_OK && rmsetpurgeable(a, false) == RM_OK);
    CHECK("no-room", rmalloc(&c, 400 << 10) == RM_OUT_OF_MEMORY);
    CHECK("rmsetpurgeable-a", rmsetpurgeable(a, true) == RM_OK);
    CHECK("rmlock-a", rmlock(a, &p) == RM_OK);
    CHECK("locked-purgeable-survives", rmalloc(&c, 400 << 10) == RM_OUT_OF_MEMORY);
    CHECK("rmunlock-a", rmunlock(a) == RM_OK);
    CHECK("purge-makes-room", rmalloc(&c, 400 << 10) == RM_OK);
    s = stats();
    CHECK("stats-purges", s.purges == 1 && s.handles == 4);
    CHECK("rmlock-purged", rmlock(a, &p) == RM_PURGED);
    CHECK("rmsize-purged", rmsize(a) == 0);
    CHECK("rmunlock-purged", rmunlock(a) == RM_NOT_LOCKED);
    CHECK("revive-no-room", rmrealloc(a, 400 << 10) == RM_OUT_OF_MEMORY);
    CHECK("rmfree-c", rmfree(c) == RM_OK);
    CHECK("rmrealloc-revives", rmrealloc(a, 100) == RM_OK && rmsize(a) == 100);
    CHECK("revived-lockable", rmlock(a, &p) == RM_OK && rmunlock(a) == RM_OK);
    CHECK("rmfree-purged-ok", rmsetpurgeable(b, true) == RM_OK && rmalloc(&c, 700 << 10) == RM_OK &&
                                  rmlock(b, &p) == RM_PURGED && rmfree(b) == RM_OK);
    CHECK("rmsetlimit-off", rmsetlimit(0) == RM_OK);
    CHECK("unlimited-again", rmalloc(&g, 4 << 20) == RM_OK && rmfree(g) == RM_OK);
    CHECK("cleanup", rmfree(a) == RM_OK && rmfree(c) == RM_OK && rmfree(h) == RM_OK);
    s = stats();
    CHECK("stats-empty-again", s.handles == 0 && s.used == 0);
    return check_summary();
}
