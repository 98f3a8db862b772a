-- bench/common.lua -- the helpers the benchmark scripts share: medians, the
-- process's peak resident size, and the JSON line a contender prints.
--   package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
--   local common = require "common"

local cjson = require "cjson"

local common = {}

--- The median of a list of numbers (NaN for an empty list); the list is not changed.
function common.median(xs)
  local t = {table.unpack(xs)}
  table.sort(t)
  local n = #t
  if n == 0 then return 0 / 0 end
  return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

--- This process's peak resident set size in MiB (VmHWM).
function common.peak_rss_mib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end

--- Runs a shell command and decodes the last line of its output that starts with "{".
function common.run_json(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  local last
  for line in out:gmatch("[^\n]+") do if line:sub(1, 1) == "{" then last = line end end
  if not last then error("no JSON from: " .. cmd .. "\n" .. out) end
  return cjson.decode(last)
end

return common
