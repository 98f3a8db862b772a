-- bench/loss_compare.lua -- sequence log-probs, forward and backward: lualign's
-- fused kernels against the composed log_softmax -> gather -> sum, in lualign
-- and in PyTorch, alternating the runs round by round and reporting medians
-- and ratios.  Each run is its own process (bench/loss_kernels.lua or
-- bench/torch_logprobs.py), so its peak RSS is its own.
--
--   lua5.4 bench/loss_compare.lua [rounds=3] [shapes=8x512x8192x384,8x512x50257x768]
--                                 [reps=3] [mask=full] [torch=true] [out=FILE.jsonl]
--
-- A shape is BxTxVxC (C: the width of the hidden states for the variants that
-- start from them).  Needs `make` first; the peer needs python3-torch and runs
-- as OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 with 2 threads, twice: stock
-- ("torch"), and at its best ("torch+jemalloc": jemalloc preloaded with page
-- retention, MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true, where
-- libjemalloc2 is installed).  On this machine a page fault costs tens of
-- microseconds, and stock glibc hands every large tensor back to the kernel
-- when it is freed, so stock PyTorch spends most of a step faulting fresh
-- pages in; lualign keeps freed blocks for reuse (engine/core/la_alloc.c).

local opts = {rounds = 3, shapes = "8x512x8192x384,8x512x50257x768", reps = 3, mask = "full",
              torch = "true", out = ""}
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  assert(k and opts[k] ~= nil, "unknown argument " .. a)
  opts[k] = v
end
local cjson = require "cjson"

local LUA_ENV = 'LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" LUALIGN_THREADS=2'
local TORCH_ENV = "OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2"
local JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
local have_jemalloc = io.open(JEMALLOC) ~= nil
local PEER_ENV = {
  torch = TORCH_ENV,
  ["torch+jemalloc"] = TORCH_ENV .. " LD_PRELOAD=" .. JEMALLOC ..
    " MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true",
}

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>/dev/null"))
  local text = p:read("a")
  p:close()
  local line = text:match("(%b{})%s*$")
  if not line then return nil end
  return cjson.decode(line)
end

local function median(xs)
  local s = {table.unpack(xs)}
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local variants = {
  {peer = "lualign", name = "composed"}, {peer = "lualign", name = "fused"},
  {peer = "lualign", name = "linear_composed"}, {peer = "lualign", name = "linear_fused"},
  {peer = "lualign", name = "hidden_fused"},
}
if opts.torch == "true" then
  for _, v in ipairs({"composed", "linear_composed"}) do
    variants[#variants + 1] = {peer = "torch", name = v}
  end
  if have_jemalloc then
    for _, v in ipairs({"composed", "ce", "linear_composed", "linear_ce"}) do
      variants[#variants + 1] = {peer = "torch+jemalloc", name = v}
    end
  end
end

local out = opts.out ~= "" and assert(io.open(opts.out, "a")) or nil
local results = {}   -- [shape][peer/name] = list of runs
for round = 1, tonumber(opts.rounds) do
  for shape in opts.shapes:gmatch("[^,]+") do
    local B, T, V, C = shape:match("^(%d+)x(%d+)x(%d+)x(%d+)$")
    assert(B, "shapes are BxTxVxC, got " .. shape)
    results[shape] = results[shape] or {}
    -- rotate the order every round, so no variant always runs first or last
    local n = #variants
    for i = 0, n - 1 do
      local v = variants[(i + round - 1) % n + 1]
      local args = table.concat({v.name, V, C, B, T, opts.reps, 1, opts.mask}, " ")
      local cmd = v.peer == "lualign" and (LUA_ENV .. " lua5.4 bench/loss_kernels.lua " .. args)
                  or (PEER_ENV[v.peer] .. " /usr/bin/python3 bench/torch_logprobs.py " .. args)
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
  print("\nRatios (how many times faster / smaller the first is):\n")
  local pairs_ = {
    {"lualign/fused", "lualign/composed"}, {"lualign/fused", "torch/composed"},
    {"lualign/fused", "torch+jemalloc/composed"}, {"lualign/fused", "torch+jemalloc/ce"},
    {"lualign/hidden_fused", "lualign/linear_composed"}, {"lualign/hidden_fused", "torch/linear_composed"},
    {"lualign/hidden_fused", "torch+jemalloc/linear_composed"}, {"lualign/hidden_fused", "torch+jemalloc/linear_ce"},
    {"lualign/hidden_fused", "lualign/linear_fused"}, {"lualign/linear_fused", "lualign/linear_composed"},
  }
  print("| fused | versus | time | peak memory (lualign peak bytes) | peak RSS extra |")
  print("|---|---|---|---|---|")
  for _, p in ipairs(pairs_) do
    if results[shape][p[1]] and results[shape][p[2]] then
      local mem = p[2]:match("^lualign") and string.format("%.1f×", ratio(p[1], p[2], "peak_mib")) or "-"
      print(string.format("| %s | %s | %.1f× | %s | %.1f× |", p[1], p[2], ratio(p[1], p[2], "total_ms"), mem,
        ratio(p[1], p[2], "rss_extra_mib")))
    end
  end
end
