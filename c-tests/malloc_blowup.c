/* malloc_blowup.c: the producer/consumer pattern that blows up allocators with pure per-thread heaps (and
 * allocators that put a remotely freed block into the freeing thread's cache): one thread allocates,
 * another frees, round after round. rallocs must keep its committed memory within a constant factor of
 * the peak of live bytes plus a fixed per-thread term.
 *
 * The bound, from Hoard's theorem (Berger et al., ASPLOS 2000, section 4): with the emptiness invariant
 * (a heap holding a bytes of superblocks with u in use keeps u >= (1-f)*a or u >= a - K*S, otherwise a
 * mostly-empty superblock moves to the global heap), every heap satisfies a <= u/(1-f) + K*S per size class,
 * and the global heap only holds superblocks that are reused before any new one is committed. Summed over
 * the heaps, committed A(t) <= U/(1-f) + P*K*S*classes, where U is the peak of live bytes. With f <= 1/2
 * the factor is at most 2. The additive term covers the per-heap K*S reserves of the size classes in use,
 * the empty superblocks waiting for their purge delay, the large-block cache and metadata. We assert
 *
 *     peak committed  <=  committed at start + 2 * peak live + 16 MiB + 4 MiB per thread (3 threads)
 *
 * Peak live here is at most (QUEUE + 2) batches of BATCH bytes (~12 MiB); the test allocates ROUNDS *
 * BATCH bytes in all (480 MiB), which is what an allocator without a bound would end up holding. The
 * batches change size class every round (12 B .. 125 KiB, the last ones large blocks), so empty
 * superblocks must be reused across size classes too.
 *
 * Live bytes are counted by the test itself (usable sizes: producer adds, consumer subtracts, exact peak);
 * committed is read from rallocs_stats_get: the peak_committed_bytes counter and the test's own sample
 * after every round, whichever is larger. */
#define _GNU_SOURCE
#include <rallocs.h>

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

void rallocs_stats_get(rallocs_stats_t *out);
int rallocs_trim(void);

#define MiB ((size_t)1 << 20)
enum { ROUNDS = 240, QUEUE = 4, NBATCH = QUEUE + 2, MAXBLOCKS = (2 << 20) / 12 + 1 };
static const size_t BATCH = 2 * MiB;
static const size_t class_base[] = {16, 48, 100, 256, 1000, 3000, 12000, 100000};

typedef struct batch {
    void *p[MAXBLOCKS];
    size_t n;
    unsigned round;
} batch_t;

static batch_t batches[NBATCH]; /* static: not from the heap under test */
static int free_list[NBATCH], nfree;
static int queue[QUEUE], qhead, qlen;
static int done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static atomic_size_t live; /* bytes (usable) of the test's blocks that are allocated and not yet freed */
static size_t peak_live;   /* only the producer raises live, so it can track the exact peak */
static size_t max_committed_seen;
static atomic_ulong errors;

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void *producer(void *arg) {
    (void)arg;
    for (unsigned round = 0; round < ROUNDS; round++) {
        pthread_mutex_lock(&mu);
        while (nfree == 0) pthread_cond_wait(&cv, &mu);
        batch_t *b = &batches[free_list[--nfree]];
        pthread_mutex_unlock(&mu);

        size_t base = class_base[round % (sizeof class_base / sizeof class_base[0])];
        size_t bytes = 0;
        b->n = 0;
        b->round = round;
        while (bytes < BATCH && b->n < MAXBLOCKS) {
            size_t sz = base * 3 / 4 + (size_t)(rnd() % (base / 2 + 1)); /* base +- 25% */
            uint32_t *p = malloc(sz);
            if (!p) {
                atomic_fetch_add(&errors, 1);
                break;
            }
            p[0] = round;
            size_t u = malloc_usable_size(p);
            size_t now = atomic_fetch_add(&live, u) + u;
            if (now > peak_live) peak_live = now;
            bytes += u;
            b->p[b->n++] = p;
        }
        rallocs_stats_t s;
        rallocs_stats_get(&s);
        if (s.committed_bytes > max_committed_seen) max_committed_seen = s.committed_bytes;

        pthread_mutex_lock(&mu);
        while (qlen == QUEUE) pthread_cond_wait(&cv, &mu);
        queue[(qhead + qlen++) % QUEUE] = (int)(b - batches);
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (qlen == 0 && !done) pthread_cond_wait(&cv, &mu);
        if (qlen == 0 && done) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        batch_t *b = &batches[queue[qhead]];
        qhead = (qhead + 1) % QUEUE;
        qlen--;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);

        for (size_t i = 0; i < b->n; i++) {
            uint32_t *p = b->p[i];
            if (p[0] != b->round) atomic_fetch_add(&errors, 1);
            atomic_fetch_sub(&live, malloc_usable_size(p));
            free(p);
        }
        b->n = 0;

        pthread_mutex_lock(&mu);
        free_list[nfree++] = (int)(b - batches);
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
}

int main(void) {
    for (int i = 0; i < NBATCH; i++) free_list[nfree++] = i;
    rallocs_stats_t s0, s1, s2;
    rallocs_stats_get(&s0);
    pthread_t prod, cons;
    pthread_create(&cons, NULL, consumer, NULL);
    pthread_create(&prod, NULL, producer, NULL);
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    rallocs_stats_get(&s1);

    size_t committed_peak = s1.peak_committed_bytes > max_committed_seen ? s1.peak_committed_bytes : max_committed_seen;
    size_t bound = s0.committed_bytes + 2 * peak_live + 16 * MiB + 3 * 4 * MiB;
    size_t total = (size_t)ROUNDS * BATCH;
    printf("malloc_blowup: %u rounds, %zu MiB allocated in all; peak live %.1f MiB; committed at start %.1f MiB, "
           "peak %.1f MiB (sampled %.1f), at end %.1f MiB; bound %.1f MiB\n",
           (unsigned)ROUNDS, total / MiB, peak_live / (double)MiB, s0.committed_bytes / (double)MiB,
           s1.peak_committed_bytes / (double)MiB, max_committed_seen / (double)MiB, s1.committed_bytes / (double)MiB,
           bound / (double)MiB);
    CHECK("no-errors", atomic_load(&errors) == 0);
    CHECK("test-live-back-to-zero", atomic_load(&live) == 0);
    CHECK("peak-live-as-designed", peak_live >= BATCH && peak_live <= (NBATCH + 1) * BATCH + MiB);
    CHECK("peak-stat>=sampled", s1.peak_committed_bytes >= max_committed_seen);
    CHECK("committed-within-bound", committed_peak <= bound);
    CHECK("committed-at-end-within-bound", s1.committed_bytes <= bound);
    CHECK("live-bytes-back", s1.live_bytes <= s0.live_bytes + 64 * 1024 && s1.live_bytes + 1024 >= s0.live_bytes);
    CHECK("remote-frees-counted", s1.remote_frees - s0.remote_frees > 0);
    rallocs_trim();
    rallocs_stats_get(&s2);
    printf("malloc_blowup: after rallocs_trim committed %.1f MiB\n", s2.committed_bytes / (double)MiB);
    CHECK("trim-returns-the-rest", s2.committed_bytes <= s0.committed_bytes + 16 * MiB);
    return check_summary();
}
