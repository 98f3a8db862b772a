# lualign -- build, test and install.
#
#   make            build the engine module build/lualign/core.so
#   make demo       the main job: recipes/pipeline.lua on the bundled data (about 10 minutes)
#   make test       check prerequisites, build, run every test; ends "N passed, N failed"
#   make bench      run the benchmarks in bench/ (not part of the tests)
#   make install    used by LuaRocks (INST_LIBDIR, INST_LUADIR, INST_BINDIR):
#                   the engine, the Lua library, docs/*.md (read by help()),
#                   recipes/*.lua and the bundled data/ (as lualign/datasets/)
#                   under lualign/, and the `lualign` command
#   make data       rebuild data/ from Debian and npm packages (data/build.lua)
#
# Prerequisites (Debian/Ubuntu): lua5.4 liblua5.4-dev libopenblas-dev libpcre2-dev
# lua-cjson lua-busted pkg-config gcc make, and for the tests luarocks and tmux.
# `make deps` installs them when run as root.

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
# PCRE2 (8-bit, UTF + Unicode properties) for the tokenizer's pre-tokenisation.
PCRE2_CFLAGS := $(shell $(PKG_CONFIG) --cflags libpcre2-8 2>/dev/null)
PCRE2_LIBS := $(shell $(PKG_CONFIG) --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
BLAS_FOUND := $(shell $(PKG_CONFIG) --exists openblas 2>/dev/null && echo yes)

OPTFLAGS ?= -O3 -march=native
WARNFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation
BASEFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fopenmp -fno-math-errno $(WARNFLAGS)
ALL_CFLAGS = $(BASEFLAGS) $(OPTFLAGS) $(BLAS_CFLAGS) $(PCRE2_CFLAGS) $(EXTRA_CFLAGS)
LIBS = $(BLAS_LIBS) $(PCRE2_LIBS) -lm

BUILD = build
CORE_SRC = $(wildcard engine/la_*.c)
BIND_SRC = $(wildcard engine/lua_*.c)
CORE_OBJ = $(CORE_SRC:engine/%.c=$(BUILD)/obj/%.o)
BIND_OBJ = $(BIND_SRC:engine/%.c=$(BUILD)/obj/%.o)
MODULE = $(BUILD)/lualign/core.so
# lualign.sys: OS calls, and built without OpenMP so it can load first (see engine/sys_lua.c)
SYSMOD = $(BUILD)/lualign/sys.so
CTEST = $(BUILD)/engine_test
TOKTEST = $(BUILD)/tokenizer_test

.PHONY: all test demo ctest deps bench install clean data check-blas

all: $(MODULE) $(SYSMOD)

# The core compiles without Lua headers: only lua_*.c see them.
ENGINE_HEADERS = $(wildcard engine/la*.h)

$(BUILD)/obj/la_%.o: engine/la_%.c $(ENGINE_HEADERS) | check-blas
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/obj/lua_%.o: engine/lua_%.c $(ENGINE_HEADERS) engine/lua_la.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LUA_CFLAGS) -c $< -o $@

# Without pkg-config's openblas.pc the compiler would fail on cblas.h with a
# less helpful message.
check-blas:
	@if [ -z "$(BLAS_FOUND)" ] && [ -z "$(BLAS_CFLAGS)" ]; then \
	  echo "lualign: OpenBLAS not found by pkg-config (Debian/Ubuntu: apt-get install libopenblas-dev pkg-config)" >&2; \
	  exit 1; \
	fi

# -z nodelete: Lua unloads C modules when the state closes, but OpenMP's
# worker threads may still be parked in code of ours at that point.
$(MODULE): $(CORE_OBJ) $(BIND_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -fopenmp -Wl,-z,nodelete -o $@ $^ $(LIBS)

$(SYSMOD): engine/sys_lua.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -shared $(WARNFLAGS) $(OPTFLAGS) $(LUA_CFLAGS) -o $@ $<

$(CTEST): tests/engine_test.c $(CORE_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

$(TOKTEST): tests/tokenizer_test.c $(CORE_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LIBS)

ctest: $(CTEST) $(TOKTEST)

LUA_ENV = LUA_PATH="./lua/?.lua;./lua/?/init.lua;./tests/?.lua;;" LUA_CPATH="./$(BUILD)/?.so;;"

test: deps $(MODULE) $(SYSMOD) $(CTEST) $(TOKTEST)
	@$(LUA_ENV) LUALIGN_ENGINE_TEST=./$(CTEST) LUALIGN_TOKENIZER_TEST=./$(TOKTEST) $(LUA) $(BUSTED) -o tests/summary_output.lua tests

demo: deps $(MODULE) $(SYSMOD)
	bin/lualign recipes/pipeline.lua $(ARGS)

# Checks the prerequisites; installs the missing ones when run as root.
DEB_PKGS = lua5.4 liblua5.4-dev libopenblas-dev libpcre2-dev lua-cjson lua-busted pkg-config gcc make luarocks tmux
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
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -O2 $(BLAS_CFLAGS) -o $@ $< $(BLAS_LIBS)

# The engine-op benchmarks (bench/README.md has the others: GPT steps, loss
# kernels, the tokenizer, the memory soak).  BENCH_ARGS passes options to the
# driver, e.g. make bench BENCH_ARGS="--rounds 3".
bench: $(MODULE) $(SYSMOD) $(SGEMM_DIRECT)
	@$(LUA_ENV) $(LUA) bench/ops.lua $(BENCH_ARGS)

# LuaRocks' make backend calls this with its directories.  Recipes go to
# lualign/recipes/ in the Lua module folder, where `lualign NAME` finds them;
# the docs/ pages to lualign/docs/, where help() reads them.
install: $(MODULE) $(SYSMOD)
	@if [ -z "$(INST_LIBDIR)" ] || [ -z "$(INST_LUADIR)" ] || [ -z "$(INST_BINDIR)" ]; then \
	  echo "make install needs INST_LIBDIR, INST_LUADIR and INST_BINDIR (use: luarocks --lua-version 5.4 make)" >&2; \
	  exit 1; \
	fi
	install -d $(INST_LIBDIR)/lualign $(INST_LUADIR)/lualign/docs $(INST_LUADIR)/lualign/recipes $(INST_BINDIR)
	install -m 0755 $(MODULE) $(INST_LIBDIR)/lualign/core.so
	install -m 0755 $(SYSMOD) $(INST_LIBDIR)/lualign/sys.so
	cp -R lua/lualign/. $(INST_LUADIR)/lualign/
	install -m 0644 docs/*.md $(INST_LUADIR)/lualign/docs/
	for f in recipes/*.lua; do \
	  if [ -e "$$f" ]; then install -m 0644 "$$f" $(INST_LUADIR)/lualign/recipes/ || exit 1; fi; \
	done
	install -m 0755 bin/lualign $(INST_BINDIR)/lualign
	# the bundled datasets, found by la.data.path() next to the Lua modules
	rm -rf $(INST_LUADIR)/lualign/datasets
	install -d $(INST_LUADIR)/lualign/datasets
	cp -R data/. $(INST_LUADIR)/lualign/datasets/
	rm -f $(INST_LUADIR)/lualign/datasets/build.lua

# Rebuilds the bundled datasets (needs R, bsdgames, wordnet-base and npm; see data/README.md).
data:
	$(LUA) data/build.lua

clean:
	rm -rf $(BUILD)
