/* malloc_process.c: the allocator through a process's life.
 *
 *   1. Thread churn: 10,000 short-lived threads (8 at a time) allocate, free some of their blocks, leave
 *      others to the main thread (freed after their owner exited) and exit. The footprint stays flat:
 *      committed bytes and the number of heaps after 10,000 threads are those after the first 1,000
 *      (plus a small slack), and live bytes are back at the start.
 *      Also: 256 threads alive at once, each allocating; thread-exit destructors of the program (pthread
 *      keys created after rallocs' own) that malloc and free while their thread is being torn down.
 *   2. fork() from a multithreaded parent while 4 other threads allocate and free: the child allocates
 *      (also from a new thread), frees blocks made by parent threads that do not exist in the child, and
 *      exits 0; the parent goes on allocating. 20 times. The program's own
 *      pthread_atfork handlers malloc and free in prepare, parent and child. Each child has an
 *      alarm, the parent one for the whole part: a deadlock fails the test instead of hanging it.
 *   3. Blocks of a thread that exited, freed by another thread: the memory comes back. rallocs_trim
 *      returns it to the OS (returns 1, committed falls back near the start), and a new thread that
 *      allocates as much again reuses it instead of committing more.
 *   4. Out of memory: in a forked child under setrlimit(RLIMIT_AS) (what `ulimit -v` sets), malloc,
 *      calloc, realloc, aligned_alloc and posix_memalign fail with NULL/ENOMEM (realloc leaving the
 *      block intact) and never crash; after freeing, allocation works again. */
#define _GNU_SOURCE
#include <rallocs.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

void rallocs_stats_get(rallocs_stats_t *out);
int rallocs_trim(void);

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ---- 1. Thread churn ---- */
enum { CHURN_THREADS = 10000, AT_ONCE = 8, KEEP = 4, BLOCKS = 24 };

typedef struct churn {
    pthread_t th;
    uint64_t seed;
    void *left[KEEP]; /* handed to the main thread, freed after this thread exited */
    int bad;
} churn_t;

static void *churn_thread(void *arg) {
    churn_t *c = arg;
    void *b[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        size_t sz = i == 0 ? 64 * KiB + 1 : 1 + (size_t)(next_rand(&c->seed) % 4096);
        b[i] = malloc(sz);
        if (!b[i]) {
            c->bad = 1;
            continue;
        }
        memset(b[i], i, sz < 256 ? sz : 256);
    }
    for (int i = 0; i < BLOCKS; i++) {
        if (b[i] && ((unsigned char *)b[i])[0] != (unsigned char)i) c->bad = 1;
        if (i < KEEP) c->left[i] = b[i];
        else free(b[i]);
    }
    return NULL;
}

static void test_churn(void) {
    static churn_t c[AT_ONCE];
    rallocs_stats_t s0, s1000, s_end;
    rallocs_stats_get(&s0);
    int create_failed = 0, bad = 0;
    for (int done = 0; done < CHURN_THREADS; done += AT_ONCE) {
        for (int i = 0; i < AT_ONCE; i++) {
            c[i].seed = 0x9E3779B97F4A7C15ULL + (uint64_t)(done + i) * 7919;
            if (pthread_create(&c[i].th, NULL, churn_thread, &c[i]) != 0) create_failed++;
        }
        for (int i = 0; i < AT_ONCE; i++) {
            pthread_join(c[i].th, NULL);
            bad += c[i].bad;
            for (int k = 0; k < KEEP; k++) free(c[i].left[k]);
        }
        if (done + AT_ONCE == 1000) rallocs_stats_get(&s1000);
    }
    rallocs_stats_get(&s_end);
    printf("malloc_process: churn: committed %.1f MiB after 1,000 threads, %.1f MiB after 10,000; heaps %zu -> %zu; "
           "live %zu -> %zu; mallocs %llu\n",
           s1000.committed_bytes / (double)MiB, s_end.committed_bytes / (double)MiB, s1000.heaps, s_end.heaps,
           s0.live_bytes, s_end.live_bytes, (unsigned long long)(s_end.mallocs - s0.mallocs));
    CHECK("churn-threads-created", create_failed == 0);
    CHECK("churn-blocks-ok", bad == 0);
    CHECK("churn-mallocs-counted", s_end.mallocs - s0.mallocs >= (uint64_t)CHURN_THREADS * BLOCKS);
    CHECK("churn-committed-flat", s_end.committed_bytes <= s1000.committed_bytes + 4 * MiB);
    CHECK("churn-reserved-flat", s_end.reserved_bytes <= s1000.reserved_bytes + 64 * MiB);
    CHECK("churn-heaps-flat", s_end.heaps <= s1000.heaps + AT_ONCE);
    CHECK("churn-live-back", s_end.live_bytes <= s0.live_bytes + 64 * KiB && s_end.live_bytes + KiB >= s0.live_bytes);
}

