-- bench/gpt_compare.lua -- lualign against the PyTorch peer on GPT training
-- steps, forward passes and KV-cache generation, in one command.
--
--   make bench-gpt [BENCH_ARGS="rounds=3 configs=tiny,small,gpt2 peers=all steps=gpt2:4"]
--   = flock /tmp/lualign-bench.lock lua5.4 bench/gpt_compare.lua rounds=3 configs=tiny,small,gpt2 peers=all
--
-- Options: rounds (3), configs (tiny,small,gpt2), peers (the peer settings of
-- bench/peer.lua: stock, passive, glibc, jemalloc or all), steps (timed
-- training and forward steps per run for some configs, as config:N pairs;
-- the others keep their own: tiny 30, small 15, gpt2 10).  Each round first
-- measures the sgemm ceiling (lualign's own 2048^3 matmul, which runs within a
-- few percent of calling OpenBLAS directly; see bench/README.md), then, per
-- config, runs every contender once in a process of its own -- the peer
-- (bench/torch_gpt.py) under each setting and lualign (bench/gpt.lua) -- in an
-- order that reverses every other round.  The tables give medians over the
-- rounds; lualign's ratios are against the peer's best setting for each
-- figure, named beside it.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local common = require "common"
local peer = require "peer"
local run_json, median = common.run_json, common.median

local opts = common.options(arg, {rounds = "3", configs = "tiny,small,gpt2", peers = "all", steps = ""},
  "bench/gpt_compare.lua")
