-- Installing with LuaRocks into a fresh tree, then using the installed
-- command from another folder.
--
-- `luarocks make` runs this checkout's Makefile, which finds the engine
-- already built by `make test` and only copies files: the test takes seconds,
-- not the minute a full compile would.  A rock packed from that tree is then
-- installed into a second tree, as `luarocks install` of a packed rock would
-- be on another machine.
--
-- The rockspec declares lua-cjson.  These runs see Debian's lua-cjson (which
-- `make test` installs) the way the README tells LuaRocks users on Debian
-- to declare it (rocks_provided, in a LuaRocks user config of their own
-- HOME), and every luarocks command may only search an empty local rocks
-- server: nothing is ever downloaded, so the test passes offline, and a
-- dependency LuaRocks could not find fails it.

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- luarocks with a clean Lua environment (make test sets LUA_PATH for itself),
-- a HOME of the test's own (HOME, set in setup) and no rocks server but an
-- empty folder (SERVER).
local HOME, SERVER
local function luarocks(args, dir, home)
  return sh((dir and ("cd " .. q(dir) .. " && ") or "") .. "env -u LUA_PATH -u LUA_CPATH HOME=" .. q(home or HOME) ..
    " luarocks --lua-version 5.4 --only-server=" .. q(SERVER) .. " " .. args)
end

local h = require "helpers"
local exists, write = h.exists, h.write

