-- bench/gpt_compare.lua -- lualign against the PyTorch CPU peer on GPT training
-- steps, forward passes and KV-cache generation, in one command.
--
--   make bench-gpt [BENCH_ARGS="rounds configs..."]   (default: 3 rounds of all)
--   lua5.4 bench/gpt_compare.lua [rounds] [configs...]
--
-- Each round runs the peer (../shared/bench/torch_gpt.py, copied to a temp
-- directory because it writes results next to itself) and then lualign
-- (bench/gpt.lua), each config in its own process so peak RSS is per config.
-- Rounds alternate the two so that the machine's noise hits both; the table
-- shows medians over rounds and lualign/peer ratios.  The sgemm ceiling is
-- measured in the same command with lualign's own matmul of 2048x2048
-- matrices (which runs within a few percent of calling OpenBLAS directly;
-- see bench/README.md).

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local cjson = require "cjson"
local common = require "common"
local run_json, median = common.run_json, common.median

local rounds = tonumber(arg[1]) or 3
local configs = {}
for i = 2, #arg do configs[#configs + 1] = arg[i] end
if #configs == 0 then configs = {"tiny", "small", "gpt2"} end

local here = arg[0]:match("^(.*)/[^/]*$") or "."
local peer_src = os.getenv("LUALIGN_PEER") or (here .. "/../../shared/bench/torch_gpt.py")
local lua_env = string.format('LUA_PATH="%s/../lua/?.lua;%s/../lua/?/init.lua;;" LUA_CPATH="%s/../build/?.so;;"',
  here, here, here)

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. tmp .. " && cp " .. peer_src .. " " .. tmp .. "/torch_gpt.py"),
  "cannot copy the peer from " .. peer_src)

local function run_peer(config)
  local json = tmp .. "/torch_" .. config .. ".json"
  local cmd = string.format("cd %s && OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 torch_gpt.py --config %s --threads 2 --json %s > /dev/null && cat %s",
    tmp, config, json, json)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return cjson.decode(out)
end

local function run_lualign(config)
  return run_json(string.format("%s lua5.4 %s/gpt.lua %s", lua_env, here, config))
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

local samples = {}   -- samples[config][side][metric] = {...}
local function record(config, side, metric, value)
  samples[config] = samples[config] or {peer = {}, lualign = {}}
  local t = samples[config][side]
  t[metric] = t[metric] or {}
  if value then table.insert(t[metric], value) end
end

local ceilings = {}
for r = 1, rounds do
  ceilings[#ceilings + 1] = sgemm_ceiling()
  for _, config in ipairs(configs) do
    local p = run_peer(config)
    record(config, "peer", "tok_s", p.train.tokens_per_s)
    record(config, "peer", "ms_step", p.train.ms_per_step.median)
    record(config, "peer", "gflops", p.train.gflops_per_s)
    record(config, "peer", "rss", p.peak_rss_MiB)
    record(config, "peer", "fwd_ms", p.forward.ms.median)
    record(config, "peer", "gen_cache", p.generate.kv_cache.ms_per_token)
    record(config, "peer", "gen_nocache", p.generate.no_cache.ms_per_token)
    local l = run_lualign(config)
    record(config, "lualign", "tok_s", l.train.tokens_per_s)
    record(config, "lualign", "ms_step", l.train.ms_per_step)
    record(config, "lualign", "gflops", l.train.gflops_per_s)
    record(config, "lualign", "rss", l.peak_rss_MiB)
    record(config, "lualign", "fwd_ms", l.forward.ms)
    record(config, "lualign", "gen_cache", l.generate.kv_cache.ms_per_token)
    record(config, "lualign", "gen_nocache", l.generate.no_cache.ms_per_token)
    io.stderr:write(string.format("round %d %s: peer %.0f tok/s, lualign %.0f tok/s\n", r, config,
      p.train.tokens_per_s, l.train.tokens_per_s))
  end
end
os.execute("rm -rf " .. tmp)

local ceiling = median(ceilings)
print(string.format("sgemm ceiling (lualign matmul 2048^3, 2 threads, best of 5, median of %d rounds): %.1f GFLOP/s", rounds, ceiling))
print()
print("| config | peer tok/s | lualign tok/s | ratio | peer share of ceiling | lualign share | peer peak RSS | lualign peak RSS | RSS ratio | fwd ms peer / lualign | KV-cache ms/token peer / lualign (speed-up) | no-cache ms/token lualign |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for _, config in ipairs(configs) do
  local p, l = samples[config].peer, samples[config].lualign
  local m = function(t, k) return median(t[k]) end
  print(string.format("| %s | %.0f | %.0f | %.2fx | %.0f%% | %.0f%% | %.0f MiB | %.0f MiB | %.2f | %.1f / %.1f | %.2f / %.2f (%.2fx) | %.2f |",
    config, m(p, "tok_s"), m(l, "tok_s"), m(l, "tok_s") / m(p, "tok_s"),
    100 * m(p, "gflops") / ceiling, 100 * m(l, "gflops") / ceiling,
    m(p, "rss"), m(l, "rss"), m(l, "rss") / m(p, "rss"),
    m(p, "fwd_ms"), m(l, "fwd_ms"),
    m(p, "gen_cache"), m(l, "gen_cache"), m(p, "gen_cache") / m(l, "gen_cache"), m(l, "gen_nocache")))
end
