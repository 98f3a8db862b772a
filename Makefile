# lualign -- build, test and install.
#
#   make            build the engine module build/lualign/core.so
#   make demo       the main job: recipes/pipeline.lua on the bundled data (about 9 minutes)
#   make test       check prerequisites, build, run every test; ends "N passed, N failed"
#   make bench      run the benchmarks in bench/ (not part of the tests)
#   make install    used by LuaRocks (INST_LIBDIR, INST_LUADIR, INST_BINDIR):
#                   the engine, the Lua library, docs/*.md (read by help()),
#                   recipes/*.lua and the bundled data/ (as lualign/datasets/)
#                   under lualign/, and the `lualign` command
#   make data       rebuild data/ from Debian and npm packages (data/build.lua)
#   make sanitize   the whole test suite on an ASan + UBSan build (build/san/)
#   make valgrind   the engine's C tests under valgrind's memcheck (build/vg/)
#   make fuzz       each libFuzzer harness of tests/fuzz/ for FUZZ_SECONDS (60) s
#   make errors-doc regenerate docs/errors.md from tests/errors_catalogue.lua
#   make fresh-check the README's two commands in a fresh Debian root (tests/fresh_machine.sh)
#   make bench-dist data-parallel training: 2 ranks x 1 thread against 1 process x 2 threads
#
# Prerequisites (Debian/Ubuntu): lua5.4 liblua5.4-dev libopenblas-dev libpcre2-dev libutf8proc-dev
# lua-cjson lua-busted pkg-config gcc make, and for the tests luarocks and tmux.
# Open MPI (libopenmpi-dev openmpi-bin) is optional: with it the engine can
# train across processes (docs/distributed.md); MPI=1 insists on it, MPI=0
# builds without it.  `make deps` installs them all when run as root.

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
# utf8proc for the tokenizer's Unicode normalizers (NFC, NFKC, ...) and character classes.
UTF8PROC_CFLAGS := $(shell $(PKG_CONFIG) --cflags libutf8proc 2>/dev/null)
UTF8PROC_LIBS := $(shell $(PKG_CONFIG) --libs libutf8proc 2>/dev/null || echo -lutf8proc)
BLAS_FOUND := $(shell $(PKG_CONFIG) --exists openblas 2>/dev/null && echo yes)
# Open MPI, by pkg-config or its compiler wrapper; without it the engine's
# world is one process (engine/dist/la_dist_single.c).
MPI ?=
ifneq ($(MPI),0)
MPI_CFLAGS := $(shell $(PKG_CONFIG) --cflags ompi 2>/dev/null)
MPI_LIBS := $(shell $(PKG_CONFIG) --libs ompi 2>/dev/null)
ifeq ($(strip $(MPI_LIBS)),)
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null)
endif
endif
DIST_WORLD := $(if $(strip $(MPI_LIBS)),mpi,single)
DIST_UNUSED := $(if $(filter mpi,$(DIST_WORLD)),single,mpi)

OPTFLAGS ?= -O3 -march=native
# WERROR=1 (CI sets it: .ci/run) turns every warning into an error.
WARNFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation $(if $(WERROR),-Werror)
BASEFLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fopenmp -fno-math-errno $(WARNFLAGS)
ALL_CFLAGS = $(BASEFLAGS) $(OPTFLAGS) $(BLAS_CFLAGS) $(PCRE2_CFLAGS) $(UTF8PROC_CFLAGS) $(EXTRA_CFLAGS)
LIBS = $(BLAS_LIBS) $(PCRE2_LIBS) $(UTF8PROC_LIBS) $(if $(filter mpi,$(DIST_WORLD)),$(MPI_LIBS)) -lm

