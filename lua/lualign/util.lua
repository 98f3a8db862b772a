--- Small helpers shared by the Lua library.

local util = {}

--- Raises msg at the first caller outside the lualign library, so an error
-- about a bad argument points at the user's line, not at library internals.
function util.error(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 1; break end
    if info.what ~= "C" and not info.source:find("lualign/", 1, true) then break end
    level = level + 1
  end
  error(msg, level)
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
-- the caller's line, "WHERE: unknown option 'bta' (did you mean 'beta'?;
-- known: ...)".  Returns opts, or an empty table for nil.
function util.check_options(where, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    util.error(string.format("%s: options must be a table (got %s)", where, type(opts)))
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
      util.error(string.format("%s: unknown option '%s'%s (known: %s)", where, tostring(k),
        hint and (" -- did you mean '" .. hint .. "'?") or "", table.concat(sorted, ", ")))
    end
  end
  return opts
end

return util