-- The recipes of this checkout (none yet is fine).
local function checkout_recipes()
  local names = {}
  local p = io.popen("ls recipes/*.lua 2>/dev/null")
  for path in p:lines() do names[#names + 1] = path:match("([%w_%-]+)%.lua$") end
  p:close()
  return names
end

local script = [[
local la = require "lualign"
local nn, optim = la.nn, la.optim
local m = nn.Linear(3, 2)
local opt = optim.AdamW(m, {lr = 0.1})
local x = la.ones(4, 3)
local l = (m(x) ^ 2):mean()
l:backward()
opt:step()
print("loss ok", l:item() >= 0, m.weight:shape_str(), arg[1])
]]

describe("luarocks install", function()
  local checkout = os.getenv("PWD")
  local tmp, tree, tree2, elsewhere

  setup(function()
    tmp = sh("mktemp -d /tmp/lualign-install.XXXXXX"):gsub("%s+$", "")
    tree, tree2, elsewhere = tmp .. "/tree", tmp .. "/tree2", tmp .. "/elsewhere"
    HOME, SERVER = tmp .. "/home", tmp .. "/no-server"
    os.execute("mkdir -p " .. q(elsewhere) .. " " .. q(HOME .. "/.luarocks") .. " " .. q(SERVER))
    write(elsewhere .. "/train.lua", script)
    -- the README's line for Debian's lua-cjson
    local out, code = luarocks("config rocks_provided.lua-cjson 2.1.0-1")
    assert(code == 0, out)
  end)

  teardown(function()
    if tmp and tmp:match("^/tmp/lualign%-install") then os.execute("rm -rf " .. q(tmp)) end
  end)

  -- The installed command, run from another folder with no paths of ours.
  local function lualign(tree_dir, args)
    return sh("cd " .. q(elsewhere) .. " && env -u LUA_PATH -u LUA_CPATH " .. q(tree_dir .. "/bin/lualign") .. " " .. args)
  end

  it("declares lua-cjson, which LuaRocks takes from Debian's package once told it is there", function()
    -- a HOME whose LuaRocks was not told: the dependency is missing, and (with no server to
    -- search) nothing is installed
    os.execute("mkdir -p " .. q(tmp .. "/bare-home"))
    local out, code = luarocks("make --tree " .. q(tmp .. "/never") .. " lualign-scm-1.rockspec", checkout,
                               tmp .. "/bare-home")
    assert.are_not.equal(0, code)
    assert.truthy(out:find("Could not satisfy dependency lua-cjson >= 2.1.0", 1, true), out)
    assert.is_false(exists(tmp .. "/never/lib/lua/5.4/lualign/core.so"))
  end)

  it("`luarocks make` installs the engine, library, docs, recipes and command into a --tree", function()
    local out, code = luarocks("make --tree " .. q(tree) .. " lualign-scm-1.rockspec", checkout)
    assert(code == 0, out)
    assert.truthy(out:find("lua-cjson >= 2.1.0 (2.1.0-1 provided by VM)", 1, true), out)
    assert.truthy(exists(tree .. "/lib/lua/5.4/lualign/core.so"))
    assert.truthy(exists(tree .. "/share/lua/5.4/lualign/init.lua"))
    assert.truthy(exists(tree .. "/share/lua/5.4/lualign/docs/tensors.md"))
    assert.truthy(exists(tree .. "/bin/lualign"))
    for _, name in ipairs(checkout_recipes()) do
      assert.truthy(exists(tree .. "/share/lua/5.4/lualign/recipes/" .. name .. ".lua"), name)
    end
  end)

  it("runs a script from another folder with the installed command", function()
    local out, code = lualign(tree, "train.lua first")
    assert(code == 0, out)
    assert.equal("loss ok\ttrue\t(2, 3)\tfirst\n", out)
    out = lualign(tree, "-e " .. q("help(la.zeros); help(la.nn.Linear)"))
    assert.truthy(out:find("la.zeros(d1, d2", 1, true), out)
    assert.truthy(out:find("constructor: Linear(", 1, true), out)
    out = lualign(tree, "--version")
    assert.matches("^lualign %S+ %(Lua 5%.4%)", out)
  end)

  it("finds installed recipes by name", function()
    local listing = lualign(tree, "--recipes")
    for _, name in ipairs(checkout_recipes()) do
      assert.truthy(listing:find(name .. "%s+" .. tree:gsub("%p", "%%%0") .. "/share/lua/5.4/lualign/recipes/" .. name),
        name .. " not listed:\n" .. listing)
    end
    -- A recipe placed where `luarocks make` puts them runs by name, with its arguments.
    os.execute("mkdir -p " .. q(tree .. "/share/lua/5.4/lualign/recipes"))
    write(tree .. "/share/lua/5.4/lualign/recipes/tiny_probe.lua", script)
    for _, form in ipairs({"tiny_probe", "--recipe tiny_probe", "recipes/tiny_probe.lua"}) do
      local out, code = lualign(tree, form .. " beta=0.2")
      assert(code == 0, form .. ": " .. out)
      assert.equal("loss ok\ttrue\t(2, 3)\tbeta=0.2\n", out)
    end
    os.remove(tree .. "/share/lua/5.4/lualign/recipes/tiny_probe.lua")
  end)

  it("packs the installed rock and installs it into another tree", function()
    local out, code = luarocks("pack lualign --tree " .. q(tree), tmp)
    assert(code == 0, out)
    local rock = out:match("Packed: (%S+%.rock)")
    assert(rock, out)
    out, code = luarocks("install --tree " .. q(tree2) .. " " .. q(rock), tmp)
    assert(code == 0, out)
    out, code = lualign(tree2, "train.lua second")
    assert(code == 0, out)
    assert.equal("loss ok\ttrue\t(2, 3)\tsecond\n", out)
  end)

  it("reports a missing OpenBLAS or Lua header with LuaRocks' messages", function()
    local out, code = luarocks("make --tree " .. q(tmp .. "/never") .. " lualign-scm-1.rockspec OPENBLAS_LIBDIR=/nonexistent", checkout)
    assert.are_not.equal(0, code)
    assert.truthy(out:find("You may have to install OPENBLAS", 1, true), out)
    out, code = luarocks("make --tree " .. q(tmp .. "/never") .. " lualign-scm-1.rockspec LUA_INCDIR=/nonexistent", checkout)
    assert.are_not.equal(0, code)
    assert.truthy(out:find("Lua header files", 1, true), out)
  end)
end)