/* 256 threads alive at the same time, each with its own blocks (and heap). */
enum { CROWD = 256 };
static pthread_barrier_t crowd_barrier;
static atomic_int crowd_bad;

static void *crowd_thread(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    char *b[16];
    for (int i = 0; i < 16; i++) {
        b[i] = malloc(16 + (size_t)i * 40 + id % 7);
        if (b[i]) memset(b[i], (int)(id & 0xff), 16);
        else atomic_fetch_add(&crowd_bad, 1);
    }
    pthread_barrier_wait(&crowd_barrier);
    for (int i = 0; i < 16; i++) {
        if (b[i] && (unsigned char)b[i][15] != (unsigned char)(id & 0xff)) atomic_fetch_add(&crowd_bad, 1);
        free(b[i]);
    }
    return NULL;
}

static int crowd_round(pthread_attr_t *attr) {
    static pthread_t t[CROWD];
    pthread_barrier_init(&crowd_barrier, NULL, CROWD);
    int created = 0;
    for (uintptr_t i = 0; i < CROWD; i++) created += pthread_create(&t[i], attr, crowd_thread, (void *)i) == 0;
    for (int i = 0; i < CROWD; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&crowd_barrier);
    return created;
}

static void test_crowd(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * KiB);
    rallocs_stats_t s0, s1, s2;
    rallocs_stats_get(&s0);
    /* The first round also fills glibc's stack cache (each cached stack keeps a small calloc'ed DTV); the
     * second round reuses those stacks, and must reuse rallocs' heaps too. */
    int created = crowd_round(&attr);
    rallocs_stats_get(&s1);
    created += crowd_round(&attr);
    rallocs_stats_get(&s2);
    pthread_attr_destroy(&attr);
    printf("malloc_process: %d threads alive at once, twice: heaps %zu -> %zu -> %zu, live %zu -> %zu -> %zu\n",
           CROWD, s0.heaps, s1.heaps, s2.heaps, s0.live_bytes, s1.live_bytes, s2.live_bytes);
    CHECK("crowd-created", created == 2 * CROWD);
    CHECK("crowd-blocks-ok", atomic_load(&crowd_bad) == 0);
    CHECK("crowd-heaps-reused", s2.heaps <= s1.heaps);
    CHECK("crowd-live-back", s2.live_bytes <= s1.live_bytes + 16 * KiB && s1.live_bytes <= s0.live_bytes + CROWD * KiB);
    CHECK("crowd-committed-flat", s2.committed_bytes <= s1.committed_bytes + 4 * MiB);
}

/* Thread-exit destructors of the program allocate and free after rallocs' own destructor may have run. */
enum { DTOR_THREADS = 64 };
static pthread_key_t user_key;
static void *dtor_leftover[DTOR_THREADS];
static atomic_int dtor_runs, dtor_bad;

static void user_dtor(void *v) {
    char *p = v;
    if ((unsigned char)p[0] != 0x5a) atomic_fetch_add(&dtor_bad, 1);
    int slot = p[1];
    free(p);
    for (int i = 0; i < 50; i++) { /* a busy destructor */
        char *q = malloc((size_t)i * 24 + 1);
        if (!q) atomic_fetch_add(&dtor_bad, 1);
        else q[0] = 1;
        free(q);
    }
    dtor_leftover[slot] = malloc(777); /* outlives its thread: main frees it */
    if (dtor_leftover[slot]) memset(dtor_leftover[slot], 0x77, 777);
    atomic_fetch_add(&dtor_runs, 1);
}

static void *dtor_thread(void *arg) {
    char *p = malloc(64);
    if (!p) return NULL;
    p[0] = 0x5a;
    p[1] = (char)(intptr_t)arg;
    pthread_setspecific(user_key, p);
    void *tmp = malloc(5000);
    free(tmp);
    return NULL;
}

