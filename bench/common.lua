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

--- The environment that makes lua5.4 load this checkout's library and engine
-- (here: the bench folder).
function common.lua_env(here)
  return string.format('LUA_PATH="%s/../lua/?.lua;%s/../lua/?/init.lua;;" LUA_CPATH="%s/../build/?.so;;"',
    here, here, here)
end

--- The allocators a PyTorch peer runs with, each {key, name, env}: the stock
-- one, glibc's malloc tuned (no mmap, no trimming) and jemalloc when installed.
function common.allocators()
  local jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
  local list = {
    {key = "stock", name = "stock", env = ""},
    {key = "tuned", name = "glibc tuned", env = "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000"},
    {key = "jemalloc", name = "jemalloc", env = "LD_PRELOAD=" .. jemalloc},
  }
  if not io.open(jemalloc) then table.remove(list, 3) end
  return list
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
