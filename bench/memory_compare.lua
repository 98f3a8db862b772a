-- bench/memory_compare.lua -- the memory benchmark: DPO steps of a
-- Qwen2.5-0.5B-shaped model, lualign (bench/memory.lua) against the PyTorch
-- peer (bench/memory_torch.py), in one command, rounds alternating.
--
--   flock /tmp/lualign-bench.lock lua5.4 bench/memory_compare.lua [rounds] [steps] [extras]
--   (make bench-memory)
--
-- In each round every contender runs in a process of its own (so its peak RSS
-- is its configuration's), in an order that reverses every other round:
-- lualign's lora and full configurations, and the peer's lora (float32 base,
-- no checkpointing: its fastest) and full (float32, checkpointing: without it
-- a full fine-tune does not fit beside the other jobs of this machine), each
-- with the stock allocator, glibc's malloc tuned and jemalloc (bench/peer.lua).  The first round
-- adds lualign's lora_f32 and the peer's lora with the memory savings
-- lualign's lora uses (bfloat16 base, checkpointing), unless extras is 0.  Step time is the median
-- over rounds of each run's median step after the first; the peer is credited
-- with its fastest allocator.  The sgemm ceiling is lualign's 2048^3 matmul in
-- the same command; a step's model FLOPs are 3 forward passes' worth (see
-- bench/README.md).
--
-- BENCH_BEFORE=DIR adds, in every round, lualign's lora and full (or the
-- configurations BENCH_BEFORE_CONFIGS lists, comma-separated) from the built
-- checkout DIR (its own bench/memory.lua, library and engine), named "lualign
-- before": a change measured against the code it replaces in the same command.


