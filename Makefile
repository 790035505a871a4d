# Switchboard -- `make run` starts the runtime, `make test` runs every test.
# Both install missing Debian and npm dependencies first (`make deps`).

CC      ?= cc
CXX     ?= g++
LUA_INC ?= /usr/include/lua5.4
WARN     = -Wall -Wextra -Wshadow -Wconversion -Wsign-conversion -Wpointer-arith \
           -Wcast-qual -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
           -Wundef -Wwrite-strings -Wvla
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -I$(LUA_INC) $(shell pkg-config --cflags libpq) -Icore $(WARN) $(CFLAGS)
# core/phonenumber.cc: libphonenumber is C++ (C++17 for its abseil and
# protobuf headers); the executable links libstdc++ for it.
CXXWARN  = -Wall -Wextra -Wshadow -Wconversion -Wsign-conversion -Wpointer-arith \
           -Wcast-qual -Wformat=2 -Wundef -Wwrite-strings -Wvla
CXXFLAGS ?= -O2 -g
ALL_CXXFLAGS = -std=c++17 -Icore $(CXXWARN) $(CXXFLAGS)
LIBS     = -llua5.4 -lev -lcurl -lssl -lcrypto -lsqlite3 -lmicrohttpd -lcjose -lphonenumber -lsystemd $(shell pkg-config --libs libpq) -lm -ldl
# jemalloc (as Redis links it): the Lua state's many small allocations and
# frees cost a sixth of a read call's CPU in glibc's malloc; the ASan and
# fuzz builds keep the sanitizers' allocator.
MALLOC_LIB = -ljemalloc
ASAN     = -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

SRCS = core/main.c core/sched.c core/netbuf.c core/loop.c core/listener.c core/stream.c \
       core/timer.c core/signal.c core/wait.c core/http.c core/vault.c core/store.c core/httpd.c \
       core/mem.c core/phone.c core/fs.c core/notify.c core/jose.c core/jsonint.c core/time.c core/pg.c \
       core/auditchain.c
HDRS = core/core.h core/netbuf.h core/phonenumber.h
CXXSRCS = core/phonenumber.cc
SRCS += core/init.c

DEB_PKGS = build-essential pkg-config lua5.4 liblua5.4-dev lua-cjson libev-dev \
           libcurl4-openssl-dev libssl-dev libsqlite3-dev lua-busted lua-check lua-filesystem \
           libmicrohttpd-dev libphonenumber-dev sqlite3 valgrind python3 curl lua-argparse openssl \
           libsystemd-dev systemd mandoc libcjose-dev libpq-dev postgresql chromium libjemalloc-dev
BENCH_PKGS = nginx-light
FUZZ_PKGS = clang libclang-rt-14-dev
# what `make package` needs besides DEB_PKGS
PKG_PKGS = debhelper dpkg-dev lintian fakeroot systemd libsystemd-dev mandoc

.PHONY: all deps deb-pkgs npm-deps test run asan bench demo clean lint install uninstall package package-install-check
.PHONY: fuzz fuzz-build

all: switchboard

switchboard: $(SRCS) $(HDRS) build/phonenumber.o
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(SRCS) build/phonenumber.o $(LIBS) -lstdc++ $(MALLOC_LIB)

build/phonenumber.o: $(CXXSRCS) core/phonenumber.h
	@mkdir -p build
	$(CXX) $(CPPFLAGS) $(ALL_CXXFLAGS) -c -o $@ $(CXXSRCS)

build/asan/switchboard: $(SRCS) $(HDRS) build/asan/phonenumber.o
	$(CC) $(ALL_CFLAGS) -O1 $(ASAN) -o $@ $(SRCS) build/asan/phonenumber.o $(LIBS) -lstdc++

build/asan/phonenumber.o: $(CXXSRCS) core/phonenumber.h
	@mkdir -p build/asan
	$(CXX) $(ALL_CXXFLAGS) -O1 $(ASAN) -c -o $@ $(CXXSRCS)

# The libFuzzer harness (clang, ASan+UBSan): one binary, the target named by
# $SB_FUZZ_TARGET. `make fuzz` runs every target FUZZ_SECONDS (2 at a time),
# adds what it finds to fuzz/corpus/<target>/ and fails on any crash, saved
# in build/fuzz/crashes/<target>/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/targets/*.lua)))
FUZZ_JOBS    ?= 2
FUZZ_SRCS = $(filter-out core/main.c,$(SRCS)) fuzz/harness.c

build/fuzz/harness: $(FUZZ_SRCS) $(HDRS) build/fuzz/phonenumber.o
	@mkdir -p build/fuzz
	$(FUZZ_CC)++ -x c $(ALL_CFLAGS) -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined -DSB_FUZZ_ROOT='"$(CURDIR)"' -o $@ $(FUZZ_SRCS) \
	  -x none build/fuzz/phonenumber.o $(LIBS)

build/fuzz/phonenumber.o: $(CXXSRCS) core/phonenumber.h
	@mkdir -p build/fuzz
	$(FUZZ_CC)++ $(ALL_CXXFLAGS) -O1 $(ASAN) -c -o $@ $(CXXSRCS)

fuzz-build: build/fuzz/harness

fuzz:
	@$(MAKE) --no-print-directory PKGS="$(FUZZ_PKGS)" deb-pkgs
	@$(MAKE) --no-print-directory build/fuzz/harness
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_JOBS=$(FUZZ_JOBS) fuzz/run.sh $(FUZZ_TARGETS)

# Installs only what is missing; needs root (or sudo) the first time.
deps:
	@$(MAKE) --no-print-directory PKGS="$(DEB_PKGS)" deb-pkgs
	@$(MAKE) --no-print-directory npm-deps

