# torpor — top-level entry points.  `make demo` and `make test` work on a fresh
# Debian 12 machine as root (they install what they need via `make deps`).
SHELL := /bin/bash
export TORPOR_CACHE ?= /var/cache/torpor
export TORPOR_TOOLS ?= /opt/torpor-tools
CARGO ?= $(shell command -v cargo 2>/dev/null || echo /usr/bin/cargo)
PHASE := scripts/phase.sh
VM := vm-images/run-vm.sh
KDIR_FILE := target/kdir

.PHONY: fmt-check deps build kernel kmod vm-test vm-harness-test test demo demo-guest clean clippy host-test root-test torpord-test guest-test bench bench-activation bench-agility vm-bench bench-full install

deps:
	@scripts/deps.sh

# Cargo-only targets (host-test, clippy) run without root where cargo and clippy are present;
# elsewhere they first run `deps` (root) to install them.
CARGO_DEPS := $(if $(shell $(CARGO) clippy --version 2>/dev/null),,deps)

build: deps
	$(CARGO) build --workspace --all-targets

clippy: $(CARGO_DEPS)
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The format is code (rustfmt.toml); `cargo fmt --all` fixes what this refuses.
fmt-check:
	$(CARGO) fmt --all --check

# Rust-enabled Linux 6.12, cached in $(TORPOR_CACHE) keyed by a hash of its inputs.
kernel: deps
	@mkdir -p target
	@vm-images/build-kernel.sh > $(KDIR_FILE).tmp && tail -1 $(KDIR_FILE).tmp > $(KDIR_FILE) && rm $(KDIR_FILE).tmp
	@echo "kernel tree: $$(cat $(KDIR_FILE))"

kmod: kernel
	$(MAKE) -C kmod KDIR=$$(cat $(CURDIR)/$(KDIR_FILE))
	@modinfo kmod/torpor.ko | grep -E '^(name|vermagic|description)'

# Host-side binaries the guest runs in place (the guest's root is the host's /).
target/vm-bins.env: FORCE
	@mkdir -p target
	@CARGO=$(CARGO) scripts/vm-bins.sh > $@.tmp && mv $@.tmp $@
FORCE:

# In-guest module suite: load, GET_VERSION/ENOTTY/EFAULT/EPERM, 50 load/unload cycles,
# PREFETCH/DISCARD semantics, races, fuzz, procswap lifecycle on the module and stock
# backends (pure cgroup v2), unload. VM_SUITE=quick runs only the ABI part.
VM_SUITE ?= full
vm-test: kmod target/vm-bins.env
	$(CARGO) build -q -p guest-enlight --bin torpor-guest
	$(VM) --name kmod --timeout 1500 --swap-disk 2G -- env $$(cat target/vm-bins.env) TORPOR_VM_SUITE=$(VM_SUITE) TORPOR_VM_INJECT_FAIL=$(TORPOR_VM_INJECT_FAIL) kmod/tests/vm-suite.sh

# Long run of the module fuzzer in the guest (kmod-fuzz/): insmod, torpor-kmod-fuzz for DURATION
# (phases ranges, guard, guest-maps, concurrency, exits: hostile ioctls against live churning
# children; only documented errnos, 0 references held after each phase), rmmod, and the
# module's unload line must report 0 outstanding references. DURATION like 90s, 10m, 1h;
# FUZZ_SEED=N replays a run (the seed is printed at the start).
DURATION ?= 10m
FUZZ_SEED ?=
.PHONY: vm-fuzz
vm-fuzz: kmod target/vm-bins.env
	@expr=$$(echo '$(DURATION)' | sed -nE 's/^([0-9]+)s?$$/\1/p; s/^([0-9]+)m$$/\1*60/p; s/^([0-9]+)h$$/\1*3600/p'); \
	[ -n "$$expr" ] || { echo "vm-fuzz: DURATION must look like 90s, 10m or 1h (got '$(DURATION)')" >&2; exit 2; }; \
	secs=$$(($$expr)); \
	$(VM) --name fuzz --timeout $$((secs + secs / 5 + 600)) --swap-disk 1G -- env $$(cat target/vm-bins.env) \
	  TORPOR_FUZZ_DURATION=$(DURATION) TORPOR_FUZZ_SEED=$(FUZZ_SEED) kmod/tests/vm-fuzz.sh

