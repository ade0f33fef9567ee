# rallocs: build, test and install the C library.
#
#   make              librallocs.so.$(VERSION) (+ symlinks), librallocs.a and rallocs.pc in build/,
#                     and a check that include/rallocs.h matches the sources
#   make test         everything: Rust unit tests, ABI check, library checks, C tests, install test,
#                     real programs under LD_PRELOAD, benchmark smoke run
#   make bench        the benchmark suite (release library + harness): every family against glibc,
#                     jemalloc, mimalloc, rpmalloc; report in target/bench-report/ (BENCH_ARGS=... to pass
#                     options, e.g. BENCH_ARGS="--workload larson --runs 5")
#   make install      PREFIX=/usr/local DESTDIR= (also LIBDIR, INCLUDEDIR, PKGCONFIGDIR)
#   make uninstall    the same variables
#   make header       regenerate include/rallocs.h after changing an extern "C" item
#   make bimp-preload build/librallocs-bimp.so: LD_PRELOAD=build/librallocs-bimp.so prog runs prog on bimp
#   make BIMP_ALIGN=32 BIMP_SINGLE_THREADED=1   bimp's build-time options (see README, "bimp")
#   make clean
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := all

CARGO ?= cargo
CC ?= cc
CXX ?= g++
# Extra cargo features for the library, e.g. CARGO_FEATURES=--no-default-features
CARGO_FEATURES ?=

# bimp's build-time options, set as the seed sets them: `make BIMP_ALIGN=32 BIMP_SINGLE_THREADED=1`.
# BIMP_ALIGN (a power of two >= 16) goes to build.rs through the environment; BIMP_SINGLE_THREADED=1
# turns on the cargo feature bimp-single-threaded; BIMP_SET_ERRNO is accepted and changes nothing
# (errno is always set on Linux).
ifneq ($(strip $(BIMP_ALIGN)),)
export BIMP_ALIGN
endif
ifneq ($(filter-out 0 no,$(strip $(BIMP_SINGLE_THREADED))),)
CARGO_FEATURES += --features bimp-single-threaded
endif

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=

BUILD := build
SO := librallocs.so.$(VERSION)

.PHONY: all lib header check-header test unit-test abi-test check-lib c-tests preload-test install-test install uninstall clean
.PHONY: bimp-preload bimp-preload-test bimp-variant-test
.PHONY: bench bench-build bench-smoke

all: lib check-header $(BUILD)/rallocs.pc bimp-preload

# cargo decides what is stale; the native libraries the archive needs are printed only when the library
# is actually linked, so an up-to-date build that lacks that list is rebuilt once.
lib:
	@mkdir -p $(BUILD)
	$(CARGO) rustc --release --lib -p rallocs $(CARGO_FEATURES) -- --print native-static-libs 2>&1 | tee $(BUILD)/cargo.log
	@if grep -q 'native-static-libs:' $(BUILD)/cargo.log; then \
	  sed -n 's/.*native-static-libs: //p' $(BUILD)/cargo.log | tail -n 1 > $(BUILD)/native-static-libs; \
	elif [ ! -s $(BUILD)/native-static-libs ]; then \
	  $(CARGO) clean --release -p rallocs; $(MAKE) --no-print-directory lib; fi
	@install -m 755 target/release/librallocs.so $(BUILD)/$(SO)
	@ln -sf $(SO) $(BUILD)/librallocs.so.$(MAJOR)
	@ln -sf librallocs.so.$(MAJOR) $(BUILD)/librallocs.so
	@install -m 644 target/release/librallocs.a $(BUILD)/librallocs.a

# The bimp preload library: the same crate with the malloc family served by bimp (feature bimp-preload,
# exclusive with override), in its own target directory. It honours BIMP_ALIGN but is always thread-safe:
# a process-wide malloc cannot promise that its program has one thread.
bimp-preload:
	@mkdir -p $(BUILD)
	CARGO_TARGET_DIR=$(CURDIR)/target/bimp-preload $(CARGO) rustc --release --lib -p rallocs \
	  --no-default-features --features bimp-preload
	@install -m 755 target/bimp-preload/release/librallocs.so $(BUILD)/librallocs-bimp.so

$(BUILD)/rallocs.pc: pkgconfig/rallocs.pc.in lib
	@sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|' -e "s|@NATIVE_STATIC_LIBS@|$$(cat $(BUILD)/native-static-libs)|" $< > $@

