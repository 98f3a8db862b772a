-- Every public function of every lualign module has documentation that
-- help() can reach: a `---` docstring in the Lua source, or (for functions
-- written in C) an entry of docs/*.md.  The modules are found by listing
-- lua/lualign/, so modules added later are covered without editing this file.

local help = require "lualign.repl.help"

-- Method names that a class's own documentation covers.
local protocol = {init = true, forward = true, extra_repr = true, new = true}

local function module_names()
  local names = {}
  local p = assert(io.popen("cd lua && find lualign -name '*.lua' | sort"))
  for path in p:lines() do
    local name = path:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
    if not name:match("%.recipes%.") then names[#names + 1] = name end
  end
  p:close()
  return names
end

local function is_public(key) return type(key) == "string" and not key:match("^_") end

local function is_class(t)
  return rawget(t, "__index") ~= nil or rawget(t, "__name") ~= nil
end

local function sorted_pairs(t)
  local keys = {}
  for k in pairs(t) do
    if is_public(k) then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local i = 0
  return function()
    i = i + 1
    return keys[i], keys[i] and rawget(t, keys[i])
  end
end

-- {name, value} for every public function and class of a module.
local function public_items(modname, mod, modules)
  local items = {}
  local display = help.display_module(modname)
  for k, v in sorted_pairs(mod) do
    local name = display .. "." .. k
    if type(v) == "function" then
      items[#items + 1] = {name, v}
    elseif type(v) == "table" and not modules[v] then
      local class = is_class(v)
      if class then items[#items + 1] = {name, v} end
      for k2, v2 in sorted_pairs(v) do
        if type(v2) == "function" and not (class and protocol[k2]) then
          items[#items + 1] = {name .. "." .. k2, v2}
        end
      end
    end
  end
  return items
end

describe("documentation", function()
  local names = module_names()

  it("finds the library's modules", function()
    assert.truthy(#names >= 10)
  end)

  it("has a docstring reachable from help() for every public function and class", function()
    local loaded, modules = {}, {}
    for _, name in ipairs(names) do
      local ok, mod = pcall(require, name)
      assert(ok, "module " .. name .. " does not load: " .. tostring(mod))
      if type(mod) == "table" then
        loaded[#loaded + 1] = {name, mod}
        modules[mod] = true
      end
    end
    local missing, count = {}, 0
    for _, entry in ipairs(loaded) do
      for _, item in ipairs(public_items(entry[1], entry[2], modules)) do
        count = count + 1
        local _, found = help.text(item[2])
        if not found then missing[#missing + 1] = item[1] end
      end
    end
    assert.truthy(count > 100, "only " .. count .. " public functions found")
    assert(#missing == 0, #missing .. " of " .. count .. " public functions have no documentation:\n  " ..
      table.concat(missing, "\n  "))
  end)

  it("has a module docstring at the top of every module", function()
    local missing = {}
    for _, name in ipairs(names) do
      local mod = require(name)
      if type(mod) == "table" then
        local _, found = help.text(mod)
        if not found then missing[#missing + 1] = name end
      end
    end
    assert(#missing == 0, "modules without a docstring: " .. table.concat(missing, ", "))
  end)
end)
