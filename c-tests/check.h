/* check.h: the tiny test helper of the rallocs C tests.
 *
 *   CHECK("malloc-zero", p != NULL);   counts a pass, or prints file:line, the name and the expression
 *   return check_summary();            prints "<program>: N checks passed, M failed"; 0 if none failed
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

#endif /* RALLOCS_CHECK_H */
