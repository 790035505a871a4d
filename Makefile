# Switchboard -- `make run` starts the runtime, `make test` runs every test.
# Both install missing Debian and npm dependencies first (`make deps`).

CC      ?= cc
CXX     ?= g++
LUA_INC ?= /usr/include/lua5.4
WARN     = -Wall -Wextra -Wshadow -Wconversion -Wsign-conversion -Wpointer-arith \
           -Wcast-qual -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
           -Wundef -Wwrite-strings -Wvla
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -I$(LUA_INC) -Icore $(WARN) $(CFLAGS)
# core/phonenumber.cc: libphonenumber is C++ (C++17 for its abseil and
# protobuf headers); the executable links libstdc++ for it.
CXXWARN  = -Wall -Wextra -Wshadow -Wconversion -Wsign-conversion -Wpointer-arith \
           -Wcast-qual -Wformat=2 -Wundef -Wwrite-strings -Wvla
CXXFLAGS ?= -O2 -g
ALL_CXXFLAGS = -std=c++17 -Icore $(CXXWARN) $(CXXFLAGS)
LIBS     = -llua5.4 -lev -lcurl -lssl -lcrypto -lsqlite3 -lhttp_parser -lphonenumber -lm -ldl
ASAN     = -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

SRCS = core/main.c core/sched.c core/netbuf.c core/loop.c core/http.c core/vault.c core/store.c core/httpd.c \
       core/mem.c core/phone.c
HDRS = core/core.h core/netbuf.h core/phonenumber.h
CXXSRCS = core/phonenumber.cc

DEB_PKGS = build-essential pkg-config lua5.4 liblua5.4-dev lua-cjson libev-dev \
           libcurl4-openssl-dev libssl-dev libsqlite3-dev lua-busted lua-check lua-filesystem \
           libhttp-parser-dev libphonenumber-dev sqlite3 valgrind python3 curl
BENCH_PKGS = nginx-light

.PHONY: all deps deb-pkgs npm-deps test run asan bench demo clean lint

all: switchboard

switchboard: $(SRCS) $(HDRS) build/phonenumber.o
	$(CC) $(ALL_CFLAGS) -o $@ $(SRCS) build/phonenumber.o $(LIBS) -lstdc++

build/phonenumber.o: $(CXXSRCS) core/phonenumber.h
	@mkdir -p build
	$(CXX) $(ALL_CXXFLAGS) -c -o $@ $(CXXSRCS)

build/asan/switchboard: $(SRCS) $(HDRS) build/asan/phonenumber.o
	$(CC) $(ALL_CFLAGS) -O1 $(ASAN) -o $@ $(SRCS) build/asan/phonenumber.o $(LIBS) -lstdc++

build/asan/phonenumber.o: $(CXXSRCS) core/phonenumber.h
	@mkdir -p build/asan
	$(CXX) $(ALL_CXXFLAGS) -O1 $(ASAN) -c -o $@ $(CXXSRCS)

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

test: deps all
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
