--- Small helpers shared by the Lua library.

local util = {}

-- The library's own files are those in this file's folder (and below it),
-- except the recipes an installation keeps there: a chunk name starting with
-- LIB ("@./lua/lualign/", "@/usr/share/lua/5.4/lualign/", ...).
local LIB = debug.getinfo(1, "S").source:match("^(@.*[/\\])[^/\\]*$")

local function in_library(source)
  return LIB ~= nil and source:sub(1, #LIB) == LIB and source:sub(#LIB + 1, #LIB + 8) ~= "recipes/"
end

--- Raises msg at the first caller outside the lualign library, so an error
-- about a bad argument points at the user's line, not at library internals.
function util.error(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 1; break end
    if info.what ~= "C" and not in_library(info.source) then break end
    level = level + 1
  end
  error(msg, level)
end

-- Removes the positions ("./lua/lualign/nn/functional.lua:29: ") that
-- library files put before a message.
local function strip_library_positions(msg)
  local lib = LIB and LIB:sub(2)
  while lib do
    local file, rest = msg:match("^([^\n]-):%d+: (.*)$")
    if not file or file:sub(1, #lib) ~= lib or file:sub(#lib + 1, #lib + 8) == "recipes/" then break end
    msg = rest
  end
  return msg
end

local wrapped = setmetatable({}, {__mode = "k"})   -- wrapper -> the function it wraps

--- The function a wrapper of raise_at_caller wraps (fn itself otherwise):
-- help() reads the signature and documentation there.
function util.unwrap(fn) return wrapped[fn] or fn end

--- fn wrapped so that an error raised inside it (by the engine, or by
-- library code it calls) is raised again at the first caller outside the
-- library, without the library's own positions: the message points at the
-- line of the user's code that made the call.  Errors that are not strings,
-- or that already name a line outside the library, pass unchanged.
function util.raise_at_caller(fn)
  local wrapper = function(...)
    local r = table.pack(pcall(fn, ...))
    if r[1] then return table.unpack(r, 2, r.n) end
    local msg = r[2]
    if type(msg) ~= "string" then error(msg, 0) end
    msg = strip_library_positions(msg)
    if msg:match("^[^\n]-:%d+: ") then error(msg, 0) end
    util.error(msg)
  end
  wrapped[wrapper] = fn
  return wrapper
end

--- Sorted list of a table's keys.
function util.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

--- The word of `candidates` (a list of strings) closest to `word`, or nil when
-- none is close enough to be a likely typo.  The distance is Levenshtein's
-- (insertions, deletions, substitutions), accepted up to a third of the
-- word's length (at least 2).
function util.closest(word, candidates)
  local best, score = nil, math.huge
  for _, c in ipairs(candidates) do
    local prev = {}
    for j = 0, #c do prev[j] = j end
    for i = 1, #word do
      local cur = {[0] = i}
      for j = 1, #c do
        local cost = word:byte(i) == c:byte(j) and 0 or 1
        cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      end
      prev = cur
    end
    if prev[#c] < score then best, score = c, prev[#c] end
  end
  return score <= math.max(2, #word // 3) and best or nil
end

--- Checks that every key of the options table `opts` (nil is fine) is one of
-- `known` (a list of names, or a set name -> anything); otherwise raises, at
-- the caller's line, "WHERE: unknown option 'bta' -- did you mean 'beta'?
-- (known: ...)".  `noun` names what the keys are ("option" by default;
-- "config key" for a model's config).  Returns opts, or an empty table for nil.
function util.check_options(where, opts, known, noun)
  noun = noun or "option"
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    util.error(string.format("%s: %ss must be a table (got %s)", where, noun, type(opts)))
  end
  local names = known
  if #known == 0 then names = util.sorted_keys(known) end
  local set = {}
  for _, k in ipairs(names) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then
      local hint = type(k) == "string" and util.closest(k, names)
      local sorted = {}
      for i, n in ipairs(names) do sorted[i] = n end
      table.sort(sorted)
      util.error(string.format("%s: unknown %s '%s'%s (known: %s)", where, noun, tostring(k),
        hint and (" -- did you mean '" .. hint .. "'?") or "", table.concat(sorted, ", ")))
    end
  end
  return opts
end

return util