# The harness must fail on a failed guest test, a timeout and a bad console line.
vm-harness-test: kmod target/vm-bins.env
	vm-images/tests/harness-selftest.sh

host-test: $(CARGO_DEPS)
	$(CARGO) test --workspace

# procswap + torpor CLI as root on the host (own swapfile, cgroups v1/v2/signals).
root-test: deps
	CARGO=$(CARGO) procswap/tests/run-root-tests.sh

# guest-enlight as root: portable maps from this host's kpageflags/pagemap, agent over a socket.
guest-test: deps
	CARGO=$(CARGO) guest-enlight/tests/run-root-tests.sh

# torpord as root: standby pool, Start/Stop cycles, kill -9 recovery, bad input.
torpord-test: deps
	CARGO=$(CARGO) local-controller/tests/run-root-tests.sh

# The fleet as root: real etcd and HAProxy on loopback, emulated hosts (torpord each), host
# agents, controllers (fleet/tests/run-fleet-tests.sh; docs/fleet.md).
.PHONY: fleet-test
fleet-test: deps
	CARGO=$(CARGO) fleet/tests/run-fleet-tests.sh

# The fleet in one command (fleet/demo.sh): etcd, HAProxy, two emulated hosts, two controllers;
# activation, a wrk flash crowd, overload -> activation on the standby host, drain and stop,
# leader failover. Temporary swapfile.
.PHONY: fleet-demo
fleet-demo: deps
	TORPOR_SWAPFILE=$${TORPOR_SWAPFILE:-/var/tmp/torpor-fleet-demo.swap} TORPOR_SWAP_MIB=512 \
	  CARGO=$(CARGO) procswap/tests/with-swap.sh fleet/demo.sh

# Benchmarks. `make bench`: the quick set (< 10 minutes): resume_touch_all at 64/256 MiB
# and every paper experiment in quick mode (size sweep, contribution, contiguity, repeated,
# CPU-load sweep and Tomcat cold start vs resume with a 64 MiB webapp). `make bench-full`:
# resume_touch_all at 64/256/1024 MiB, the full experiment set (size sweep to 2 GiB, Tomcat
# with 128/256 MiB webapps), the in-guest benchmark on all three disk models and their combined
# table (bench/results/disk-models/), and experiment 3's "free memory only" row in the guest
# (bench/results/free-memory/). Results go to bench/results/.
bench: deps
	TORPOR_BENCH_QUICK=1 CARGO=$(CARGO) bench/run-resume-bench.sh
	CARGO=$(CARGO) bench/run-experiments.sh --quick

# The near-warm activation benchmark (root): Tomcat 10 (default webapp and a 256 MiB webapp), redis-server
# with 1 GiB of keys, PostgreSQL 15 (shared_buffers 1 GB, 1 GB pgbench database), the bench child's
# touch-all and null request at 1 GiB, the VM e2e guest; each run by torpord with its default config,
# Started in every mode (warm = never purged, and every prefetch mode torpord accepts), interleaved,
# memory proven out before every timed Start. Installs tomcat10/redis-server/postgresql-15 with
# apt-get when missing. ACTIVATION_APPS=tomcat,redis,... (default all), ACTIVATION_TRIALS=N (default 5),
# ACTIVATION_QUICK=1 (2 trials). Results: bench/results/activation/ (index in its README.md).
bench-activation: deps
	ACTIVATION_APPS="$(ACTIVATION_APPS)" ACTIVATION_TRIALS="$(ACTIVATION_TRIALS)" ACTIVATION_QUICK="$(ACTIVATION_QUICK)" CARGO=$(CARGO) bench/run-activation.sh

