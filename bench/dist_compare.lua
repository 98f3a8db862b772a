-- bench/dist_compare.lua -- data-parallel training on this machine: 2 ranks
-- x 1 thread (mpirun) against 1 process x 2 threads, for GPT configs, with
-- the exchange overlapping the backward pass, sent after it, and left out.
--
--   bin/lualign bench/dist_compare.lua [rounds=3] [configs=small,gpt2] [steps=8] [warmup=2] [bucket_mb=4]
--
-- Each round runs every mode of every config once (bench/dist.lua, a fresh
-- job each), in an order reversed every other round; the tables give medians
-- over the rounds.  Needs lualign built with Open MPI.

local la = require "lualign"
local cjson = require "cjson"

local opts = {rounds = 3, configs = "small,gpt2", steps = 8, warmup = 2, bucket_mb = 4}
for i = 1, #arg do
  local k, v = arg[i]:match("^([%w_]+)=(.*)$")
  if not k or opts[k] == nil then error("dist_compare: bad argument " .. arg[i], 0) end
  opts[k] = type(opts[k]) == "number" and tonumber(v) or v
end
if not la.dist.built_with_mpi() then error("dist_compare: lualign is built without Open MPI", 0) end

local bin = (arg[0]:match("^(.*)/bench/[^/]*$") or ".") .. "/bin/lualign"
local modes = {"single", "dp", "dp_sync", "dp_none"}

local function command(config, mode)
  local common = string.format("bench/dist.lua config=%s mode=%s steps=%d warmup=%d bucket_mb=%s", config, mode,
    opts.steps, opts.warmup, tostring(opts.bucket_mb))
  if mode == "single" then return string.format("%s %s threads=2", bin, common) end
  return string.format("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 "
    .. "--bind-to core -x OMP_NUM_THREADS=1 %s %s threads=1", bin, common)
end

local function run(config, mode)
  local cmd = command(config, mode)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  local line = out:match("(%b{})%s*$")
  local ok, r = pcall(cjson.decode, line or "")
  if not ok then error("dist_compare: no result from\n  " .. cmd .. "\n" .. out, 0) end
  print(cjson.encode(r))
  return r
end

local function median(xs)   -- the middle value, or the mean of the two middle ones
  local s = {table.unpack(xs)}
  table.sort(s)
  return (s[(#s + 1) // 2] + s[#s // 2 + 1]) / 2
end

local configs = {}
for c in opts.configs:gmatch("[^,]+") do configs[#configs + 1] = c end
local results = {}
for _, c in ipairs(configs) do
  results[c] = {}
  for _, m in ipairs(modes) do results[c][m] = {} end
end
for round = 1, opts.rounds do
  for _, c in ipairs(configs) do
    for k = 1, #modes do
      local m = round % 2 == 1 and modes[k] or modes[#modes + 1 - k]
      table.insert(results[c][m], run(c, m))
    end
  end
end

local function med(c, m, key)
  local xs = {}
  for _, r in ipairs(results[c][m]) do xs[#xs + 1] = r[key] end
  return median(xs)
end

print(string.format("\nmedians over %d rounds (steps=%d after warmup=%d, bucket_mb=%s)\n", opts.rounds,
  opts.steps, opts.warmup, tostring(opts.bucket_mb)))
print("| config | params | 1 process x 2 threads, tok/s | 2 ranks x 1 thread, tok/s | ratio | exchange sent after the pass, tok/s | no exchange, tok/s | MB all-reduced per step | waiting share of the step | reports during the pass, ms/step | exchange hidden |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for _, c in ipairs(configs) do
  local single, dp = med(c, "single", "tokens_per_s"), med(c, "dp", "tokens_per_s")
  local t_dp, t_sync, t_none = med(c, "dp", "ms_per_step"), med(c, "dp_sync", "ms_per_step"), med(c, "dp_none", "ms_per_step")
  local hidden = t_sync > t_none and (t_sync - t_dp) / (t_sync - t_none) or 0 / 0
  print(string.format("| %s | %.1fM | %.0f | %.0f | %.2fx | %.0f | %.0f | %.1f | %.1f%% | %.0f | %.0f%% |", c,
    results[c].single[1].params / 1e6, single, dp, dp / single, med(c, "dp_sync", "tokens_per_s"),
    med(c, "dp_none", "tokens_per_s"), results[c].dp[1].bytes_per_step / 1e6, 100 * med(c, "dp", "wait_share"),
    med(c, "dp", "hook_ms_per_step"), 100 * hidden))
end
