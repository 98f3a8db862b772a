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

return util
