# myvm: containers in KVM microVMs. `make demo` and `make test` do all set-up on a fresh Debian 12.
SHELL := /bin/bash
.DEFAULT_GOAL := build

export MYVM_CACHE ?= /var/cache/myvm
CARGO ?= cargo
PREFIX ?= /usr/local
# Paths of the guest image and the helper daemons, for tests, the demo and the benchmark.
ENV := set -a; . build/image.env; . build/tools.env; MYVM_VMM=$(CURDIR)/target/release/myvm-vmm; set +a;

.PHONY: build deps image l1 test demo bench lint fmt install clean fuzz

## deps: Debian packages + cargo-installed vhost-user daemons (cached machine-wide)
deps: build/tools.env
build/tools.env: scripts/deps.sh
	@mkdir -p build
	scripts/deps.sh --env > $@.tmp && mv $@.tmp $@

## image: guest kernel (cached by inputs) + static agent + initramfs
image: deps
	guest-image/build-image.sh

## build: host binaries (myvm, containerd-shim-myvm-v2, myvm-vmm)
build: deps
	$(CARGO) build --release --locked --workspace --exclude myvm-agent

## l1: the L1 test VM of the nested-KVM tier (kernel with KVM and SVM cached; root from this tree)
l1: image build
	l1-image/build-l1.sh

## test: unit tests, then end-to-end tests with real microVMs, containerd and daemons, and the
## L1 tier (myvm on KVM inside a VM with emulated AMD SVM)
test: image build l1
	$(CARGO) test --release --locked -p myvm-agent -- --include-ignored
	@scripts/leftovers.sh snapshot build/leftovers.before
	$(ENV) $(CARGO) test --release --locked --workspace --exclude myvm-agent --no-fail-fast -- --include-ignored --test-threads=2; \
	  rc=$$?; scripts/leftovers.sh check build/leftovers.before || rc=1; exit $$rc

## demo: a private containerd runs a container in a microVM
demo: image build
	@echo "== myvm check"; ./target/release/myvm check
	@echo; echo "== myvm boot: a throw-away microVM (its kernel is ours, not the host's $$(uname -r))"
	$(ENV) ./target/release/myvm boot --vcpus 2
	@echo; echo "== ctr run --runtime io.containerd.myvm.v2 (private containerd)"
	$(ENV) scripts/demo.sh

## bench: start latency and memory, myvm vs runc and builtin vs QEMU, side by side
bench: image build l1
	$(ENV) python3 scripts/bench.py

## install: binaries, guest image, default config
install: image build
	install -D -m 0755 target/release/myvm $(PREFIX)/bin/myvm
	install -D -m 0755 target/release/containerd-shim-myvm-v2 $(PREFIX)/bin/containerd-shim-myvm-v2
	install -D -m 0755 target/release/myvm-vmm $(PREFIX)/bin/myvm-vmm
	install -D -m 0644 build/vmlinux $(PREFIX)/share/myvm/vmlinux
	install -D -m 0644 build/initramfs.cpio $(PREFIX)/share/myvm/initramfs.cpio
	$(ENV) install -D -m 0755 "$$MYVM_VHOST_VSOCK" $(PREFIX)/libexec/myvm/vhost-device-vsock
	$(ENV) install -D -m 0755 "$$MYVM_VIRTIOFSD" $(PREFIX)/libexec/myvm/virtiofsd
	test -f /etc/myvm/config.toml || install -D -m 0644 docs/config.toml /etc/myvm/config.toml

## fuzz: libFuzzer targets (cargo-fuzz): regression inputs and seeds, then FUZZ_SECONDS (60) each
fuzz:
	scripts/fuzz.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf build