local rounds = tonumber(arg[1]) or 2
local steps = tonumber(arg[2]) or 3
local extras = arg[3] ~= "0"
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local common = require "common"
local median = common.median
local lua_env = common.lua_env(here)
-- The peer's settings (bench/peer.lua), under the names this report uses:
-- stock malloc, glibc's malloc tuned, jemalloc (all with passive waiting).
local peer_settings = require "peer"
local allocators = {}
for _, s in ipairs(peer_settings.select("passive,glibc,jemalloc")) do
  local name = ({passive = "stock", glibc = "glibc tuned", jemalloc = "jemalloc"})[s.key]
  allocators[#allocators + 1] = {key = s.key, name = name, setting = s}
end

local function run_json(cmd)
  io.stderr:write("$ " .. cmd .. "\n")
  return common.run_json(cmd)
end

-- The median step of a run, the first (warm-up) step left out.
local function step_time(res)
  local t = {table.unpack(res.step_s, math.min(2, #res.step_s))}
  return median(t)
end

local samples = {}
local ref_logps = {}   -- the first run's reference log-probs of each contender and configuration
local function record(key, res)
  ref_logps[key] = ref_logps[key] or res.ref_logp
  samples[key] = samples[key] or {time = {}, rss = {}, loss = {}}
  table.insert(samples[key].time, step_time(res))
  table.insert(samples[key].rss, res.peak_rss_MiB)
  table.insert(samples[key].loss, res.loss[#res.loss])
end

-- The BF16 Hugging Face folder every lualign run loads, written once.
local folder = os.tmpname()
os.remove(folder)
run_json(string.format("%s lua5.4 %s/memory.lua prepare %s", lua_env, here, folder))

local before = os.getenv("BENCH_BEFORE")
local before_configs = {}
for c in (os.getenv("BENCH_BEFORE_CONFIGS") or "lora,full"):gmatch("[^,]+") do
  if c ~= "lora" and c ~= "full" then error("BENCH_BEFORE_CONFIGS: lora or full, not " .. c) end
  before_configs[#before_configs + 1] = c
end

local function lualign(config, checkout_bench)
  local dir = checkout_bench or here
  return run_json(string.format("%s lua5.4 %s/memory.lua %s %s %d", common.lua_env(dir), dir, config, folder, steps))
end

local function peer(config, alloc, extra)
  return run_json(peer_settings.command(alloc.setting, string.format("%s/memory_torch.py %s %s --steps %d --threads 2 %s",
    here, config, folder, steps, extra or "")))
end

local peer_extra = {lora = "", full = "--checkpoint"}
local ceilings = {}
for r = 1, rounds do
  -- each configuration's runs together, so that a cut-short run still compares
  local list = {}
  for _, c in ipairs({"lora", "full"}) do
    list[#list + 1] = {"lualign", c}
    for _, a in ipairs(allocators) do list[#list + 1] = {"torch " .. a.name, c, a} end
  end
  if before then
    for _, c in ipairs(before_configs) do list[#list + 1] = {"lualign before", c} end
  end
  if r == 1 and extras then
    list[#list + 1] = {"lualign", "lora_f32"}
    list[#list + 1] = {"torch jemalloc", "lora", allocators[#allocators], "--checkpoint --base-dtype bfloat16", "lora_bf16_ckpt"}
  end
  if r % 2 == 0 then
    local rev = {}
    for i = #list, 1, -1 do rev[#rev + 1] = list[i] end
    list = rev
  end
  ceilings[#ceilings + 1] = run_json(string.format("%s lua5.4 %s/memory.lua ceiling", lua_env, here)).gflops
  for _, c in ipairs(list) do
    local who, config, alloc, extra, label = c[1], c[2], c[3], c[4], c[5]
    local res
    if who == "lualign" then res = lualign(config)
    elseif who == "lualign before" then res = lualign(config, before .. "/bench")
    else res = peer(config, alloc, extra or peer_extra[config]) end
    local key = who .. " " .. (label or config)
    io.stderr:write(key .. ": " .. require("cjson").encode(res) .. "\n")   -- the whole result, for the record
    record(key, res)
    io.stderr:write(string.format("round %d  %-28s step %.2f s  peak RSS %.0f MiB\n", r, key, step_time(res),
      res.peak_rss_MiB))
  end
end

os.execute("rm -rf '" .. folder .. "'")

-- Model FLOPs of a step: three forward passes' worth (policy forward,
-- backward of twice a forward, and for LoRA a reference forward in place of
-- the weight gradients: dx only, so forward + reference + dx = 3 forwards).
-- The head counts at the 1024 positions the mask counts, where both sides
-- run it.
local N, T, B = 2048, 512, 4
local block_params = 24 * (896 * 896 * 2 + 128 * 896 * 2 + 4864 * 896 * 3)
local head = 151936 * 896
local attention = 24 * 2 * (2 * B * 14 * T * T * 64)
local forward = 2 * N * block_params + 2 * (B * 256) * head + attention
local step_flops = 3 * forward
local ceiling = median(ceilings)

local function med(key, what) return samples[key] and median(samples[key][what]) or 0 / 0 end
local function best_peer(config)
  local best, name = math.huge, nil
  for _, a in ipairs(allocators) do
    local t = med("torch " .. a.name .. " " .. config, "time")
    if t < best then best, name = t, "torch " .. a.name .. " " .. config end
  end
  return name
end

print(string.format("sgemm ceiling (lualign matmul 2048^3, 2 threads, best of 5; median of %d rounds): %.1f GFLOP/s",
  rounds, ceiling))
print(string.format("model FLOPs per step: %.2f TFLOP (3 forward passes of %.2f TFLOP)", step_flops / 1e12, forward / 1e12))
print("")
print("| contender and configuration | step time | share of sgemm ceiling | peak RSS | loss after the last step |")
print("|---|---|---|---|---|")
local keys = {}
for k in pairs(samples) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
  local t = med(k, "time")
  print(string.format("| %s | %.1f s | %.0f%% | %.0f MiB | %.4f |", k, t, 100 * step_flops / t / 1e9 / ceiling,
    med(k, "rss"), med(k, "loss")))
end
print("")
-- Both sides run the same model on the same tokens: their reference
-- log-probs (sums over 256 tokens) agree to float32 rounding.
local worst = 0
for key, lp in pairs(ref_logps) do
  local base = ref_logps["lualign " .. key:match("(%S+)$")] or ref_logps["lualign lora"]
  for i = 1, #lp do worst = math.max(worst, math.abs(lp[i] - base[i]) / math.abs(base[i])) end
end
print(string.format("reference log-probs, every run against lualign's (%s): largest relative difference %.1e",
  table.concat(ref_logps["lualign lora"], ", "), worst))
for _, who in ipairs(before and {"lualign before", "lualign"} or {"lualign"}) do
  for _, c in ipairs({"lora", "full"}) do
    local pk = best_peer(c)
    local lk = who .. " " .. c
    if samples[lk] then print(string.format("%s: %s/peer step time %.2f (peer = %s), peak RSS %.2f (%.0f / %.0f MiB)", c, who,
      med(lk, "time") / med(pk, "time"), pk, med(lk, "rss") / med(pk, "rss"), med(lk, "rss"), med(pk, "rss"))) end
  end
end
local saving = "torch jemalloc lora_bf16_ckpt"
if samples[saving] then
  print(string.format("lora against the peer with lualign's memory savings (%s): step time %.2f, peak RSS %.2f (%.0f MiB)",
    saving, med("lualign lora", "time") / med(saving, "time"), med("lualign lora", "rss") / med(saving, "rss"),
    med(saving, "rss")))
end
