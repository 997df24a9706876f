# FarMem: `make demo` runs the main job, `make test` runs the tests.
# Both install the Debian packages they need first (as root, or with sudo).

SWIFT        ?= swift
# python3-numpy, sqlite3, redis-server, redis-tools: the real programs the
# preload library is tested under (Tests/FarMemTests/PreloadTests.swift; the
# tests start their own redis-server, and Debian's package may start its
# service on 6379 too); bc and time: make preload-programs; patchelf: make
# install (and InstallTests) points the installed libraries at their own copy
# of the Swift runtime.
APT_PACKAGES := libibverbs-dev librdmacm-dev pkg-config python3-prometheus-client \
                python3-numpy sqlite3 redis-server redis-tools bc time patchelf
# The demo measures latency, so it runs an optimised build.
DEMO_ARGS    ?=

.PHONY: all deps build release lib install demo test test-rdma bench bench-guest server-load preload-programs fuzz fuzz-build clean

all: build

deps:
	@command -v $(SWIFT) >/dev/null 2>&1 || { \
	  echo "error: no Swift toolchain ('$(SWIFT)' not found). FarMem needs Swift 6 (swift.org/install); set SWIFT=/path/to/swift if it is installed elsewhere." >&2; exit 1; }
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product farmem
	$(SWIFT) build -c release --product farmemd

# libFarMemoryC.so and include/farmemory.h for C and C++ programs, and
# libfarmem-preload.so for programs that cannot be changed, in dist/.
lib: deps
	$(SWIFT) build -c release --product FarMemoryC
	$(SWIFT) build -c release --product farmem-preload
	mkdir -p dist/lib dist/include
	cp .build/release/libFarMemoryC.so .build/release/libfarmem-preload.so dist/lib/
	cp include/farmemory.h dist/include/

# Installs the C library, the preload library, farmemd and farmem under
# PREFIX, with the Swift runtime they need in PREFIX/lib/farmem, so they run
# on hosts without Swift; `pkg-config --cflags --libs farmemory` then works
# (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig unless PREFIX is a standard one).
PREFIX ?= /usr/local
install: lib release
	deploy/install/install-farmem $(PREFIX) .build/release

demo: release
	.build/release/farmem demo $(DEMO_ARGS)

# The tests start real farmemd processes and the failure probe, so every
# product is built before the test bundle runs. The RDMA suite runs first, in a
# Soft-RoCE QEMU guest (deploy/rdma-vm); where QEMU cannot run it prints
# "SKIP rdma: <reason>" and the host suite still runs.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) build --product FarMemoryC
	$(SWIFT) build --product farmem-preload
	deploy/rdma-vm/run-rdma-tests
	$(SWIFT) test --skip-build --disable-swift-testing
	SWIFT_BACKTRACE=enable=no .build/debug/farmem-fuzz protocol/vectors/*.bin
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20

# The fuzz target (Tests/Fuzz: frame decoding and request handling of a real
# ServerConnection), built with libFuzzer in its own build folder so the
# instrumented modules never mix with the normal build. `make fuzz` runs it
# for FUZZ_SECONDS, starting from protocol/vectors and keeping what it finds
# in .build-fuzz/corpus; `make test` runs it for 20 s.
FUZZ_SECONDS ?= 300
fuzz-build: deps
	$(SWIFT) build --product farmem-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING

fuzz: fuzz-build
	mkdir -p .build-fuzz/corpus
	cp protocol/vectors/*.bin .build-fuzz/corpus/
	SWIFT_BACKTRACE=enable=no .build-fuzz/debug/farmem-fuzz .build-fuzz/corpus -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	  -artifact_prefix=.build-fuzz/ > .build-fuzz/fuzz.log 2>&1; status=$$?; \
	  grep -E '^(Done |stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' .build-fuzz/fuzz.log; \
	  if [ $$status -ne 0 ]; then tail -60 .build-fuzz/fuzz.log; fi; exit $$status

# The RDMA suite alone; here a skip is a failure.
test-rdma: deps
	$(SWIFT) build --build-tests
	FARMEM_REQUIRE_RDMA=1 deploy/rdma-vm/run-rdma-tests

# Every workload and baseline (see README, Performance).
bench: release
	.build/release/farmem bench --all

# The sort against kernel swap on zram and on NBD (network swap), in the
# rdma-vm guest, whose kernel has the nbd module (README, Performance).
bench-guest: release
	@command -v nbd-server >/dev/null && command -v nbd-client >/dev/null || { \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nbd-server nbd-client >/dev/null; }
	deploy/rdma-vm/run-guest-bench

# What 1,000 connections cost farmemd and how fast it answers 1, 64 and 1,000
# (README, "Connections"); FARMEMDS="a b" compares builds in one run.
server-load: release
	deploy/load/connection-load $(FARMEMDS)

# python3 + numpy, sort, sqlite3 and redis-server under the preload library at
# sizes beyond the budget, against local memory and kernel swap (see README).
preload-programs: deps
	$(SWIFT) build -c release --product farmemd
	$(SWIFT) build -c release --product farmem-preload
	deploy/preload-programs/run .build/release

clean:
	rm -rf .build
