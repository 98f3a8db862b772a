-- bench/peer.lua -- how the benchmarks start their PyTorch peers: the peer's
-- settings, the command that runs a peer script under one of them, the order
-- of the contenders in a round, and the peer's best figure.  Every driver
-- (gpt_compare, llama_compare, loss_compare, ops) goes through here, so a
-- peer is set up the same way everywhere.
--
--   package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
--   local peer = require "peer"
--   local settings = peer.select("all")                  -- or "glibc,jemalloc"
--   local cmd = peer.command(settings[1], here .. "/torch_gpt.py tiny")
--
-- The settings (each also reported on its own):
--   stock     /usr/bin/python3 as installed: libgomp's default (spinning)
--             wait policy, glibc's default malloc
--   passive   OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers sleep instead of
--             spinning against OpenBLAS's own threads on the same cores
--   glibc     passive, and glibc's malloc told to keep freed memory
--             (no mmap for large blocks, no trimming): without it every
--             large tensor goes back to the kernel when freed and the next
--             one page-faults its memory in again
--   jemalloc  passive, and Debian's libjemalloc2 through LD_PRELOAD
-- The peer is credited with its best setting per figure (peer.best).

package.path = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/../lua/?.lua;" .. package.path
local util = require "lualign.util"

local peer = {}

peer.python = "/usr/bin/python3"
peer.jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
peer.glibc_tunables = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000"

-- The variables a setting controls: cleared first, so the caller's
-- environment never leaks into a setting.
local CONTROLLED = {"OMP_WAIT_POLICY", "GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF"}

peer.settings = {
  {key = "stock", name = "torch stock", env = {}},
  {key = "passive", name = "torch passive", env = {OMP_WAIT_POLICY = "PASSIVE"}},
  {key = "glibc", name = "torch passive+glibc", env = {OMP_WAIT_POLICY = "PASSIVE", GLIBC_TUNABLES = peer.glibc_tunables}},
  {key = "jemalloc", name = "torch passive+jemalloc", env = {OMP_WAIT_POLICY = "PASSIVE", LD_PRELOAD = peer.jemalloc}},
}

local by_key = {}
for _, s in ipairs(peer.settings) do by_key[s.key] = s end

--- The settings named in a comma list ("all": every one), in the table's
-- order.  An unknown name is an error with a did-you-mean; jemalloc needs
-- Debian's libjemalloc2.
function peer.select(spec)
  local keys = {}
  for _, s in ipairs(peer.settings) do keys[#keys + 1] = s.key end
  local wanted = {}
  for k in (spec or "all"):gmatch("[^,%s]+") do
    if k == "all" then
      for _, key in ipairs(keys) do wanted[key] = true end
    elseif by_key[k] then
      wanted[k] = true
    else
      local hint = util.closest(k, keys)
      error(string.format("peer setting '%s' is not one of %s%s", k, table.concat(keys, ", "),
        hint and (" -- did you mean '" .. hint .. "'?") or ""), 0)
    end
  end
  local out = {}
  for _, s in ipairs(peer.settings) do
    if wanted[s.key] then
      if s.key == "jemalloc" and not io.open(peer.jemalloc) then
        error("peer setting 'jemalloc' needs " .. peer.jemalloc .. " (apt-get install libjemalloc2)", 0)
      end
      out[#out + 1] = s
    end
  end
  if #out == 0 then error("no peer setting selected (known: " .. table.concat(keys, ", ") .. ")", 0) end
  return out
end

--- The environment a setting runs under, as shell words: "env -u ... NAME=value".
function peer.env(setting)
  local words = {"env"}
  for _, name in ipairs(CONTROLLED) do words[#words + 1] = "-u " .. name end
  for _, name in ipairs(CONTROLLED) do
    local v = setting.env[name]
    if v then words[#words + 1] = name .. "=" .. v end
  end
  return table.concat(words, " ")
end

--- The shell command that runs `script_and_args` (a peer script and its
-- arguments, already quoted as needed) with the peer's Python under `setting`.
function peer.command(setting, script_and_args)
  return peer.env(setting) .. " " .. peer.python .. " " .. script_and_args
end

--- One line per setting saying what it sets, for a report's header.
function peer.describe(settings)
  local lines = {}
  for _, s in ipairs(settings) do
    local set = {}
    for _, name in ipairs(CONTROLLED) do
      if s.env[name] then set[#set + 1] = name .. "=" .. s.env[name] end
    end
    lines[#lines + 1] = string.format("%s: %s", s.name, #set > 0 and table.concat(set, " ") or "nothing set")
  end
  return lines
end

--- The contenders of round r: the peer settings, then `own` (lualign's
-- entry), in that order on odd rounds and reversed on even ones, so neither
-- side always runs first or right after the other.
function peer.order(settings, own, r)
  local list = {}
  for _, s in ipairs(settings) do list[#list + 1] = s end
  list[#list + 1] = own
  if r % 2 == 0 then
    for i = 1, #list // 2 do list[i], list[#list + 1 - i] = list[#list + 1 - i], list[i] end
  end
  return list
end

--- The best of a figure over the settings: value_of(setting) gives its
-- value (NaN or nil when missing); `higher` says whether more is better.
-- Returns the value and the setting.
function peer.best(settings, value_of, higher)
  local best, who
  for _, s in ipairs(settings) do
    local v = value_of(s)
    if v and v == v and (not best or (higher and v > best) or (not higher and v < best)) then best, who = v, s end
  end
  return best, who
end

return peer
