/* foundation.c: the library identifies itself, the header's macros agree with it, and every function
 * the header declares has the prototype this file expects (a conflicting redeclaration fails to compile:
 * that is the check for functions, which the ctest2 ABI check cannot see). */
#include <rallocs.h>
#include <rallocs.h> /* the include guard makes a second inclusion harmless */

#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Prototype checks: each must match the header's declaration exactly. */
const char *rallocs_version(void);

_Static_assert(RALLOCS_MIN_ALIGN == alignof(max_align_t), "RALLOCS_MIN_ALIGN is the alignment of max_align_t");
_Static_assert(RALLOCS_VERSION_MAJOR >= 0 && RALLOCS_VERSION_MINOR >= 0 && RALLOCS_VERSION_PATCH >= 0,
               "version macros are numbers");

int main(void) {
    const char *v = rallocs_version();
    CHECK("version-not-null", v != NULL);
    CHECK("version-matches-header", v != NULL && strcmp(v, RALLOCS_VERSION_STRING) == 0);
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", RALLOCS_VERSION_MAJOR, RALLOCS_VERSION_MINOR, RALLOCS_VERSION_PATCH);
    CHECK("version-macros-match-string", strcmp(expect, RALLOCS_VERSION_STRING) == 0);
    CHECK("version-is-static", rallocs_version() == v);
    return check_summary();
}
