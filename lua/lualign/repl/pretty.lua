--- Formats any Lua value for the REPL: strings quoted, tensors and objects
-- by their __tostring, and tables as nested key/value listings:
--
--     > {lr = 3e-4, betas = {0.9, 0.999}, layers = {{dim = 64}, {dim = 64}}}
--     {
--       betas = {0.9, 0.999},
--       layers = {{dim = 64}, {dim = 64}},
--       lr = 0.0003,
--     }
--
-- A table that contains itself (directly or not) shows `<cycle>` where it
-- recurs; tables deeper than `depth` levels show as `{...}` with their size,
-- and only the first `items` entries of a table are listed.

local M = {depth = 3, items = 40, width = 72}

local core = require "lualign.core"

local format_value   -- forward declaration: tables and values recurse

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not
            or repeat return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil and not keywords[k]
end

-- %q, but with newlines as \n rather than a backslash and a line break.
local function quote(s)
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

local function format_key(k)
  if is_identifier(k) then return k end
  if type(k) == "string" then return "[" .. quote(k) .. "]" end
  return "[" .. tostring(k) .. "]"
end

-- Number of entries, and whether the keys are exactly 1..n.
local function count_entries(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n, n == rawlen(t)
end

-- Keys in display order: the sequence 1..n, then the rest sorted by type
-- and value.
local function sorted_keys(t)
  local keys, n = {}, rawlen(t)
  for i = 1, n do keys[i] = i end
  local rest = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then rest[#rest + 1] = k end
  end
  local rank = {number = 1, string = 2}
  table.sort(rest, function(a, b)
    local ra, rb = rank[type(a)] or 3, rank[type(b)] or 3
    if ra ~= rb then return ra < rb end
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  for _, k in ipairs(rest) do keys[#keys + 1] = k end
  return keys, n
end

-- A tensor inside a table: small ones in full on one line, others by shape.
local function format_nested_tensor(t)
  if t:numel() <= 8 and t:dim() <= 1 then return tostring(t) end
  return string.format("tensor(shape=%s, dtype=%s)", t:shape_str(), t:dtype())
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

-- The entries of t as strings "key = value" (or just "value" in the
-- sequence part), at most M.items of them; also how many come first
-- without keys.
local function format_entries(t, level, path)
  local keys, n = sorted_keys(t)
  local parts, unkeyed = {}, 0
  for i, k in ipairs(keys) do
    if i > M.items then
      parts[#parts + 1] = string.format("... (%d more)", #keys - M.items)
      break
    end
    local v = format_value(rawget(t, k), level + 1, path)
    if math.type(k) == "integer" and k >= 1 and k <= n then
      parts[#parts + 1] = v
      unkeyed = i
    else
      parts[#parts + 1] = format_key(k) .. " = " .. v
    end
  end
  return parts, unkeyed
end

-- Joins short one-line parts[1..n] into lines of at most M.width columns.
local function fill(parts, n, indent)
  local lines, line = {}, nil
  for i = 1, n do
    local p = parts[i]
    if line and (p:find("\n", 1, true) or #line + #p + 2 > M.width - #indent) then
      lines[#lines + 1] = line
      line = nil
    end
    line = line and (line .. ", " .. p) or p
  end
  lines[#lines + 1] = line
  return lines
end

local function format_table(t, level, path)
  if path[t] then return "<cycle: " .. tostring(t) .. ">" end
  local n = count_entries(t)
  if n == 0 then return "{}" end
  if level > M.depth then return string.format("{... %d %s}", n, n == 1 and "entry" or "entries") end
  path[t] = true
  local parts, unkeyed = format_entries(t, level, path)
  path[t] = nil
  local inline = "{" .. table.concat(parts, ", ") .. "}"
  if #inline <= M.width and not inline:find("\n", 1, true) then return inline end
  local indent = string.rep("  ", level)
  local lines = fill(parts, unkeyed, indent)
  for i = unkeyed + 1, #parts do lines[#lines + 1] = parts[i] end
  local body = table.concat(lines, ",\n" .. indent .. "  ")
  return "{\n" .. indent .. "  " .. body .. ",\n" .. indent .. "}"
end

function format_value(v, level, path)
  local ty = type(v)
  if ty == "string" then return quote(v) end
  if core.is_tensor(v) then
    return level == 0 and tostring(v) or format_nested_tensor(v)
  end
  if ty == "table" and not has_tostring(v) then return format_table(v, level, path) end
  local ok, s = pcall(tostring, v)
  return ok and tostring(s) or ("<" .. ty .. ": __tostring failed>")
end

--- The display form of one value (a string, possibly of several lines).
function M.format(v)
  return format_value(v, 0, {})
end

--- The display form of several values (a function's results): one per line
-- when any spans lines, else separated by tabs.
function M.format_all(...)
  local parts, multiline = {}, false
  for i = 1, select("#", ...) do
    parts[i] = M.format((select(i, ...)))
    if parts[i]:find("\n", 1, true) then multiline = true end
  end
  return table.concat(parts, multiline and "\n" or "\t")
end

return M
