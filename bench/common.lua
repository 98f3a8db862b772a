-- bench/common.lua -- the helpers the benchmark scripts share: medians, the
-- process's peak resident size, the JSON line a contender prints, key=value
-- arguments, the environment that finds this checkout's lualign, and the
-- machine's load.  (How a PyTorch peer is started is bench/peer.lua's job.)
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

--- The environment that makes lua5.4 load this checkout's library and engine
-- (here: the bench folder).
function common.lua_env(here)
  return string.format('LUA_PATH="%s/../lua/?.lua;%s/../lua/?/init.lua;;" LUA_CPATH="%s/../build/?.so;;"',
    here, here, here)
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

--- Parses key=value arguments against `defaults` (name -> default string);
-- an unknown name is an error with a did-you-mean.  `usage` names the script.
function common.options(argv, defaults, usage)
  package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/../lua/?.lua;" .. package.path
  local util = require "lualign.util"
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for _, a in ipairs(argv) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if not k or defaults[k] == nil then
      local names = util.sorted_keys(defaults)
      local hint = k and util.closest(k, names)
      error(string.format("%s: unknown argument '%s'%s (known: %s, each as name=value)", usage, a,
        hint and (" -- did you mean '" .. hint .. "'?") or "", table.concat(names, ", ")), 0)
    end
    out[k] = v
  end
  return out
end

--- The machine's 1-minute load average, as /proc/loadavg gives it.
function common.load_average()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l")
  f:close()
  return s:match("^(%S+)")
end

return common
