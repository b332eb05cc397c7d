# Iron Cage: build, install and check.
#
#   make build                      release build of the workspace (cargo --locked)
#   sudo make install               binaries, systemd units, sysusers.d entry,
#                                   example config; PREFIX defaults to /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/stage    staged install (packaging)
#   make install BIN_DIR=target/debug              install other binaries
#   sudo make uninstall             remove what install put (never config/state)
#   make check-units                systemd-analyze verify the installed units
#   make test / make demo           scripts/test.sh / scripts/demo.sh
#
# Where things go (PREFIX=/usr/local unless given):
#   $(PREFIX)/bin/{ironcaged,ironctl}
#   systemd units:  PREFIX=/usr: systemd's own unit directory, as pkg-config
#                   reports it (/lib/systemd/system on Debian 12; /usr/lib/... on
#                   distributions with merged /usr packaging);
#                   other PREFIX: $(PREFIX)/lib/systemd/system. systemd searches
#                   /usr/local/lib/systemd/system, so the default install works
#                   as is; for any other PREFIX (e.g. /opt/ironcage) systemd will
#                   not see the units: `systemctl link` them, or pass
#                   UNITDIR=/etc/systemd/system.
#   sysusers.d:     the same rule (/usr/lib/sysusers.d, /usr/local/lib/sysusers.d).
#   $(PREFIX)/lib/ironcage/python/iron_cage/: the iron_cage Python package
#                   (the extension module from $(BIN_DIR)/libiron_cage.so as
#                   _native.abi3.so, plus its .py/.pyi files). ironcaged looks
#                   there by default (<its bin dir>/../lib/ironcage/python); with
#                   another BINDIR/PYLIBDIR, set [daemon] python_path.
#   /etc/ironcage/  always /etc, whatever PREFIX (the daemon's default config path
#                   is /etc/ironcage/ironcaged.toml): ironcaged.toml.example, and
#                   ironcaged.env (0600) only if absent. ironcaged.toml itself is
#                   never written: copy the example and edit it.
# The units name /usr/bin/ironcaged and /usr/bin/ironctl; install rewrites those
# paths to $(BINDIR) so ExecStart= always points at the installed binaries.

CARGO      ?= cargo
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
DOCDIR     ?= $(PREFIX)/share/doc/ironcage
CONFDIR    := /etc/ironcage
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
# Binaries that install copies; point it at target/debug to skip a release build.
BIN_DIR    ?= $(TARGET_DIR)/release
PYLIBDIR   ?= $(PREFIX)/lib/ironcage/python
CAGE_LIB   := $(BIN_DIR)/libiron_cage.so
CAGE_FILES := __init__.py __init__.pyi _run.py py.typed

ifeq ($(PREFIX),/usr)
ifndef UNITDIR
UNITDIR     := $(or $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null),/lib/systemd/system)
endif
ifndef SYSUSERSDIR
SYSUSERSDIR := $(or $(shell pkg-config --variable=sysusersdir systemd 2>/dev/null),/usr/lib/sysusers.d)
endif
else
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
endif

BINARIES := ironcaged ironctl
UNITS    := ironcaged.service ironcage-rotate-secrets.service ironcage-rotate-secrets.timer

.PHONY: all build install uninstall check-units test demo print-%

all: build

build:
	$(CARGO) build --release --workspace --locked

