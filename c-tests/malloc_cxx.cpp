// c-tests: -std=c++17
/* malloc_cxx.cpp: C++ on rallocs. libstdc++'s operator new/delete call malloc/free (aligned new calls
 * aligned_alloc), so with the override they land in rallocs:
 *   - new/delete and new[]/delete[] are counted by rallocs_stats_get and their pointers have a rallocs
 *     usable size; sized delete works;
 *   - aligned new (C++17: over-aligned types and explicit std::align_val_t up to 1 MiB) is aligned;
 *   - a failed new throws std::bad_alloc, a failed nothrow new gives nullptr;
 *   - exceptions (their objects come from malloc) thrown and caught in many threads;
 *   - std containers built in 8 producer threads, handed through a queue to 4 consumer threads that check
 *     and destroy them (remote frees); shared_ptr across threads;
 *   - afterwards live bytes are back where they started. */
#include <rallocs.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>
#include <condition_variable>

#include "check.h"

namespace {

rallocs_stats_t stats() {
    rallocs_stats_t s;
    rallocs_stats_get(&s);
    return s;
}

bool aligned(const void *p, std::size_t a) { return (reinterpret_cast<std::uintptr_t>(p) & (a - 1)) == 0; }

struct alignas(256) Over {
    char c[300];
};

volatile std::size_t huge = SIZE_MAX / 2;

void test_new_delete() {
    const int N = 1000;
    static char *b[N];
    rallocs_stats_t s0 = stats();
    bool ok_usable = true, ok_align = true;
    for (int i = 0; i < N; i++) {
        b[i] = new char[i + 1];
        std::memset(b[i], i & 0xff, static_cast<std::size_t>(i) + 1);
        ok_usable = ok_usable && rallocs_malloc_usable_size(b[i]) >= static_cast<std::size_t>(i) + 1;
        ok_align = ok_align && aligned(b[i], 16);
    }
    rallocs_stats_t s1 = stats();
    CHECK("new[]-counted-by-rallocs", s1.mallocs - s0.mallocs >= static_cast<std::uint64_t>(N));
    CHECK("new[]-usable-size", ok_usable);
    CHECK("new[]-aligned", ok_align);
    bool ok_data = true;
    for (int i = 0; i < N; i++) {
        ok_data = ok_data && static_cast<unsigned char>(b[i][i]) == static_cast<unsigned char>(i & 0xff);
        delete[] b[i];
    }
    rallocs_stats_t s2 = stats();
    CHECK("new[]-data", ok_data);
    CHECK("delete[]-counted", s2.frees - s1.frees >= static_cast<std::uint64_t>(N));
    CHECK("delete[]-live-back", s2.live_bytes == s0.live_bytes);

    std::string *s = new std::string(1000, 'x');
    int *one = new int(42);
    CHECK("new-object", s->size() == 1000 && *one == 42);
    delete s;
    delete one;

    void *p = ::operator new(100);
    CHECK("operator-new", p != nullptr && rallocs_malloc_usable_size(p) >= 100);
    ::operator delete(p, static_cast<std::size_t>(100)); // sized delete

    bool threw = false;
    try {
        char *q = new char[huge];
        q[0] = 1;
        delete[] q;
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK("new-huge-throws-bad_alloc", threw);
    char *q = new (std::nothrow) char[huge];
    CHECK("nothrow-new-huge-nullptr", q == nullptr);
    delete[] q;
}

void test_aligned_new() {
    Over *o = new Over;
    CHECK("over-aligned-new", aligned(o, 256));
    std::memset(o->c, 1, sizeof o->c);
    delete o;
    Over *arr = new Over[7];
    bool ok = true;
    for (int i = 0; i < 7; i++) ok = ok && aligned(&arr[i], 256);
    CHECK("over-aligned-new[]", ok);
    delete[] arr;
    std::vector<Over> v(33);
    CHECK("over-aligned-vector", aligned(v.data(), 256));
    bool ok_all = true;
    for (std::size_t a = 16; a <= (1u << 20); a *= 2) {
        void *p = ::operator new(a + 8, std::align_val_t(a));
        ok_all = ok_all && p && aligned(p, a) && rallocs_malloc_usable_size(p) >= a + 8;
        std::memset(p, 2, a + 8);
        ::operator delete(p, std::align_val_t(a));
        void *r = ::operator new[](3, std::align_val_t(a), std::nothrow);
        ok_all = ok_all && r && aligned(r, a);
        ::operator delete[](r, std::align_val_t(a));
    }
    CHECK("align_val_t-16..1MiB", ok_all);
}

std::string make_str(int producer, int i) {
    return "producer " + std::to_string(producer) + " item " + std::to_string(i) + std::string(i % 200, 'q');
}

struct Parcel {
    int producer, seq;
    std::vector<std::string> strings;
    std::map<int, std::string> map;
    std::unordered_map<std::string, std::vector<int>> hash;
    std::shared_ptr<std::vector<long>> shared;
};

std::mutex mu;
std::condition_variable cv;
std::deque<std::unique_ptr<Parcel>> queue;
int producers_left;
std::atomic<int> errors{0}, checked{0}, exceptions{0};

void producer(int id, std::shared_ptr<std::vector<long>> shared) {
    for (int seq = 0; seq < 300; seq++) {
        std::unique_ptr<Parcel> p(new Parcel);
        p->producer = id;
        p->seq = seq;
        p->shared = shared;
        int n = 1 + (seq * 7 + id) % 60;
        for (int i = 0; i < n; i++) {
            p->strings.push_back(make_str(id, i));
            p->map[i * 3] = make_str(id, i);
            p->hash[make_str(id, i)].assign(static_cast<std::size_t>(i), i);
        }
        if (seq % 50 == 0) {
            try {
                throw std::runtime_error(std::string(500, 'e') + std::to_string(seq));
            } catch (const std::runtime_error &e) {
                if (std::strlen(e.what()) >= 500) exceptions++;
            }
        }
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [] { return queue.size() < 64; });
        queue.push_back(std::move(p));
        cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    producers_left--;
    cv.notify_all();
}

void consumer() {
    for (;;) {
        std::unique_ptr<Parcel> p;
        {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [] { return !queue.empty() || producers_left == 0; });
            if (queue.empty()) return;
            p = std::move(queue.front());
            queue.pop_front();
            cv.notify_all();
        }
        int n = 1 + (p->seq * 7 + p->producer) % 60;
        bool ok = static_cast<int>(p->strings.size()) == n && static_cast<int>(p->map.size()) == n &&
                  static_cast<int>(p->hash.size()) == n && p->shared && p->shared->size() == 1000;
        for (int i = 0; ok && i < n; i++) {
            std::string s = make_str(p->producer, i);
            ok = p->strings[static_cast<std::size_t>(i)] == s && p->map[i * 3] == s &&
                 p->hash[s].size() == static_cast<std::size_t>(i);
        }
        if (!ok) errors++;
        checked++;
        // p is destroyed here, in a thread other than the one that built it
    }
}

void test_threads() {
    auto shared = std::make_shared<std::vector<long>>(1000, 7L);
    producers_left = 8;
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; i++) threads.emplace_back(producer, i, shared);
    for (int i = 0; i < 4; i++) threads.emplace_back(consumer);
    for (auto &t : threads) t.join();
    CHECK("threads-all-parcels-checked", checked.load() == 8 * 300);
    CHECK("threads-parcels-intact", errors.load() == 0);
    CHECK("threads-exceptions-caught", exceptions.load() == 8 * 6);
    CHECK("shared-ptr-use-count", shared.use_count() == 1);
}

} // namespace

int main() {
    { // warm-up: iostream-free, but let libstdc++ and the thread machinery make their one-time allocations
        std::thread t([] { std::string s(100, 'w'); });
        t.join();
        try {
            throw std::runtime_error("warm-up");
        } catch (const std::exception &) {
        }
    }
    rallocs_stats_t s0 = stats();
    test_new_delete();
    test_aligned_new();
    test_threads();
    rallocs_stats_t s1 = stats();
    std::printf("malloc_cxx: mallocs %llu, frees %llu, remote frees %llu, live %zu -> %zu\n",
                static_cast<unsigned long long>(s1.mallocs - s0.mallocs),
                static_cast<unsigned long long>(s1.frees - s0.frees),
                static_cast<unsigned long long>(s1.remote_frees - s0.remote_frees), s0.live_bytes, s1.live_bytes);
    CHECK("remote-frees-from-consumers", s1.remote_frees - s0.remote_frees > 0);
    CHECK("live-bytes-back", s1.live_bytes <= s0.live_bytes + 64 * 1024 && s1.live_bytes + 1024 >= s0.live_bytes);
    return check_summary();
}
