// rallocs.hpp: C++ wrappers for the region_* family of rallocs.
//
// Hand-written (rallocs.h is generated); header-only, C++11 or later.
//
//   rallocs::region r;                                        // owns a region_t; destroys it at scope end
//   std::vector<int, rallocs::region_allocator<int>> v{rallocs::region_allocator<int>(r)};
//
// rallocs::region_allocator<T> meets the standard Allocator requirements: allocate() throws
// std::bad_alloc when the region cannot allocate, deallocate() frees into the region (aborting on a pointer
// the region does not own), and two allocators compare equal exactly when they use the same region, so
// memory allocated through one can be freed through the other. Copy, move and swap of containers
// propagate the allocator. A region is used by one thread at a time: so are the containers on it.
#ifndef RALLOCS_HPP
#define RALLOCS_HPP

#include <rallocs.h>

#include <cstddef>
#include <limits>
#include <new>
#include <type_traits>

namespace rallocs {

/// An owning handle of a region_t: creates it, destroys it (running its cleanup callbacks) when it goes
/// out of scope. Movable, not copyable.
class region {
public:
    /// Creates a region; throws std::bad_alloc when region_create() fails.
    region() : r_(region_create()) {
        if (r_ == nullptr) throw std::bad_alloc();
    }
    /// Takes ownership of an existing region (may be nullptr).
    explicit region(region_t *r) noexcept : r_(r) {}
    ~region() { region_destroy(r_); }

    region(const region &) = delete;
    region &operator=(const region &) = delete;
    region(region &&o) noexcept : r_(o.r_) { o.r_ = nullptr; }
    region &operator=(region &&o) noexcept {
        if (this != &o) {
            region_destroy(r_);
            r_ = o.r_;
            o.r_ = nullptr;
        }
        return *this;
    }

    /// The underlying region_t (still owned by this object).
    region_t *get() const noexcept { return r_; }
    /// Gives up ownership and returns the region_t.
    region_t *release() noexcept {
        region_t *r = r_;
        r_ = nullptr;
        return r;
    }

    /// region_alloc(); nullptr when out of memory.
    void *alloc(std::size_t n) noexcept { return region_alloc(r_, n); }
    /// region_alloc_aligned(); nullptr when out of memory or for a bad alignment.
    void *alloc(std::size_t n, std::size_t align) noexcept { return region_alloc_aligned(r_, n, align); }
    /// region_free().
    void free(void *p) noexcept { region_free(r_, p); }
    /// region_reset(): frees every block at once (objects' destructors do not run).
    void reset() noexcept { region_reset(r_); }
    /// region_on_destroy(): 0 on success, else an error number.
    int on_destroy(void (*fn)(void *), void *arg) noexcept { return region_on_destroy(r_, fn, arg); }
    /// region_contains().
    bool contains(const void *p) const noexcept { return region_contains(r_, p); }
    /// region_stats_get().
    region_stats_t stats() const noexcept {
        region_stats_t s;
        region_stats_get(r_, &s);
        return s;
    }

private:
    region_t *r_;
};

/// A standard allocator that allocates from a region. Equal when it shares the region.
template <class T>
class region_allocator {
public:
    typedef T value_type;
    typedef T *pointer;
    typedef const T *const_pointer;
    typedef std::size_t size_type;
    typedef std::ptrdiff_t difference_type;
    typedef std::true_type propagate_on_container_copy_assignment;
    typedef std::true_type propagate_on_container_move_assignment;
    typedef std::true_type propagate_on_container_swap;
    typedef std::false_type is_always_equal;
    template <class U>
    struct rebind {
        typedef region_allocator<U> other;
    };

    /// An allocator for region `r`, which must outlive every container using it.
    explicit region_allocator(region &r) noexcept : r_(r.get()) {}
    /// An allocator for the region_t `r`.
    explicit region_allocator(region_t *r) noexcept : r_(r) {}
    template <class U>
    region_allocator(const region_allocator<U> &o) noexcept : r_(o.handle()) {}

    /// Memory for `n` objects of type T, suitably aligned; throws std::bad_array_new_length when the size
    /// overflows and std::bad_alloc when the region cannot allocate.
    T *allocate(std::size_t n) {
        if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
        void *p = alignof(T) > RALLOCS_MIN_ALIGN ? region_alloc_aligned(r_, n * sizeof(T), alignof(T))
                                                 : region_alloc(r_, n * sizeof(T));
        if (p == nullptr) throw std::bad_alloc();
        return static_cast<T *>(p);
    }
    /// Frees memory from allocate() (from this allocator or one equal to it).
    void deallocate(T *p, std::size_t) noexcept { region_free(r_, p); }

    std::size_t max_size() const noexcept { return std::numeric_limits<std::size_t>::max() / sizeof(T); }

    /// The region this allocator uses.
    region_t *handle() const noexcept { return r_; }

private:
    region_t *r_;
};

template <class T, class U>
bool operator==(const region_allocator<T> &a, const region_allocator<U> &b) noexcept {
    return a.handle() == b.handle();
}
template <class T, class U>
bool operator!=(const region_allocator<T> &a, const region_allocator<U> &b) noexcept {
    return a.handle() != b.handle();
}

}  // namespace rallocs

#endif  // RALLOCS_HPP