install:
	@for b in $(BINARIES); do \
	    test -x "$(BIN_DIR)/$$b" || { echo "make install: $(BIN_DIR)/$$b not found: run 'make build' first, or set BIN_DIR" >&2; exit 1; }; \
	done
	@test -f "$(CAGE_LIB)" || { echo "make install: $(CAGE_LIB) (the iron_cage Python module) not found: run 'make build' first, or set BIN_DIR" >&2; exit 1; }
	install -d -m 0755 "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" "$(DESTDIR)$(DOCDIR)"
	for b in $(BINARIES); do install -m 0755 "$(BIN_DIR)/$$b" "$(DESTDIR)$(BINDIR)/$$b"; done
	install -d -m 0755 "$(DESTDIR)$(PYLIBDIR)/iron_cage"
	for f in $(CAGE_FILES); do install -m 0644 "cage/python/iron_cage/$$f" "$(DESTDIR)$(PYLIBDIR)/iron_cage/$$f"; done
	install -m 0755 "$(CAGE_LIB)" "$(DESTDIR)$(PYLIBDIR)/iron_cage/_native.abi3.so"
	for u in $(UNITS); do \
	    sed -e 's|/usr/bin/ironcaged|$(BINDIR)/ironcaged|g' -e 's|/usr/bin/ironctl|$(BINDIR)/ironctl|g' \
	        "systemd/$$u" > "$(DESTDIR)$(UNITDIR)/$$u.tmp" && \
	    chmod 0644 "$(DESTDIR)$(UNITDIR)/$$u.tmp" && \
	    mv -f "$(DESTDIR)$(UNITDIR)/$$u.tmp" "$(DESTDIR)$(UNITDIR)/$$u" || exit 1; \
	done
	install -m 0644 systemd/ironcage.sysusers.conf "$(DESTDIR)$(SYSUSERSDIR)/ironcage.conf"
	install -m 0644 packaging/rotate-secrets.example "$(DESTDIR)$(DOCDIR)/rotate-secrets.example"
	install -d -m 0755 "$(DESTDIR)$(CONFDIR)"
	install -m 0644 packaging/ironcaged.example.toml "$(DESTDIR)$(CONFDIR)/ironcaged.toml.example"
	@if [ ! -e "$(DESTDIR)$(CONFDIR)/ironcaged.env" ]; then \
	    echo "install -m 0600 packaging/ironcaged.env.example $(DESTDIR)$(CONFDIR)/ironcaged.env"; \
	    install -m 0600 packaging/ironcaged.env.example "$(DESTDIR)$(CONFDIR)/ironcaged.env"; \
	fi
	@case "$(UNITDIR)" in \
	    /etc/systemd/system|/usr/local/lib/systemd/system|/usr/lib/systemd/system|/lib/systemd/system) ;; \
	    *) echo "note: systemd does not search $(UNITDIR); run 'systemctl link $(UNITDIR)/ironcaged.service' or install with UNITDIR=/etc/systemd/system" ;; \
	esac
	@# On the live system (not a staged DESTDIR install): create the ironcage
	@# user and group now, as a package's postinst would, and let systemd see
	@# the new units. Nothing is enabled or started.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ]; then \
	    if command -v systemd-sysusers >/dev/null 2>&1; then \
	        echo "systemd-sysusers $(SYSUSERSDIR)/ironcage.conf"; \
	        systemd-sysusers "$(SYSUSERSDIR)/ironcage.conf"; \
	    fi; \
	    if [ -d /run/systemd/system ]; then echo "systemctl daemon-reload"; systemctl daemon-reload; fi; \
	fi
	@if [ ! -e "$(DESTDIR)$(CONFDIR)/ironcaged.toml" ]; then \
	    echo; \
	    echo "Next: cp $(CONFDIR)/ironcaged.toml.example $(CONFDIR)/ironcaged.toml, edit it,"; \
	    echo "      put provider keys in $(CONFDIR)/ironcaged.env, then"; \
	    echo "      $(BINDIR)/ironcaged --check-config && systemctl enable --now ironcaged"; \
	fi

# Keeps /etc/ironcage/ironcaged.toml, ironcaged.env, /var/lib/ironcage and the
# ironcage user and group: those are the operator's.
uninstall:
	for b in $(BINARIES); do rm -f "$(DESTDIR)$(BINDIR)/$$b"; done
	for f in $(CAGE_FILES) _native.abi3.so; do rm -f "$(DESTDIR)$(PYLIBDIR)/iron_cage/$$f"; done
	rm -rf "$(DESTDIR)$(PYLIBDIR)/iron_cage/__pycache__"
	rmdir "$(DESTDIR)$(PYLIBDIR)/iron_cage" "$(DESTDIR)$(PYLIBDIR)" "$(DESTDIR)$(dir $(PYLIBDIR:/=))" 2>/dev/null || true
	for u in $(UNITS); do rm -f "$(DESTDIR)$(UNITDIR)/$$u"; done
	rm -f "$(DESTDIR)$(SYSUSERSDIR)/ironcage.conf"
	rm -f "$(DESTDIR)$(CONFDIR)/ironcaged.toml.example"
	rm -f "$(DESTDIR)$(DOCDIR)/rotate-secrets.example"
	rmdir "$(DESTDIR)$(DOCDIR)" 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ] && [ -d /run/systemd/system ]; then \
	    echo "systemctl daemon-reload"; systemctl daemon-reload; \
	fi

# Installs into a scratch directory and runs systemd-analyze verify on the
# installed units (and checks the install layout); see tests/systemd/verify.sh.
# Uses BIN_DIR if given, else the release binaries, else the debug ones.
check-units:
	$(if $(filter file,$(origin BIN_DIR)),,BIN_DIR="$(abspath $(BIN_DIR))") tests/systemd/verify.sh

test:
	scripts/test.sh

demo:
	scripts/demo.sh

# `make print-UNITDIR PREFIX=/usr` prints a variable (used by the tests).
print-%:
	@echo '$($*)'