static void test_exit_destructors(void) {
    void *warm = malloc(1); /* rallocs is initialised (its key created) before ours */
    free(warm);
    pthread_key_create(&user_key, user_dtor);
    rallocs_stats_t s0, s1;
    rallocs_stats_get(&s0);
    for (intptr_t i = 0; i < DTOR_THREADS; i++) {
        pthread_t t;
        pthread_create(&t, NULL, dtor_thread, (void *)i);
        pthread_join(t, NULL);
    }
    int ok = 1;
    for (int i = 0; i < DTOR_THREADS; i++) {
        unsigned char *p = dtor_leftover[i];
        ok &= p != NULL && p[0] == 0x77 && p[776] == 0x77;
        free(p);
    }
    rallocs_stats_get(&s1);
    pthread_key_delete(user_key);
    CHECK("exit-destructors-ran", atomic_load(&dtor_runs) == DTOR_THREADS && atomic_load(&dtor_bad) == 0);
    CHECK("exit-destructor-blocks-ok", ok);
    CHECK("exit-destructors-no-leak", s1.live_bytes <= s0.live_bytes + 64 * KiB);
}

/* ---- 2. fork from a multithreaded parent ---- */
static atomic_int stop_busy;
static atomic_ulong busy_ops;
/* Blocks the busy threads publish: a fork child frees them although their owners do not exist there. */
enum { PUBLISHED = 64 };
static _Atomic(unsigned char *) published[PUBLISHED];