# End-to-end agility (Fig. 11 of *Agile application placement in hosting platforms*): two emulated
# hosts with capped CPU shares, etcd, HAProxy, the controller; an httperf flash crowd; regular
# startup, suspend/resume (demand paging) and torpor back to back (bench/run-agility.sh, root,
# ~10 minutes). Results: bench/results/agility/. Env: AGILITY_* (see the script).
.PHONY: bench-agility
bench-agility: deps
	TORPOR_SWAPFILE=$${TORPOR_SWAPFILE:-/var/tmp/torpor-agility.swap} TORPOR_SWAP_MIB=1024 \
	  CARGO=$(CARGO) procswap/tests/with-swap.sh bench/run-agility.sh

bench-full: deps
	CARGO=$(CARGO) bench/run-resume-bench.sh
	CARGO=$(CARGO) bench/run-experiments.sh
	$(MAKE) --no-print-directory vm-bench VM_DISK=fast
	$(MAKE) --no-print-directory vm-bench VM_DISK=ssd
	$(MAKE) --no-print-directory vm-bench VM_DISK=hdd
	CARGO=$(CARGO) bench/run-experiments.sh disk-models
	CARGO=$(CARGO) scripts/vm-free-memory.sh

# In-guest benchmark of the module backend (256 MiB touch-all, 128 MiB on hdd, interleaved,
# throttled virtio swap disk: VM_DISK=ssd|hdd|fast): stock demand paging vs stock prefetch vs
# module prefetch. Honours CARGO_TARGET_DIR; results (md + json) in bench/results/vm/.
VM_DISK ?= ssd
vm-bench: kmod
	VM_DISK=$(VM_DISK) CARGO=$(CARGO) scripts/vm-bench-host.sh

install: deps
	CARGO=$(CARGO) local-controller/install.sh

test:
	@rm -f target/phases.txt
	@$(PHASE) deps $(MAKE) --no-print-directory deps
	@$(PHASE) kernel $(MAKE) --no-print-directory kernel
	@$(PHASE) kmod $(MAKE) --no-print-directory kmod
	@$(PHASE) fmt $(MAKE) --no-print-directory fmt-check
	@$(PHASE) cargo-test $(MAKE) --no-print-directory host-test
	@$(PHASE) clippy $(MAKE) --no-print-directory clippy
	@$(PHASE) root-test $(MAKE) --no-print-directory root-test
	@$(PHASE) torpord-test $(MAKE) --no-print-directory torpord-test
	@$(PHASE) guest-test $(MAKE) --no-print-directory guest-test
	@$(PHASE) fleet-test $(MAKE) --no-print-directory fleet-test
	@$(PHASE) vm-test $(MAKE) --no-print-directory vm-test
	@$(PHASE) vm-harness $(MAKE) --no-print-directory vm-harness-test
	@$(PHASE) vm-e2e env VM_E2E_OUT=$(CURDIR)/target/vm-resume $(MAKE) --no-print-directory vm-e2e
	@echo "=== per-phase timings"; cat target/phases.txt

# The whole story: a real Debian server, cold start vs torpor Start (host, stock
# backend), then the module in our guest kernel.
demo: deps
	scripts/demo-host.sh
	$(MAKE) --no-print-directory demo-guest

demo-guest: kmod target/vm-bins.env
	$(VM) --name demo --timeout 300 -- env $$(cat target/vm-bins.env) scripts/demo-guest.sh

clean:
	$(CARGO) clean
	-$(MAKE) -C kmod KDIR=$$(cat $(KDIR_FILE) 2>/dev/null) clean

# VM resume end to end (root, QEMU TCG, temporary swapfile): a guest with an HTTP app and the
# torpor-guest agent (virtio-serial); smoke (HTTP via hostfwd, agent, QMP), then torpord
# Stop/purge/Start interleaved none/full/priority, time to first response, swap-in bytes,
# /verify in the guest. Results: bench/results/vm-resume/. VM_E2E_TRIALS per mode (default 3, about 3 minutes).
VM_E2E_TRIALS ?= 3
VM_E2E_DRIVER ?= torpord
.PHONY: vm-e2e
vm-e2e: kernel
	CARGO=$(CARGO) vm-e2e/run.sh --trials $(VM_E2E_TRIALS) --driver $(VM_E2E_DRIVER)
