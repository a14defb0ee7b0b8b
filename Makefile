# polymq: the two commands of the README.
#   make serve   create .venv if missing, install polymq, run the broker with defaults
#   make test    create .venv, install test extras and the Debian/Java pieces, run the suite
# Both are idempotent: installs are skipped when nothing changed.
#   make install puts the `polymq` command on your PATH (a link in ~/.local/bin, as pipx does).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEB_PACKAGES := default-jdk-headless libactivemq-java kcat chromium chromium-driver postgresql nodejs
PYTEST_ARGS ?= -q
SERVE_ARGS ?=
BIN_DIR ?= $(HOME)/.local/bin

.PHONY: serve test install deb-deps node-deps lint clean

$(VPY):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "polymq needs Python >= 3.11" or 0)'
	$(PYTHON) -m venv $(VENV)

# Build requirements go into the venv once so later installs need no isolated build env.
$(VENV)/.build-deps: | $(VPY)
	$(VPY) -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' \
		2>/dev/null || $(VPY) -m pip install --quiet 'setuptools>=64' wheel
	touch $@

$(VENV)/.installed: setup.cfg pyproject.toml $(VENV)/.build-deps
	$(VPY) -m pip install --quiet --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(VENV)/.build-deps
	$(VPY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $@ $(VENV)/.installed

# Protocol plugins packaged as their own distributions, installed with polymq (editable),
# as a third party's plugin would be
$(VENV)/.installed-stomp: plugins/stomp/setup.cfg plugins/stomp/pyproject.toml $(VENV)/.installed
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e plugins/stomp
	touch $@

$(VENV)/.installed-rocketmq: plugins/rocketmq/setup.cfg $(VENV)/.build-deps | $(VENV)/.installed
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps -e plugins/rocketmq
	touch $@

# Node.js clients of the RocketMQ tests (ali-ons), from tests/rocketmq/package-lock.json
# (npm itself comes with deb-deps)
node-deps: deb-deps
	@[ -f tests/rocketmq/node_modules/ali-ons/package.json ] || \
		(cd tests/rocketmq && npm ci --no-audit --no-fund)

serve: $(VENV)/.installed $(VENV)/.installed-stomp $(VENV)/.installed-rocketmq
	@echo "polymq command: $(VENV)/bin/polymq (or 'make install' to put it on your PATH); Ctrl-C stops the broker"
	$(VENV)/bin/polymq serve $(SERVE_ARGS)

# A link, not a copy: the command keeps using this checkout's .venv.
install: $(VENV)/.installed
	mkdir -p $(BIN_DIR)
	ln -sf $(abspath $(VENV)/bin/polymq) $(BIN_DIR)/polymq
	@echo "installed $(BIN_DIR)/polymq -> $(abspath $(VENV)/bin/polymq)"
	@case ":$$PATH:" in *":$(BIN_DIR):"*) ;; \
	  *) echo "$(BIN_DIR) is not on your PATH: add  export PATH=\"$(BIN_DIR):\$$PATH\"  to your shell profile";; esac

deb-deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing \
		|| { $$sudo apt-get update && \
		     DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; }; \
	fi
	@# npm comes with some nodejs builds (NodeSource) and is its own Debian package otherwise
	@command -v npm >/dev/null 2>&1 || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends npm; }

test: $(VENV)/.installed-test $(VENV)/.installed-stomp $(VENV)/.installed-rocketmq deb-deps node-deps
	$(VPY) -m pytest $(PYTEST_ARGS) tests

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check core adapters plugins tests bench
	$(VENV)/bin/ruff format --check core adapters plugins tests bench

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