deb-pkgs:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "installing Node.js and npm"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; \
	fi

npm-deps: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

CONFIG ?= examples/switchboard.conf.lua

run:
	@$(MAKE) --no-print-directory PKGS="$(DEB_PKGS)" deb-pkgs
	@$(MAKE) --no-print-directory all
	./switchboard serve --config $(CONFIG)

# The Debian package build (about 80 s) runs first; SB_SKIP_PACKAGE=1 leaves it out.
test: deps all
	@[ -n "$(SB_SKIP_PACKAGE)" ] || $(MAKE) --no-print-directory package
	@SB_BIN=$(CURDIR)/switchboard tests/run.sh

lint:
	luacheck -q runtime.lua lua policies examples tests

asan: deps build/asan/switchboard
	@SB_BIN=$(CURDIR)/build/asan/switchboard SB_ASAN=1 SWITCHBOARD_HOME=$(CURDIR) \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run.sh

# Debian packages only (nginx-light too); BENCH_PEER=1 npm-installs the peer in a scratch folder.
bench:
	@$(MAKE) --no-print-directory PKGS="$(DEB_PKGS) $(BENCH_PKGS)" deb-pkgs
	@$(MAKE) --no-print-directory all
	@BENCH_COMMAND="make bench" bench/run.sh

demo: deps all
	@examples/demo.sh

clean:
	rm -rf switchboard build var/bench

# `make install PREFIX=/usr/local DESTDIR=`: the executable in bin/, the
# Lua runtime, tools and policies in share/switchboard/ (the executable
# finds them from its own location: bin/../share/switchboard), the
# service's configuration in SYSCONFDIR/switchboard/ (kept when present),
# the manual pages, the systemd units and the sysusers.d entry.
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share/switchboard
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
LUA_FILES   = $(shell find lua integrations -name '*.lua' -not -path '*/tests/*' | sort)
POLICY_FILES = $(wildcard policies/*.lua)
CONSOLE_FILES = $(wildcard console/templates/*.html) $(wildcard console/static/*)
UNITS       = systemd/switchboard.socket systemd/switchboard-admin.socket systemd/switchboard-http.socket

install: switchboard
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/policies $(DESTDIR)$(MANDIR)/man1 \
	  $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(SYSCONFDIR)/switchboard $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR)
	install -m 0755 switchboard $(DESTDIR)$(BINDIR)/switchboard
	install -m 0644 runtime.lua $(DESTDIR)$(DATADIR)/runtime.lua
	for f in $(LUA_FILES); do install -D -m 0644 $$f $(DESTDIR)$(DATADIR)/$$f || exit 1; done
	install -m 0644 $(POLICY_FILES) $(DESTDIR)$(DATADIR)/policies/
	for f in $(CONSOLE_FILES); do install -D -m 0644 $$f $(DESTDIR)$(DATADIR)/$$f || exit 1; done
	install -m 0644 man/switchboard.1 $(DESTDIR)$(MANDIR)/man1/switchboard.1
	install -m 0644 man/switchboard.conf.5 $(DESTDIR)$(MANDIR)/man5/switchboard.conf.5
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/switchboard/switchboard.conf.lua ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/switchboard/switchboard.conf.lua"; \
	else \
	  install -m 0644 systemd/switchboard.conf.lua $(DESTDIR)$(SYSCONFDIR)/switchboard/switchboard.conf.lua; \
	fi
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' systemd/switchboard.service.in \
	  > $(DESTDIR)$(UNITDIR)/switchboard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/switchboard.service
	install -m 0644 $(UNITS) $(DESTDIR)$(UNITDIR)/
	install -m 0644 systemd/switchboard.sysusers $(DESTDIR)$(SYSUSERSDIR)/switchboard.conf

# Removes what install put there except the configuration (and never the
# data: data_dir is the operator's).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/switchboard $(DESTDIR)$(MANDIR)/man1/switchboard.1 \
	  $(DESTDIR)$(MANDIR)/man5/switchboard.conf.5 $(DESTDIR)$(SYSUSERSDIR)/switchboard.conf \
	  $(DESTDIR)$(UNITDIR)/switchboard.service $(DESTDIR)$(UNITDIR)/switchboard.socket \
	  $(DESTDIR)$(UNITDIR)/switchboard-admin.socket $(DESTDIR)$(UNITDIR)/switchboard-http.socket
	rm -rf $(DESTDIR)$(DATADIR)
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/switchboard/ (the configuration)"

# The Debian package, built from a copy of the tree in build/pkg/ (so
# that nothing is written next to the working tree): build/pkg/*.deb,
# checked by lintian.
PKG_DIR = build/pkg
package:
	@$(MAKE) --no-print-directory PKGS="$(DEB_PKGS) $(PKG_PKGS)" deb-pkgs
	rm -rf $(PKG_DIR) && mkdir -p $(PKG_DIR)/src
	tar -cf - Makefile README.md runtime.lua core lua integrations policies console man systemd debian | tar -xf - -C $(PKG_DIR)/src
	cd $(PKG_DIR)/src && dpkg-buildpackage -us -uc -b
	lintian --fail-on error $(PKG_DIR)/*.deb
	@ls $(PKG_DIR)/*.deb

# On a CI machine (it changes the system): install the package, ask the
# installed binary, remove it again (the data stays until purge).
package-install-check: package
	dpkg -i $(PKG_DIR)/switchboard_*_$$(dpkg --print-architecture).deb
	/usr/bin/switchboard --version
	dpkg -r switchboard