static void *busy_thread(void *arg) {
    uint64_t r = (uint64_t)(uintptr_t)arg * 0x100000001B3ULL + 1;
    void *keep[64] = {0};
    while (!atomic_load_explicit(&stop_busy, memory_order_relaxed)) {
        unsigned k = (unsigned)(next_rand(&r) % 64);
        free(keep[k]);
        uint64_t c = next_rand(&r) % 100;
        size_t sz = c < 90 ? 1 + (size_t)(next_rand(&r) % 512) : c < 99 ? 1 + (size_t)(next_rand(&r) % (64 * KiB))
                                                                        : 1 + (size_t)(next_rand(&r) % (2 * MiB));
        keep[k] = malloc(sz);
        if (keep[k]) memset(keep[k], 1, sz < 64 ? sz : 64);
        atomic_fetch_add_explicit(&busy_ops, 1, memory_order_relaxed);
        if ((next_rand(&r) & 15) == 0) { /* publish a block: 40 bytes, all 0xab */
            unsigned char *b = malloc(40);
            if (b) memset(b, 0xab, 40);
            b = atomic_exchange(&published[next_rand(&r) % PUBLISHED], b);
            free(b);
        }
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
    return NULL;
}

/* In the child: take the published blocks (made by threads that do not exist here), check and free them. */
static int free_published(void) {
    int bad = 0;
    for (int i = 0; i < PUBLISHED; i++) {
        unsigned char *b = atomic_exchange(&published[i], NULL);
        if (!b) continue;
        for (int k = 0; k < 40; k++) bad += b[k] != 0xab;
        free(b);
    }
    return bad;
}

static void *child_thread(void *arg) {
    (void)arg;
    int bad = 0;
    for (int i = 0; i < 1000; i++) {
        char *p = malloc((size_t)(i % 700) + 1);
        if (!p) return (void *)1;
        p[0] = 1;
        free(p);
    }
    return (void *)(intptr_t)bad;
}

static int child_work(void) {
    alarm(10); /* a deadlock in the child ends with SIGALRM */
    int bad = free_published();
    enum { N = 2000 };
    static char *b[N];
    for (int i = 0; i < N; i++) {
        size_t sz = i % 100 == 0 ? 300 * KiB : (size_t)(i % 1000) + 1;
        b[i] = malloc(sz);
        if (!b[i]) {
            bad++;
            continue;
        }
        memset(b[i], (int)(i & 0xff), sz < 128 ? sz : 128);
    }
    pthread_t t;
    void *tr = (void *)1;
    if (pthread_create(&t, NULL, child_thread, NULL) == 0) pthread_join(t, &tr);
    if (tr != NULL) bad++;
    for (int i = 0; i < N; i++) {
        if (b[i] && (unsigned char)b[i][0] != (unsigned char)(i & 0xff)) bad++;
        b[i] = realloc(b[i], 50);
        free(b[i]);
    }
    void *z = calloc(1000, 1000);
    if (!z || ((char *)z)[999999] != 0) bad++;
    free(z);
    return bad;
}

/* The program's own fork handlers allocate too. */
static atomic_int atfork_bad;
static void *atfork_block;
static void atfork_prepare(void) {
    atfork_block = malloc(123);
    if (!atfork_block) atomic_fetch_add(&atfork_bad, 1);
}
static void atfork_parent(void) {
    free(atfork_block);
    void *p = malloc(4000);
    if (!p) atomic_fetch_add(&atfork_bad, 1);
    free(p);
}
static void atfork_child(void) {
    free(atfork_block);
    void *p = malloc(4000);
    if (!p) _exit(3);
    free(p);
}

static void test_fork(void) {
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    enum { BUSY = 4, FORKS = 20 };
    pthread_t t[BUSY];
    atomic_store(&stop_busy, 0);
    for (int i = 0; i < BUSY; i++) pthread_create(&t[i], NULL, busy_thread, (void *)(uintptr_t)(i + 1));
    alarm(120); /* the parent: a deadlock kills the whole test */
    int ok = 0, parent_ok = 1;
    for (int i = 0; i < FORKS; i++) {
        /* let the busy threads get going again between forks */
        unsigned long before = atomic_load(&busy_ops);
        while (atomic_load(&busy_ops) < before + 2000) sched_yield();
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) _exit(child_work() ? 1 : 0);
        /* the parent allocates at the same time as its child */
        for (int k = 0; k < 1000; k++) {
            char *p = malloc((size_t)(k % 500) + 1);
            if (!p) parent_ok = 0;
            else p[0] = 0;
            free(p);
        }
        int st = 0;
        if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++;
        else fprintf(stderr, "malloc_process: fork %d: child status 0x%x (signal %d)\n", i, st,
                     WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
    atomic_store(&stop_busy, 1);
    for (int i = 0; i < BUSY; i++) pthread_join(t[i], NULL);
    int published_bad = free_published();
    alarm(0);
    CHECK("fork-published-blocks-intact-in-parent", published_bad == 0);
    printf("malloc_process: fork: %d of %d children allocated and exited 0 (%lu busy-thread ops meanwhile)\n", ok,
           (int)FORKS, (unsigned long)atomic_load(&busy_ops));
    CHECK("fork-children-ok", ok == FORKS);
    CHECK("fork-parent-allocates", parent_ok);
    CHECK("fork-handlers-allocate", atomic_load(&atfork_bad) == 0);
    void *p = malloc(100);
    CHECK("fork-parent-after", p != NULL);
    free(p);
}

/* ---- 3. A dead owner's blocks ---- */
enum { HOG_BLOCKS = 120000 };
static void *hog_blocks[HOG_BLOCKS];
static size_t hog_n;

typedef struct hog {
    size_t lo, span, bytes;
} hog_t;

static void *hog_thread(void *arg) { /* allocates ~48 MiB in sizes lo .. lo+span, then exits */
    hog_t *h = arg;
    h->bytes = 0;
    for (hog_n = 0; hog_n < HOG_BLOCKS && h->bytes < 48 * MiB; hog_n++) {
        size_t sz = h->lo + hog_n * 7919 % h->span;
        hog_blocks[hog_n] = malloc(sz);
        if (hog_blocks[hog_n]) {
            memset(hog_blocks[hog_n], 0x11, sz);
            h->bytes += sz;
        }
    }
    return NULL;
}

static void test_dead_owner(void) {
    rallocs_stats_t s0, s1, s2, s3, s4;
    rallocs_trim();
    rallocs_stats_get(&s0);
    hog_t h1 = {16, 1008, 0}, h2 = {1040, 3000, 0}; /* the second generation uses other size classes */
    pthread_t t;
    pthread_create(&t, NULL, hog_thread, &h1);
    pthread_join(t, NULL);
    for (size_t i = 0; i < hog_n; i++) free(hog_blocks[i]); /* the owner is gone */
    rallocs_stats_get(&s1);
    int r = rallocs_trim();
    rallocs_stats_get(&s2);
    /* as much again from a new thread, freed by main again: the first generation's memory is reused */
    pthread_create(&t, NULL, hog_thread, &h2);
    pthread_join(t, NULL);
    rallocs_stats_get(&s3);
    for (size_t i = 0; i < hog_n; i++) free(hog_blocks[i]);
    rallocs_trim();
    rallocs_stats_get(&s4);
    printf("malloc_process: dead owner: %.1f MiB allocated by a thread that exited, freed by main: committed "
           "%.1f -> %.1f MiB, trim returned %d -> %.1f MiB; second generation (%.1f MiB, other classes) live: "
           "committed %.1f MiB, after trim %.1f MiB\n",
           h1.bytes / (double)MiB, s0.committed_bytes / (double)MiB, s1.committed_bytes / (double)MiB, r,
           s2.committed_bytes / (double)MiB, h2.bytes / (double)MiB, s3.committed_bytes / (double)MiB,
           s4.committed_bytes / (double)MiB);
    CHECK("dead-owner-live-back", s1.live_bytes <= s0.live_bytes + 64 * KiB);
    CHECK("dead-owner-trim-returns-1", r == 1);
    CHECK("dead-owner-trim-releases", s2.committed_bytes <= s0.committed_bytes + 8 * MiB);
    CHECK("dead-owner-memory-reused", s3.committed_bytes <= s1.committed_bytes + 16 * MiB);
    CHECK("dead-owner-second-trim-releases", s4.committed_bytes <= s0.committed_bytes + 8 * MiB);
}

/* ---- 4. Out of memory ---- */
static size_t vm_size(void) {
    return (size_t)statm_pages(0) * (size_t)sysconf(_SC_PAGESIZE);
}

#define OOM_CHECK(name, expr)                                                                      \
    do {                                                                                           \
        if (!(expr)) {                                                                             \
            fprintf(stderr, "malloc_process: oom child: %s failed: %s\n", name, #expr);            \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

static volatile size_t vbig = 512 * MiB;

static int oom_child(void) {
    alarm(60);
    int fails = 0;
    size_t vm = vm_size();
    struct rlimit rl = {vm + 256 * MiB, vm + 256 * MiB};
    if (vm == 0 || setrlimit(RLIMIT_AS, &rl) != 0) {
        fprintf(stderr, "malloc_process: oom child: setrlimit failed\n");
        return 1;
    }
    enum { MAXB = 4096 };
    static char *big[MAXB];
    size_t nbig = 0;
    errno = 0;
    while (nbig < MAXB) {
        char *p = malloc(MiB);
        if (!p) break;
        p[0] = p[MiB - 1] = 1;
        big[nbig++] = p;
    }
    OOM_CHECK("1MiB-blocks-eventually-fail", nbig < MAXB);
    OOM_CHECK("1MiB-failure-is-ENOMEM", errno == ENOMEM);
    OOM_CHECK("some-1MiB-blocks-succeeded", nbig >= 16);
    /* small blocks until the heap is exhausted too */
    static char *small[1 << 22];
    size_t nsmall = 0;
    errno = 0;
    while (nsmall < (1u << 22)) {
        char *p = malloc(64);
        if (!p) break;
        p[0] = 1;
        small[nsmall++] = p;
    }
    OOM_CHECK("small-blocks-eventually-fail", nsmall < (1u << 22));
    OOM_CHECK("small-failure-is-ENOMEM", errno == ENOMEM);
    errno = 0;
    OOM_CHECK("calloc-oom", calloc(1, vbig) == NULL && errno == ENOMEM);
    errno = 0;
    OOM_CHECK("aligned_alloc-oom", aligned_alloc(MiB, vbig) == NULL && errno == ENOMEM);
    errno = 0;
    OOM_CHECK("memalign-oom", memalign(64 * MiB, vbig / 8) == NULL && errno == ENOMEM);
    void *pm = (void *)0x10;
    errno = 4242;
    OOM_CHECK("posix_memalign-oom", posix_memalign(&pm, 4096, vbig) == ENOMEM && pm == (void *)0x10 && errno == 4242);
    if (nbig > 0) {
        memset(big[0], 0x3c, MiB);
        errno = 0;
        void *q = realloc(big[0], vbig);
        OOM_CHECK("realloc-oom", q == NULL && errno == ENOMEM);
        int intact = 1;
        for (size_t i = 0; i < MiB; i++) intact &= big[0][i] == 0x3c;
        OOM_CHECK("realloc-oom-block-intact", intact);
    }
    /* give it all back: allocation works again */
    for (size_t i = 0; i < nsmall; i++) free(small[i]);
    for (size_t i = 0; i < nbig; i++) free(big[i]);
    char *a = malloc(100), *b = malloc(8 * MiB);
    OOM_CHECK("malloc-after-oom", a != NULL && b != NULL);
    if (b) memset(b, 1, 8 * MiB);
    free(a);
    free(b);
    fprintf(stderr, "malloc_process: oom child: %zu x 1 MiB and %zu x 64 B before ENOMEM\n", nbig, nsmall);
    return fails;
}

static void test_oom(void) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) _exit(oom_child() ? 1 : 0);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fprintf(stderr, "malloc_process: oom child status 0x%x (signal %d)\n", st, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    CHECK("oom-child-no-crash", WIFEXITED(st));
    CHECK("oom-child-checks-passed", WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void) {
    test_churn();
    test_crowd();
    test_exit_destructors();
    test_dead_owner();
    test_fork();
    test_oom();
    return check_summary();
}
