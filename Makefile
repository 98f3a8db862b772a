# lualign -- build, test and install.
#
#   make            build the engine module build/lualign/core.so
#   make test       check prerequisites, build, run every test; ends "N passed, N failed"
#   make bench      run the benchmarks in bench/ (not part of the tests)
#   make install    used by LuaRocks (INST_LIBDIR, INST_LUADIR, INST_BINDIR)
#
# Prerequisites (Debian/Ubuntu): lua5.4 liblua5.4-dev libopenblas-dev lua-cjson
# lua-busted pkg-config gcc make.  `make deps` installs them when run as root.

LUA ?= lua5.4
PKG_CONFIG ?= pkg-config
BUSTED ?= /usr/bin/busted

# LuaRocks passes LUA_INCDIR; otherwise ask pkg-config.
ifdef LUA_INCDIR
LUA_CFLAGS := -I$(LUA_INCDIR)
else
LUA_CFLAGS := $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
endif
BLAS_CFLAGS := $(shell $(PKG_CONFIG) --cflags openblas 2>/dev/null)
BLAS_LIBS := $(shell $(PKG_CONFIG) --libs openblas 2>/dev/null || echo -lopenblas)

OPTFLAGS ?= -O3 -march=native
WARNFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation
BASEFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fopenmp -fno-math-errno $(WARNFLAGS)
ALL_CFLAGS = $(BASEFLAGS) $(OPTFLAGS) $(BLAS_CFLAGS) $(EXTRA_CFLAGS)
LIBS = $(BLAS_LIBS) -lm

BUILD = build
CORE_SRC = $(wildcard engine/la_*.c)
BIND_SRC = $(wildcard engine/lua_*.c)
CORE_OBJ = $(CORE_SRC:engine/%.c=$(BUILD)/obj/%.o)
BIND_OBJ = $(BIND_SRC:engine/%.c=$(BUILD)/obj/%.o)
MODULE = $(BUILD)/lualign/core.so
CTEST = $(BUILD)/engine_test

.PHONY: all test ctest deps bench install clean

all: $(MODULE)

# The core compiles without Lua headers: only lua_*.c see them.
$(BUILD)/obj/la_%.o: engine/la_%.c engine/la.h engine/la_iter.h engine/la_math.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/lua_%.o: engine/lua_%.c engine/la.h engine/lua_la.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LUA_CFLAGS) -c $< -o $@

# -z nodelete: Lua unloads C modules when its state closes, and with them
# libgomp, while OpenMP's pool threads may still be spinning in it after the
# last parallel region; pinning the module keeps that code mapped until exit.
$(MODULE): $(CORE_OBJ) $(BIND_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -fopenmp -Wl,-z,nodelete -o $@ $^ $(LIBS)

$(CTEST): tests/engine_test.c $(CORE_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

ctest: $(CTEST)

LUA_ENV = LUA_PATH="./lua/?.lua;./lua/?/init.lua;./tests/?.lua;;" LUA_CPATH="./$(BUILD)/?.so;;"

test: deps $(MODULE) $(CTEST)
	@$(LUA_ENV) LUALIGN_ENGINE_TEST=./$(CTEST) $(LUA) $(BUSTED) -o tests/summary_output.lua tests

# Checks the prerequisites; installs the missing ones when run as root.
DEB_PKGS = lua5.4 liblua5.4-dev libopenblas-dev lua-cjson lua-busted pkg-config gcc make
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing packages:$$missing"; echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The direct-OpenBLAS contender of bench/ops.lua: plain C on cblas_sgemm.
SGEMM_DIRECT = $(BUILD)/bench/sgemm_direct
$(SGEMM_DIRECT): bench/sgemm_direct.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -O2 $(WARNFLAGS) $(BLAS_CFLAGS) -o $@ $< $(BLAS_LIBS)

# BENCH_ARGS passes options to the driver, e.g. make bench BENCH_ARGS="--rounds 3".
bench: $(MODULE) $(SGEMM_DIRECT)
	@$(LUA_ENV) $(LUA) bench/ops.lua $(BENCH_ARGS)

# LuaRocks' make backend calls this with its directories.
install: $(MODULE)
	install -d $(INST_LIBDIR)/lualign $(INST_LUADIR)/lualign $(INST_BINDIR)
	install -m 0755 $(MODULE) $(INST_LIBDIR)/lualign/core.so
	cp -R lua/lualign/. $(INST_LUADIR)/lualign/
	install -m 0755 bin/lualign $(INST_BINDIR)/lualign

clean:
	rm -rf $(BUILD)
