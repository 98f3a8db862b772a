--- Tab completion for the REPL: globals, fields of tables (`la.nn.Li`),
-- and methods of objects (`t:res`, `model:named_`), found by walking
-- metatables' __index tables.  Tensors' methods are those of la.Tensor.
--
-- A metatable may list names that its __index function produces on demand
-- (lazily loaded submodules, say) in a `__complete` field: a list of names,
-- or a function returning one.

local core = require "lualign.core"

local M = {}

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not
            or repeat return then true until while]]):gmatch("%a+") do keywords[#keywords + 1] = w end

-- Indexes v[k] without letting a failing __index escape.
local function safe_index(v, k)
  if type(v) ~= "table" and type(v) ~= "userdata" and type(v) ~= "string" then return nil end
  local ok, r = pcall(function() return v[k] end)
  if ok then return r end
  return nil
end

local function add_keys(names, t)
  for k in next, t do
    if type(k) == "string" then names[k] = true end
  end
end

local function add_declared(names, mt)
  local extra = rawget(mt, "__complete")
  if type(extra) == "function" then
    local ok, list = pcall(extra)
    extra = ok and list or nil
  end
  if type(extra) == "table" then
    for _, k in ipairs(extra) do names[k] = true end
  end
end

-- Names reachable by indexing v: its own keys, then each metatable's
-- __index table in turn.  When __index is a function, the metatable itself
-- is taken as the class (the pattern of lualign.nn's containers).
local function add_fields(names, v, seen)
  if seen[v] then return end
  seen[v] = true
  if type(v) == "table" then add_keys(names, v) end
  if core.is_tensor(v) then
    add_keys(names, core.Tensor)
    names.grad = true
    return
  end
  local mt = getmetatable(v)
  if type(mt) ~= "table" then return end
  add_declared(names, mt)
  local index = rawget(mt, "__index")
  if type(index) == "table" then
    add_fields(names, index, seen)
  elseif type(index) == "function" then
    add_fields(names, mt, seen)
  end
end

--- The names that `v.` (or `v:` when methods_only) can complete to.
function M.fields(v, methods_only)
  local names = {}
  add_fields(names, v, {})
  local list = {}
  for k in pairs(names) do
    if k:match("^[%a_][%w_]*$") and not k:match("^__") and
       (not methods_only or type(safe_index(v, k)) == "function") then
      list[#list + 1] = k
    end
  end
  table.sort(list)
  return list
end

-- Keeps the names that start with prefix; names starting with "_" only
-- when the prefix does.
local function matching(names, prefix)
  local out, seen = {}, {}
  for _, k in ipairs(names) do
    if not seen[k] and k:sub(1, #prefix) == prefix and (k:sub(1, 1) ~= "_" or prefix:sub(1, 1) == "_") then
      seen[k] = true
      out[#out + 1] = k
    end
  end
  table.sort(out)
  return out
end

-- Resolves a dotted path "a.b.c" from env, or nil.
local function resolve(path, env)
  local v = env
  for name in path:gmatch("[^.]+") do
    v = safe_index(v, name)
    if v == nil then return nil end
  end
  return v
end

--- Completion candidates for the end of `text` (the line up to the
-- cursor): a sorted list of words, and the 1-based position where the word
-- they replace starts.  env is the table globals are looked up in (_G).
function M.candidates(text, env)
  env = env or _G
  local word = text:match("[%w_%.:]*$")
  local start = #text - #word + 1
  if word:match("^[%d.:]") or word:find("::", 1, true) or word:find("..", 1, true) then return {}, start end
  local path, sep, prefix = word:match("^(.*)([.:])([%w_]*)$")
  if not path then
    local names = M.fields(env)
    for _, k in ipairs(keywords) do names[#names + 1] = k end
    return matching(names, word), start
  end
  if path:find(":", 1, true) then return {}, start end
  local v = resolve(path, env)
  if v == nil then return {}, start end
  return matching(M.fields(v, sep == ":"), prefix), #text - #prefix + 1
end

return M
