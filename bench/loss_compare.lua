-- bench/loss_compare.lua -- sequence log-probs, forward and backward: lualign's
-- fused kernels against the composed log_softmax -> gather -> sum, in lualign
-- and in PyTorch, alternating the runs round by round and reporting medians
-- and ratios.  Each run is its own process (bench/loss_kernels.lua or
-- bench/torch_logprobs.py), so its peak RSS is its own.
--
--   make bench-loss [BENCH_ARGS="rounds=3 out=FILE.jsonl"]
--   = flock /tmp/lualign-bench.lock lua5.4 bench/loss_compare.lua [rounds=3]
--       [shapes=8x512x8192x384,8x512x50257x768] [reps=3] [mask=full] [peers=all] [out=FILE.jsonl]
--
-- A shape is BxTxVxC (C: the width of the hidden states for the variants that
-- start from them).  Needs `make` first; the peer needs python3-torch and runs
-- with 2 threads under each setting of bench/peer.lua (peers: stock, passive,
-- glibc, jemalloc, all, or none to leave it out).  On this machine a page
-- fault costs tens of microseconds, and stock glibc hands every large tensor
-- back to the kernel when it is freed, so stock PyTorch spends most of a step
-- faulting fresh pages in; lualign keeps freed blocks for reuse
-- (engine/core/la_alloc.c).  The ratios against PyTorch are against its best
-- setting for each variant.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local peer = require "peer"
local cjson = require "cjson"
local median = common.median

local opts = common.options(arg, {rounds = "3", shapes = "8x512x8192x384,8x512x50257x768", reps = "3",
  mask = "full", peers = "all", out = ""}, "bench/loss_compare.lua")
local here = arg[0]:match("^(.*)/[^/]*$") or "."
local LUA_ENV = common.lua_env(here) .. " LUALIGN_THREADS=2"
local settings = opts.peers == "none" and {} or peer.select(opts.peers)

local function run(cmd)
  local ok, res = pcall(common.run_json, cmd)
  if ok then return res end
  io.stderr:write(tostring(res), "\n")
end

local variants = {
  {peer = "lualign", name = "composed"}, {peer = "lualign", name = "fused"},
  {peer = "lualign", name = "linear_composed"}, {peer = "lualign", name = "linear_fused"},
  {peer = "lualign", name = "hidden_fused"},
}
local TORCH_VARIANTS = {"composed", "ce", "linear_composed", "linear_ce"}
for _, setting in ipairs(settings) do
  for _, v in ipairs(TORCH_VARIANTS) do variants[#variants + 1] = {peer = setting.name, setting = setting, name = v} end
end

local out = opts.out ~= "" and assert(io.open(opts.out, "a")) or nil
local results = {}   -- [shape][peer/name] = list of runs
local loads = {}
for round = 1, tonumber(opts.rounds) do
  loads[#loads + 1] = common.load_average()
  for shape in opts.shapes:gmatch("[^,]+") do
    local B, T, V, C = shape:match("^(%d+)x(%d+)x(%d+)x(%d+)$")
    assert(B, "shapes are BxTxVxC, got " .. shape)
    results[shape] = results[shape] or {}
    -- rotate the order every round, so no variant always runs first or last
    local n = #variants
    for i = 0, n - 1 do
      local v = variants[(i + round - 1) % n + 1]
      local args = table.concat({v.name, V, C, B, T, opts.reps, 1, opts.mask}, " ")
      local cmd = v.peer == "lualign" and (LUA_ENV .. " lua5.4 " .. here .. "/loss_kernels.lua " .. args)
                  or peer.command(v.setting, here .. "/torch_logprobs.py " .. args)
      local r = run(cmd)
      local key = v.peer .. "/" .. v.name
      if r then
        r.round, r.peer = round, v.peer == "lualign" and r.peer or (v.peer .. " " .. r.peer:match("[%d.]+%S*"))
        results[shape][key] = results[shape][key] or {}
        table.insert(results[shape][key], r)
        if out then out:write(cjson.encode(r), "\n"); out:flush() end
        io.stderr:write(string.format("round %d %s %-24s %9.1f ms  rss+%7.1f MiB\n", round, shape, key,
          r.total_ms, r.rss_extra_mib))
      else
        io.stderr:write(string.format("round %d %s %s failed\n", round, shape, key))
      end
    end
  end
end
if out then out:close() end
loads[#loads + 1] = common.load_average()
print(string.format("load average (1 min) at the start of each round and at the end: %s", table.concat(loads, ", ")))
for _, line in ipairs(peer.describe(settings)) do print("peer " .. line) end

-- Medians across rounds of each variant's per-run medians.
local function stat(shape, key, field)
  local xs = {}
  for _, r in ipairs(results[shape][key] or {}) do xs[#xs + 1] = r[field] end
  return median(xs)
end

for shape in opts.shapes:gmatch("[^,]+") do
  print(string.format("\n## %s (B x T x V x C), mask %s, medians of %s rounds", shape, opts.mask, opts.rounds))
  print("\n| peer / variant | forward ms | backward ms | total ms | lualign peak MiB (extra) | peak RSS extra MiB |")
  print("|---|---|---|---|---|---|")
  for _, v in ipairs(variants) do
    local key = v.peer .. "/" .. v.name
    if results[shape][key] then
      local mem = v.peer == "lualign" and string.format("%.0f (%.0f)", stat(shape, key, "peak_mib"),
        stat(shape, key, "extra_mib")) or "-"
      print(string.format("| %s | %.1f | %.1f | %.1f | %s | %.0f |", key, stat(shape, key, "forward_ms"),
        stat(shape, key, "backward_ms"), stat(shape, key, "total_ms"), mem, stat(shape, key, "rss_extra_mib")))
    end
  end
  local function ratio(a, b, field)
    local x, y = stat(shape, a, field), stat(shape, b, field)
    return y / x
  end
  -- PyTorch's best setting for a variant: the key with the lowest total time.
  local function best_torch(variant)
    local best, who = peer.best(settings, function(st)
      return results[shape][st.name .. "/" .. variant] and stat(shape, st.name .. "/" .. variant, "total_ms")
    end, false)
    return best and (who.name .. "/" .. variant)
  end
  print("\nRatios (how many times faster / smaller the first is; PyTorch at its best setting for each variant):\n")
  local pairs_ = {
    {"lualign/fused", "lualign/composed"}, {"lualign/fused", best_torch("composed")},
    {"lualign/fused", best_torch("ce")},
    {"lualign/hidden_fused", "lualign/linear_composed"}, {"lualign/hidden_fused", best_torch("linear_composed")},
    {"lualign/hidden_fused", best_torch("linear_ce")},
    {"lualign/hidden_fused", "lualign/linear_fused"}, {"lualign/linear_fused", "lualign/linear_composed"},
  }
  print("| fused | versus | time | peak memory (lualign peak bytes) | peak RSS extra |")
  print("|---|---|---|---|---|")
  for _, p in ipairs(pairs_) do
    if p[2] and results[shape][p[1]] and results[shape][p[2]] then
      local mem = p[2]:match("^lualign") and string.format("%.1f×", ratio(p[1], p[2], "peak_mib")) or "-"
      print(string.format("| %s | %s | %.1f× | %s | %.1f× |", p[1], p[2], ratio(p[1], p[2], "total_ms"), mem,
        ratio(p[1], p[2], "rss_extra_mib")))
    end
  end
end
