/* check.h: the tiny test helper of the rallocs C tests.
 *
 *   CHECK("malloc-zero", p != NULL);   counts a pass, or prints file:line, the name and the expression
 *   return check_summary();            prints "<program>: N checks passed, M failed"; 0 if none failed
 *   statm_pages(1)                     the resident set in pages (0: the address-space size)
 *
 * Header-only; every test program includes it once. */
#ifndef RALLOCS_CHECK_H
#define RALLOCS_CHECK_H

#include <stdio.h>

static int check_passed;
static int check_failed;

#define CHECK(name, expr)                                                                          \
    do {                                                                                           \
        if (expr) {                                                                                \
            check_passed++;                                                                        \
        } else {                                                                                   \
            check_failed++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: %s\n", __FILE__, __LINE__, (name), #expr);    \
        }                                                                                          \
    } while (0)

static inline int check_summary_of(const char *program) {
    printf("%s: %d checks passed, %d failed\n", program, check_passed, check_failed);
    fflush(stdout);
    return check_failed == 0 && check_passed > 0 ? 0 : 1;
}

#define check_summary() check_summary_of(__FILE__)

/* Field `field` of /proc/self/statm (0: address-space size, 1: resident set), in pages; 0 when it
 * cannot be read. */
static inline unsigned long statm_pages(int field) {
    unsigned long v[2] = {0, 0};
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &v[0], &v[1]) != 2) v[0] = v[1] = 0;
        fclose(f);
    }
    return v[field];
}

#endif /* RALLOCS_CHECK_H */
