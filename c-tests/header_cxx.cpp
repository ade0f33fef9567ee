// header_cxx.cpp: rallocs.h works from C++ (extern "C" linkage, no clash with the C library's
// declarations), included after the standard headers here; the runner also compiles it first.
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <rallocs.h>

extern "C" const char *rallocs_version(void);

int main() {
    int failed = 0;
    if (std::strcmp(rallocs_version(), RALLOCS_VERSION_STRING) != 0) {
        std::fprintf(stderr, "%s:%d: version differs from the header\n", __FILE__, __LINE__);
        failed++;
    }
    void *p = std::malloc(16);
    if (p == NULL) {
        std::fprintf(stderr, "%s:%d: malloc failed\n", __FILE__, __LINE__);
        failed++;
    }
    std::free(p);
    std::printf("header_cxx.cpp: %d checks passed, %d failed\n", 2 - failed, failed);
    return failed != 0;
}