local rounds = math.tointeger(tonumber(opts.rounds)) or error("rounds must be a whole number, got " .. opts.rounds, 0)
local configs = {}
for c in opts.configs:gmatch("[^,]+") do
  if c ~= "tiny" and c ~= "small" and c ~= "gpt2" then error("unknown config " .. c .. " (tiny, small, gpt2)", 0) end
  configs[#configs + 1] = c
end
local settings = peer.select(opts.peers)
local steps = {}
for c, n in opts.steps:gmatch("([^,:]+):([^,]+)") do
  steps[c] = math.tointeger(tonumber(n)) or error("steps: " .. c .. ":" .. n .. " is not a whole number", 0)
end
for c in opts.steps:gsub("[^,:]+:[^,]+", ""):gmatch("[^,]+") do error("steps: '" .. c .. "' is not config:N", 0) end

local here = arg[0]:match("^(.*)/[^/]*$") or "."
local lua_env = common.lua_env(here)
local LUALIGN = {key = "lualign", name = "lualign"}

local function run(who, config)
  local n = steps[config]
  if who == LUALIGN then
    return run_json(string.format("%s lua5.4 %s/gpt.lua %s %s", lua_env, here, config, n or ""))
  end
  return run_json(peer.command(who, string.format("%s/torch_gpt.py %s --threads 2 %s", here, config,
    n and ("--steps " .. n) or "")))
end

local function sgemm_ceiling()
  return run_json(string.format([[%s lua5.4 -e '
    local la = require "lualign"
    la.set_num_threads(2)
    local a, b = la.randn(2048, 2048), la.randn(2048, 2048)
    a:matmul(b)
    local best = 0
    for _ = 1, 5 do
      local t0 = la.clock(); a:matmul(b); local dt = la.clock() - t0
      best = math.max(best, 2 * 2048 ^ 3 / dt / 1e9)
    end
    print(string.format("{\"gflops\": %%.1f}", best))']], lua_env)).gflops
end

-- samples[config][contender key][metric] = list over rounds
local samples = {}
local function record(config, key, metric, value)
  samples[config] = samples[config] or {}
  samples[config][key] = samples[config][key] or {}
  local t = samples[config][key]
  t[metric] = t[metric] or {}
  t[metric][#t[metric] + 1] = value
end
local function med(config, key, metric)
  local t = samples[config] and samples[config][key]
  return median(t and t[metric] or {})
end

local ceilings, loads = {}, {}
for r = 1, rounds do
  loads[#loads + 1] = common.load_average()
  ceilings[#ceilings + 1] = sgemm_ceiling()
  for _, config in ipairs(configs) do
    for _, who in ipairs(peer.order(settings, LUALIGN, r)) do
      local res = run(who, config)
      record(config, who.key, "tok_s", res.train.tokens_per_s)
      record(config, who.key, "gflops", res.train.gflops_per_s)
      record(config, who.key, "rss", res.peak_rss_MiB)
      record(config, who.key, "fwd_ms", res.forward.ms)
      record(config, who.key, "gen_cache", res.generate.kv_cache.ms_per_token)
      record(config, who.key, "gen_nocache", res.generate.no_cache.ms_per_token)
      if not res.generate.outputs_match then
        error(string.format("%s %s: greedy generation with and without the KV cache gave different tokens", who.name, config), 0)
      end
      io.stderr:write(string.format("round %d %-5s %-24s %8.0f tok/s  peak %6.0f MiB  KV-cache %6.2f ms/token\n",
        r, config, who.name, res.train.tokens_per_s, res.peak_rss_MiB, res.generate.kv_cache.ms_per_token))
    end
  end
end
loads[#loads + 1] = common.load_average()

local ceiling = median(ceilings)
print(string.format("sgemm ceiling (lualign matmul 2048^3, 2 threads, best of 5, median of %d rounds): %.1f GFLOP/s",
  rounds, ceiling))
print(string.format("load average (1 min) at the start of each round and at the end: %s",
  table.concat(loads, ", ")))
for _, line in ipairs(peer.describe(settings)) do print("peer " .. line) end

local contenders = {}
for _, s in ipairs(settings) do contenders[#contenders + 1] = s end
contenders[#contenders + 1] = LUALIGN

for _, config in ipairs(configs) do
  print()
  print(string.format("%s, medians of %d rounds:", config, rounds))
  print()
  print("| contender | train tok/s | share of sgemm ceiling | peak RSS MiB | forward ms | KV-cache ms/token | no-cache ms/token |")
  print("|---|---|---|---|---|---|---|")
  for _, who in ipairs(contenders) do
    local m = function(k) return med(config, who.key, k) end
    print(string.format("| %s | %.0f | %.0f%% | %.0f | %.1f | %.2f | %.2f |", who.name, m("tok_s"),
      100 * m("gflops") / ceiling, m("rss"), m("fwd_ms"), m("gen_cache"), m("gen_nocache")))
  end
end

-- Against the peer's best setting, figure by figure.
local function best(config, metric, higher)
  return peer.best(settings, function(s) return med(config, s.key, metric) end, higher)
end
print()
print(string.format("lualign against the peer's best setting (medians of %d rounds; per round: lualign's figure over that round's best peer figure):", rounds))
print()
print("| config | training tok/s: best peer, lualign, ratio (per round) | lualign share of sgemm ceiling | peak RSS: best peer, lualign, ratio | KV-cache ms/token: best peer, lualign, speed-up |")
print("|---|---|---|---|---|")
for _, config in ipairs(configs) do
  local tok, tok_who = best(config, "tok_s", true)
  local rss, rss_who = best(config, "rss", false)
  local gen, gen_who = best(config, "gen_cache", false)
  local per_round = {}
  for r = 1, rounds do
    local round_best = peer.best(settings, function(s) return samples[config][s.key].tok_s[r] end, true)
    per_round[r] = string.format("%.2f", samples[config].lualign.tok_s[r] / round_best)
  end
  print(string.format("| %s | %.0f (%s), %.0f, **%.2fx** (%s) | %.0f%% | %.0f MiB (%s), %.0f MiB, **%.2f** | %.2f (%s), %.2f, **%.2fx** |",
    config, tok, tok_who.key, med(config, "lualign", "tok_s"), med(config, "lualign", "tok_s") / tok,
    table.concat(per_round, ", "), 100 * med(config, "lualign", "gflops") / ceiling,
    rss, rss_who.key, med(config, "lualign", "rss"), med(config, "lualign", "rss") / rss,
    gen, gen_who.key, med(config, "lualign", "gen_cache"), gen / med(config, "lualign", "gen_cache")))
end