BUILD = build
# engine/: core/ (tensors, kernels, autograd), formats/ (safetensors),
# tokenizer/, dist/ (communication between processes: the MPI world or the
# world of one) -- none of them sees a Lua header -- then binding/ (the module
# lualign.core) and sys/ (the module lualign.sys: OS calls and the REPL's
# terminal editor).
ENGINE_DIRS = core formats tokenizer dist
CORE_SRC = $(filter-out engine/dist/la_dist_$(DIST_UNUSED).c,$(foreach d,$(ENGINE_DIRS),$(wildcard engine/$(d)/*.c)))
BIND_SRC = $(wildcard engine/binding/*.c)
SYS_SRC = $(wildcard engine/sys/*.c)
CORE_OBJ = $(CORE_SRC:engine/%.c=$(BUILD)/obj/%.o)
BIND_OBJ = $(BIND_SRC:engine/%.c=$(BUILD)/obj/%.o)
SYS_OBJ = $(SYS_SRC:engine/%.c=$(BUILD)/obj/%.o)
ENGINE_INC = $(ENGINE_DIRS:%=-Iengine/%)
MODULE = $(BUILD)/lualign/core.so
# lualign.sys: OS calls, and built without OpenMP so it can load first (see engine/sys/sys_lua.c)
SYSMOD = $(BUILD)/lualign/sys.so
CTEST = $(BUILD)/engine_test
TOKTEST = $(BUILD)/tokenizer_test

.PHONY: all test test-built demo demo-built ctest deps bench bench-gpt bench-half-gemm bench-llama bench-loss bench-memory bench-tokenizer bench-dist soak install clean data check-blas check-mpi fuzzers fuzz sanitize valgrind deps-valgrind deps-fuzz errors-doc fresh-check

all: $(MODULE) $(SYSMOD)

# The core compiles without Lua headers: only binding/ and sys/ see them.
ENGINE_HEADERS = $(foreach d,$(ENGINE_DIRS),$(wildcard engine/$(d)/*.h))

$(CORE_OBJ): $(BUILD)/obj/%.o: engine/%.c $(ENGINE_HEADERS) | check-blas check-mpi
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) -c $< -o $@

# Only the MPI world sees MPI's headers.
$(BUILD)/obj/dist/la_dist_mpi.o: ALL_CFLAGS += $(MPI_CFLAGS)

$(BIND_OBJ): $(BUILD)/obj/%.o: engine/%.c $(ENGINE_HEADERS) engine/binding/lua_la.h | check-blas
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) -Iengine/binding $(LUA_CFLAGS) -c $< -o $@

$(SYS_OBJ): $(BUILD)/obj/%.o: engine/%.c engine/sys/sys_lua.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC $(WARNFLAGS) $(OPTFLAGS) $(EXTRA_CFLAGS) $(LUA_CFLAGS) -c $< -o $@

# Without pkg-config's openblas.pc the compiler would fail on cblas.h with a
# less helpful message.
check-blas:
	@if [ -z "$(BLAS_FOUND)" ] && [ -z "$(BLAS_CFLAGS)" ]; then \
	  echo "lualign: OpenBLAS not found by pkg-config (Debian/Ubuntu: apt-get install libopenblas-dev pkg-config)" >&2; \
	  exit 1; \
	fi

check-mpi:
	@if [ "$(MPI)" = 1 ] && [ "$(DIST_WORLD)" != mpi ]; then \
	  echo "lualign: MPI=1 but Open MPI was found neither by pkg-config (ompi) nor as mpicc (Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin)" >&2; \
	  exit 1; \
	fi

# -z nodelete: Lua unloads C modules when the state closes, but OpenMP's
# worker threads may still be parked in code of ours at that point.
$(MODULE): $(CORE_OBJ) $(BIND_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -fopenmp -Wl,-z,nodelete $(EXTRA_LDFLAGS) -o $@ $^ $(LIBS)

$(SYSMOD): $(SYS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared $(EXTRA_LDFLAGS) -o $@ $^

$(CTEST): tests/engine_test.c $(CORE_OBJ)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) $(EXTRA_LDFLAGS) -o $@ $^ $(LIBS)

$(TOKTEST): tests/tokenizer_test.c $(CORE_OBJ)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) $(EXTRA_LDFLAGS) -o $@ $^ $(LIBS)

ctest: $(CTEST) $(TOKTEST)

# ---------------------------------------------------------------- fuzzing harnesses
# tests/fuzz/: one harness per input format.  Linked with driver.c they
# replay files (make test runs the seed corpora and the regressions this
# way); linked with libFuzzer they fuzz (make fuzz, below).
FUZZ_C = safetensors bpe
FUZZ_LUA = jsonl tokenizer_json encode
FUZZ_ALL = $(FUZZ_C) $(FUZZ_LUA)
FUZZ_DRIVER ?= tests/fuzz/driver.c
FUZZ_COMMON = tests/fuzz/fuzz.h tests/fuzz/fuzz_support.c
LUA_LIBS := $(shell $(PKG_CONFIG) --libs lua5.4 2>/dev/null || echo -llua5.4)
FUZZ_C_BIN = $(FUZZ_C:%=$(BUILD)/fuzz/%)
FUZZ_LUA_BIN = $(FUZZ_LUA:%=$(BUILD)/fuzz/%)
FUZZ_BIN = $(FUZZ_C_BIN) $(FUZZ_LUA_BIN)

$(FUZZ_C_BIN): $(BUILD)/fuzz/%: tests/fuzz/fuzz_%.c $(FUZZ_DRIVER) $(FUZZ_COMMON) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) $(EXTRA_LDFLAGS) -o $@ $< $(FUZZ_DRIVER) tests/fuzz/fuzz_support.c $(CORE_OBJ) $(LIBS)

$(FUZZ_LUA_BIN): $(BUILD)/fuzz/%: tests/fuzz/fuzz_lua_harness.c tests/fuzz/%.lua $(FUZZ_DRIVER) $(FUZZ_COMMON) \
                 $(CORE_OBJ) $(BIND_OBJ) $(SYS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ENGINE_INC) $(LUA_CFLAGS) -DFUZZ_WITH_LUA -DFUZZ_NAME='"$*"' $(EXTRA_LDFLAGS) -o $@ $< $(FUZZ_DRIVER) \
	  tests/fuzz/fuzz_support.c $(CORE_OBJ) $(BIND_OBJ) $(SYS_OBJ) $(LUA_LIBS) $(LIBS)

fuzzers: $(FUZZ_BIN)

LUA_ENV = LUA_PATH="./lua/?.lua;./lua/?/init.lua;./tests/?.lua;;" LUA_CPATH="./$(BUILD)/?.so;;"
TEST_ENV = $(LUA_ENV) LUALIGN_ENGINE_TEST=./$(CTEST) LUALIGN_TOKENIZER_TEST=./$(TOKTEST) LUALIGN_FUZZ_BIN=./$(BUILD)/fuzz

# test and demo first install what is missing, then build in a make of their
# own: this make read pkg-config's answers before the packages were there.
test: deps
	@$(MAKE) --no-print-directory test-built

test-built: $(MODULE) $(SYSMOD) $(CTEST) $(TOKTEST) $(FUZZ_BIN)
	@$(TEST_ENV) $(LUA) $(BUSTED) -o tests/summary_output.lua tests

# ---------------------------------------------------------------- sanitizers
# make sanitize: the engine (module, C tests, fuzz replays) built with
# AddressSanitizer and UndefinedBehaviorSanitizer into build/san/, and the
# whole test suite run on it.  Debian's lua5.4 is not instrumented, so
# tests/sanitize/lua.c, a small lua5.4 that links the sanitizers' runtime,
# goes first on PATH (no LD_PRELOAD, so the other programs the tests start
# are left alone).  Leak checking stays on: every Lua state is closed at
# exit, so a tensor or tokenizer the engine forgets to free is reported.
# Each process logs to build/san/logs/; any report there fails the target.
SAN_CC ?= gcc
SAN_BUILD = build/san
SAN_FLAGS = -O1 -g -march=native -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow \
            -fno-sanitize-recover=undefined,float-cast-overflow
SAN_LOGS = $(SAN_BUILD)/logs
SAN_ENV = PATH="$(CURDIR)/$(SAN_BUILD)/bin:$$PATH" LUALIGN_BUILD=$(SAN_BUILD) \
  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:log_path=$(CURDIR)/$(SAN_LOGS)/asan \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(CURDIR)/$(SAN_LOGS)/ubsan

sanitize: deps
	@$(MAKE) --no-print-directory BUILD=$(SAN_BUILD) CC=$(SAN_CC) OPTFLAGS="$(SAN_FLAGS)" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined,float-cast-overflow" all ctest fuzzers
	@mkdir -p $(SAN_BUILD)/bin
	$(SAN_CC) $(SAN_FLAGS) $(LUA_CFLAGS) -o $(SAN_BUILD)/bin/lua5.4 tests/sanitize/lua.c $(LUA_LIBS)
	@# LuaRocks (tests/install_spec.lua) looks for lua.h beside the lua5.4 it finds on PATH.
	@ln -sfn $(patsubst -I%,%,$(firstword $(filter -I%,$(LUA_CFLAGS)))) $(SAN_BUILD)/include
	@rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	@$(SAN_ENV) LUA_PATH="./lua/?.lua;./lua/?/init.lua;./tests/?.lua;;" LUA_CPATH="./$(SAN_BUILD)/?.so;;" \
	  LUALIGN_ENGINE_TEST=./$(SAN_BUILD)/engine_test LUALIGN_TOKENIZER_TEST=./$(SAN_BUILD)/tokenizer_test \
	  LUALIGN_FUZZ_BIN=./$(SAN_BUILD)/fuzz LUALIGN_SANITIZE=1 lua5.4 $(BUSTED) -o tests/summary_output.lua tests; rc=$$?; \
	  if grep -l "ERROR: \|runtime error" $(SAN_LOGS)/* >/dev/null 2>&1; then \
	    echo "sanitizer reports (in $(SAN_LOGS)):"; grep -h -A40 "ERROR: \|runtime error" $(SAN_LOGS)/*; exit 1; \
	  fi; \
	  if [ $$rc -ne 0 ]; then exit $$rc; fi; echo "sanitize: no reports"

# ---------------------------------------------------------------- valgrind
# make valgrind: the engine's C tests under memcheck, and the two harnesses
# of tests/fuzz/ that need no Lua (safetensors reader, tokenizer loaders)
# replaying their seeds and regressions.  valgrind 3.19 cannot decode
# AVX-512, so all of it is built without (-mavx2 -mfma) into build/vg/.
VG_BUILD = build/vg
VALGRIND = valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite \
           --errors-for-leak-kinds=definite --track-origins=yes
VG_RUNS = engine_test tokenizer_test $(FUZZ_C:%=fuzz/%)
valgrind: deps-valgrind
	@$(MAKE) --no-print-directory BUILD=$(VG_BUILD) OPTFLAGS="-O1 -g -mavx2 -mfma -DLA_VALGRIND" ctest \
	  $(FUZZ_C:%=$(VG_BUILD)/fuzz/%)
	@for t in $(VG_RUNS); do \
	  args=""; case $$t in fuzz/*) n=$${t#fuzz/}; args="tests/fuzz/seeds/$$n"; \
	    [ -d tests/fuzz/regressions/$$n ] && args="$$args tests/fuzz/regressions/$$n";; esac; \
	  echo "valgrind $(VG_BUILD)/$$t $$args"; \
	  OMP_NUM_THREADS=2 $(VALGRIND) ./$(VG_BUILD)/$$t $$args > $(VG_BUILD)/run.log 2>&1; rc=$$?; \
	  tail -n 1 $(VG_BUILD)/run.log; \
	  if [ $$rc -ne 0 ] || grep -q "^==[0-9]*==" $(VG_BUILD)/run.log; then \
	    cat $(VG_BUILD)/run.log; echo "valgrind: $$t failed"; exit 1; fi; \
	done; echo "valgrind: no errors, no definite leaks"

# ---------------------------------------------------------------- fuzzing
# make fuzz: each harness in tests/fuzz/ built with clang's libFuzzer, ASan
# and UBSan into build/libfuzzer/, then run for FUZZ_SECONDS (default 60)
# from the seed corpus and the regressions; new inputs go to
# build/libfuzzer/corpus/NAME/, crashes to build/libfuzzer/crashes/.
FUZZ_SECONDS ?= 60
FUZZ_BUILD = build/libfuzzer
FUZZ_CC ?= clang
FUZZ_FLAGS = -O1 -g -march=native -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
             -fno-sanitize-recover=undefined
fuzz: deps-fuzz
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPTFLAGS="$(FUZZ_FLAGS)" FUZZ_DRIVER= \
	  WARNFLAGS="-Wall -Wextra -Wno-unused-parameter" EXTRA_CFLAGS=-DFUZZ_LUA_COVERAGE \
	  EXTRA_LDFLAGS="-fsanitize=fuzzer,address,undefined" fuzzers
	@mkdir -p $(FUZZ_BUILD)/crashes
	@for f in $(FUZZ_ALL); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$f; \
	  dirs="tests/fuzz/seeds/$$f"; [ -d tests/fuzz/regressions/$$f ] && dirs="$$dirs tests/fuzz/regressions/$$f"; \
	  dict=""; [ -f tests/fuzz/$$f.dict ] && dict="-dict=tests/fuzz/$$f.dict"; \
	  echo "fuzz $$f for $(FUZZ_SECONDS)s"; \
	  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  OMP_NUM_THREADS=1 ./$(FUZZ_BUILD)/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096 \
	    -max_len=65536 $$dict -artifact_prefix=$(FUZZ_BUILD)/crashes/$$f- -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus/$$f $$dirs > $(FUZZ_BUILD)/$$f.log 2>&1; rc=$$?; \
	  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|Done [0-9]+ runs" $(FUZZ_BUILD)/$$f.log | tr '\n' ' '; echo; \
	  if [ $$rc -ne 0 ]; then tail -n 60 $(FUZZ_BUILD)/$$f.log; echo "fuzz: $$f found a crash (see $(FUZZ_BUILD)/crashes/)"; exit 1; fi; \
	done; echo "fuzz: no crashes"

demo: deps
	@$(MAKE) --no-print-directory demo-built

demo-built: $(MODULE) $(SYSMOD)
	bin/lualign recipes/pipeline.lua $(ARGS)

# Checks the prerequisites; installs the missing ones when run as root.
DEB_PKGS = lua5.4 liblua5.4-dev libopenblas-dev libpcre2-dev libutf8proc-dev lua-cjson lua-busted pkg-config gcc make luarocks tmux \
           libopenmpi-dev openmpi-bin
# and for the checking targets: sanitize (gcc's libasan and libubsan come
# with gcc), valgrind and fuzz (clang and its libFuzzer runtime).
deps-valgrind: ; @$(MAKE) --no-print-directory deps DEB_PKGS="$(DEB_PKGS) valgrind"
deps-fuzz: ; @$(MAKE) --no-print-directory deps DEB_PKGS="$(DEB_PKGS) clang libclang-rt-dev"
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

# The README's set-up checked on a fresh Debian 12 root (debootstrap minbase):
# `make test` and `make demo` must each pass on their first run there.  Run it
# before changing the set-up the README describes (root and network needed).
fresh-check:
	tests/fresh_machine.sh

# docs/errors.md is generated from tests/errors_catalogue.lua (the spec checks it is current).
errors-doc:
	$(LUA) tests/errors_catalogue_run.lua --markdown > docs/errors.md

# The direct-OpenBLAS contender of bench/ops.lua: plain C on cblas_sgemm.
SGEMM_DIRECT = $(BUILD)/bench/sgemm_direct
$(SGEMM_DIRECT): bench/sgemm_direct.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -O2 $(BLAS_CFLAGS) -o $@ $< $(BLAS_LIBS)

# The benchmarks; bench/README.md has their figures and what they mean.
# BENCH_ARGS passes options to the driver, e.g. make bench BENCH_ARGS="--rounds 3",
# make bench-gpt BENCH_ARGS="3 gpt2".  `make bench` is the engine ops.
bench: $(MODULE) $(SYSMOD) $(SGEMM_DIRECT)
	@$(LUA_ENV) $(LUA) bench/ops.lua $(BENCH_ARGS)

bench-gpt: $(MODULE) $(SYSMOD)
	@$(LUA) bench/gpt_compare.lua $(BENCH_ARGS)

bench-llama: $(MODULE) $(SYSMOD)
	@flock /tmp/lualign-bench.lock $(LUA) bench/llama_compare.lua $(BENCH_ARGS)

bench-loss: $(MODULE) $(SYSMOD)
	@$(LUA) bench/loss_compare.lua $(BENCH_ARGS)

# bench/half_gemm.c on the engine's objects, with la_matmul.c built for each
# panel size of HALF_GEMM_PANELS (bytes); BENCH_ARGS: threads and repetitions.
HALF_GEMM_PANELS ?= 524288 4194304 16777216
bench-half-gemm: $(CORE_OBJ)
	@mkdir -p $(BUILD)/bench
	@for p in $(HALF_GEMM_PANELS); do \
	  $(CC) $(ALL_CFLAGS) $(ENGINE_INC) -DLA_HALF_PANEL_BYTES=$$p -o $(BUILD)/bench/half_gemm_$$p bench/half_gemm.c \
	    engine/core/la_matmul.c $(filter-out $(BUILD)/obj/core/la_matmul.o,$(CORE_OBJ)) $(LIBS) -ldl || exit 1; \
	  flock /tmp/lualign-bench.lock $(BUILD)/bench/half_gemm_$$p $(BENCH_ARGS) || exit 1; \
	done

bench-memory: $(MODULE) $(SYSMOD)
	@flock /tmp/lualign-bench.lock $(LUA) bench/memory_compare.lua $(BENCH_ARGS)

bench-tokenizer: $(MODULE) $(SYSMOD)
	@bin/lualign bench/tokenizer.lua $(BENCH_ARGS)

bench-dist: $(MODULE) $(SYSMOD)
	@bin/lualign bench/dist_compare.lua $(BENCH_ARGS)

soak: $(MODULE) $(SYSMOD)
	@bin/lualign bench/soak.lua $(BENCH_ARGS)

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