# build.rs writes a fresh header to target/include/rallocs.h on every build.
check-header: lib
	@if ! cmp -s target/include/rallocs.h include/rallocs.h; then \
	  diff -u include/rallocs.h target/include/rallocs.h || true; \
	  echo "include/rallocs.h differs from a fresh generation: run 'make header' and commit it" >&2; exit 1; fi
	@echo "check-header: include/rallocs.h matches a fresh cbindgen generation"

header: lib
	cp target/include/rallocs.h include/rallocs.h

test: all unit-test abi-test check-lib install-test preload-test bimp-variant-test bimp-preload-test bench-smoke c-tests

# Unit and model tests. `override` is off so the test harness itself keeps glibc's malloc.
# (the benchmark harness's own tests run in bench-smoke, with the profile its build already uses)
unit-test:
	$(CARGO) test --workspace --exclude rallocs-bench --no-default-features

abi-test:
	$(CARGO) run -q -p rallocs-systest

check-lib: lib
	scripts/check-lib.sh $(BUILD) $(VERSION)

install-test: all
	scripts/install-test.sh

c-tests: all
	CC="$(CC)" CXX="$(CXX)" c-tests/run.sh $(BUILD)

# The benchmark harness: release settings without cross-crate LTO (see Cargo.toml), in its own target dir.
BENCH_PROFILE := release-bench
BENCH := target/$(BENCH_PROFILE)/rallocs-bench
BENCH_ARGS ?=

bench-build:
	$(CARGO) build --profile $(BENCH_PROFILE) -p rallocs-bench

bench: all bench-build
	$(BENCH) $(BENCH_ARGS)

# Every allocator through every workload at tiny sizes, once: the harness must never rot.
bench-smoke: bench-build
	$(CARGO) test -q --profile $(BENCH_PROFILE) -p rallocs-bench
	$(BENCH) --smoke --out target/bench-report-smoke > target/bench-report-smoke.log
	@tail -n 1 target/bench-report-smoke.log >/dev/null; echo "bench-smoke: ok ($$(grep -c '^| ' target/bench-report-smoke.log) table rows)"

# A non-default bimp build (BIMP_ALIGN=32, single-threaded) in target/bimp-variant, with c-tests/bimp.c.
bimp-variant-test: lib
	CC="$(CC)" CARGO="$(CARGO)" scripts/bimp-variant-test.sh $(BUILD)

# ls, git, python3 and a C program under LD_PRELOAD=build/librallocs-bimp.so behave as without it.
bimp-preload-test: bimp-preload
	CC="$(CC)" scripts/bimp-preload-test.sh $(BUILD)

# python3, git, gcc and sort under LD_PRELOAD=librallocs.so give the same output as without it.
preload-test: all
	scripts/preload-test.sh $(BUILD)

install: all
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(BUILD)/$(SO) $(DESTDIR)$(LIBDIR)/$(SO)
	ln -sf $(SO) $(DESTDIR)$(LIBDIR)/librallocs.so.$(MAJOR)
	ln -sf librallocs.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/librallocs.so
	install -m 644 $(BUILD)/librallocs.a $(DESTDIR)$(LIBDIR)/librallocs.a
	install -m 755 $(BUILD)/librallocs-bimp.so $(DESTDIR)$(LIBDIR)/librallocs-bimp.so
	install -m 644 include/rallocs.h $(DESTDIR)$(INCLUDEDIR)/rallocs.h
	install -m 644 include/rallocs.hpp $(DESTDIR)$(INCLUDEDIR)/rallocs.hpp
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|' -e "s|@NATIVE_STATIC_LIBS@|$$(cat $(BUILD)/native-static-libs)|" \
	  pkgconfig/rallocs.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/rallocs.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(SO) $(DESTDIR)$(LIBDIR)/librallocs.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/librallocs.so \
	  $(DESTDIR)$(LIBDIR)/librallocs.a $(DESTDIR)$(INCLUDEDIR)/rallocs.h \
	  $(DESTDIR)$(INCLUDEDIR)/rallocs.hpp $(DESTDIR)$(PKGCONFIGDIR)/rallocs.pc \
	  $(DESTDIR)$(LIBDIR)/librallocs-bimp.so

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
