// region_cxx.cpp: rallocs.hpp — the RAII region and region_allocator<T> with std::vector, std::deque,
// std::list, std::map and std::queue (the seed's test: a queue whose own nodes live in the region).
#include <rallocs.hpp>

#include <cstdio>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <new>
#include <queue>
#include <string>
#include <utility>
#include <vector>

static int passed, failed;
#define CHECK(name, expr)                                                                          \
    do {                                                                                           \
        if (expr) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s: %s\n", __FILE__, __LINE__, name, #expr); \
        }                                                                                          \
    } while (0)

template <class T>
using ra = rallocs::region_allocator<T>;

struct alignas(64) wide {
    char bytes[64];
};

static int destroyed;
static void on_destroy(void *arg) { destroyed += *static_cast<int *>(arg); }

int main() {
    {
      rallocs::region r;
      CHECK("region-created", r.get() != nullptr);
      {

        std::vector<int, ra<int>> v{ra<int>(r)};
        for (int i = 0; i < 100000; i++) v.push_back(i);
        long sum = 0;
        for (int x : v) sum += x;
        CHECK("vector-contents", sum == 4999950000L);
        CHECK("vector-in-region", r.contains(v.data()) && r.contains(&v.back()));

        std::deque<int, ra<int>> d{ra<int>(r)};
        for (int i = 0; i < 50000; i++) {
            d.push_back(i);
            if (i % 3 == 0) d.pop_front();
        }
        CHECK("deque-contents", d.size() == 50000 - 16667 && d.back() == 49999 && r.contains(&d.front()));

        std::list<std::pair<int, double>, ra<std::pair<int, double>>> l{ra<std::pair<int, double>>(r)};
        for (int i = 0; i < 10000; i++) l.emplace_back(i, i * 0.5);
        l.remove_if([](const std::pair<int, double> &p) { return p.first % 2 == 0; });
        CHECK("list-contents", l.size() == 5000 && l.front().first == 1 && r.contains(&l.front()));

        typedef std::map<int, int, std::less<int>, ra<std::pair<const int, int>>> map_t;
        map_t m{std::less<int>(), ra<std::pair<const int, int>>(r)};
        for (int i = 0; i < 20000; i++) m[(i * 7919) % 20000] = i;
        for (int i = 0; i < 20000; i += 2) m.erase(i);
        CHECK("map-contents", m.size() == 10000 && m.begin()->first == 1 && r.contains(&*m.begin()));

        // The seed's experiment: a FIFO queue of objects, both the queue and the objects in the region.
        std::queue<char *, std::deque<char *, ra<char *>>> q{std::deque<char *, ra<char *>>(ra<char *>(r))};
        bool ok = true;
        for (int i = 0; i < 200000; i++) {
            char *p = static_cast<char *>(r.alloc(16 + i % 241));
            if (!p) { ok = false; break; }
            std::memset(p, i & 0xff, 16);
            q.push(p);
            if (q.size() > 1000) {
                char *o = q.front();
                q.pop();
                ok = ok && static_cast<unsigned char>(o[0]) == static_cast<unsigned char>((i - 1000) & 0xff);
                r.free(o);
            }
        }
        CHECK("queue-fifo", ok && q.size() == 1000);
        while (!q.empty()) {
            r.free(q.front());
            q.pop();
        }

        // Allocators: rebinding, equality, over-aligned types, failure as an exception.
        ra<int> a(r);
        ra<double> b(a);
        rallocs::region other;
        CHECK("equal-same-region", a == b && !(a != b));
        CHECK("unequal-other-region", a != ra<int>(other));
        std::vector<wide, ra<wide>> w{ra<wide>(r)};
        w.resize(10);
        CHECK("over-aligned", reinterpret_cast<std::uintptr_t>(w.data()) % 64 == 0);
        bool threw = false;
        try {
            a.allocate(std::size_t(1) << 61);
        } catch (const std::bad_alloc &) {
            threw = true;
        }
        CHECK("allocate-throws-bad-alloc", threw);

        // Moving a container keeps the memory in its region.
        std::vector<int, ra<int>> v2(std::move(v));
        CHECK("moved-vector", v2.size() == 100000 && v2.get_allocator() == ra<int>(r));
        region_stats_t st = r.stats();
        CHECK("stats-live", st.live_objects > 1000 && st.pages_in_use > 1);
      }  // the containers are gone: every block they held was freed into the region
      region_stats_t st = r.stats();
      CHECK("containers-freed-everything", st.live_objects == 0 && st.live_bytes == 0);
      static int one = 1;
      r.on_destroy(on_destroy, &one);
      // Moving the region keeps it alive; the moved-from handle is empty.
      rallocs::region moved(std::move(r));
      CHECK("region-moved", moved.get() != nullptr && r.get() == nullptr);
      CHECK("not-yet-destroyed", destroyed == 0);
    }
    CHECK("callback-ran-at-destroy", destroyed == 1);
    std::printf("region_cxx.cpp: %d checks passed, %d failed\n", passed, failed);
    return failed != 0 || passed == 0;
}
