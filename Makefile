# myvm: containers in KVM microVMs. `make demo` and `make test` do all set-up on a fresh Debian 12.
SHELL := /bin/bash
.DEFAULT_GOAL := build

export MYVM_CACHE ?= /var/cache/myvm
CARGO ?= cargo
# Paths of the guest image and the helper daemons, for tests and the demo.
ENV := set -a; . build/image.env; . build/tools.env; set +a;

.PHONY: build deps image test unit e2e demo bench lint fmt install clean

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

## test: unit tests, then end-to-end tests that boot real microVMs
test: image build
	$(ENV) $(CARGO) test --release --locked --workspace --exclude myvm-agent --no-fail-fast -- --test-threads=2
	$(CARGO) test --release --locked -p myvm-agent

## demo: boot a microVM and show what runs in it
demo: image build
	@echo "== myvm check"; ./target/release/myvm check
	@echo; echo "== myvm boot (a throw-away microVM; the guest runs our kernel, not the host's $$(uname -r))"
	$(ENV) ./target/release/myvm boot --vcpus 2

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf build
