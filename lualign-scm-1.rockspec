rockspec_format = "3.0"
package = "lualign"
version = "scm-1"

source = {
  url = "git+file:///dev/null",   -- built from a checkout: luarocks --lua-version 5.4 make
}

description = {
  summary = "Tensors, autograd and alignment recipes (SFT, reward models, PPO, GDPO) for small language models",
  detailed = [[
lualign is a training framework for aligning small language models: a C engine
(tensors, reverse-mode autograd, fused loss kernels, OpenBLAS matrix products)
driven from Lua 5.4, with training recipes as editable Lua scripts and an
interactive prompt (the `lualign` command).
]],
  license = "MIT",
  homepage = "https://lualign.invalid",
}

-- lua-cjson: LuaRocks installs it from the rocks server.  Debian's package
-- (apt-get install lua-cjson, which `make test` installs) does not register
-- with LuaRocks; say once that it is there, and LuaRocks uses it instead of
-- downloading another copy:
--   luarocks --lua-version 5.4 config rocks_provided.lua-cjson 2.1.0-1
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson >= 2.1.0",
}

-- OpenBLAS, PCRE2, utf8proc and the Lua headers come from the system (Debian: libopenblas-dev,
-- libpcre2-dev, libutf8proc-dev, liblua5.4-dev).  LuaRocks checks them before building and names
-- what is missing ("You may have to install OPENBLAS ...", "Failed finding Lua
-- header files ...").  OpenBLAS is declared by its library only: Debian keeps cblas.h in a
-- multiarch folder (include/x86_64-linux-gnu/openblas-pthread) that LuaRocks'
-- header check does not search; the Makefile finds it with pkg-config.
-- Open MPI is optional (Debian: libopenmpi-dev openmpi-bin): the Makefile builds the
-- engine with it when pkg-config knows `ompi` or `mpicc` is on PATH, and then
-- `mpirun -np N lualign ...` trains across processes (docs/distributed.md).  Set MPI=1
-- in the environment to insist on it (the build stops when it is missing), MPI=0 to
-- leave it out: `MPI=1 luarocks --lua-version 5.4 make`.
external_dependencies = {
  OPENBLAS = { library = "openblas" },
  PCRE2 = { header = "pcre2.h", library = "pcre2-8" },
  UTF8PROC = { header = "utf8proc.h", library = "utf8proc" },
}

-- `make install` (below) puts the engine in LIBDIR/lualign/core.so, the Lua
-- library in LUADIR/lualign/, docs/*.md in LUADIR/lualign/docs/ (help()
-- reads them), recipes/*.lua in LUADIR/lualign/recipes/ (`lualign NAME` finds
-- them) and bin/lualign in BINDIR, which LuaRocks wraps with the tree's paths.
-- A binary rock: `luarocks pack lualign` after `luarocks make`.
build = {
  type = "make",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "$(BINDIR)",
  },
}
