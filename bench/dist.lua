-- bench/dist.lua -- one side of the data-parallel benchmark: GPT or Llama-family training
-- steps (forward, backward, AdamW) on a global batch of random tokens, in
-- one of four modes:
--
--   single    one process on the whole batch (run it with threads=2)
--   dp        under mpirun: each rank on its share, gradients summed in
--             buckets during the backward pass (la.dist.data_parallel)
--   dp_sync   the same, but the buckets are sent only after the pass
--             (reducer:sync()), so nothing overlaps
--   dp_none   the same shares with no exchange at all: the compute alone
--             (its weights drift apart; for timing only)
--
--   bin/lualign bench/dist.lua config=small mode=single threads=2
--   mpirun -np 2 bin/lualign bench/dist.lua config=small mode=dp threads=1
--
-- Rank 0 prints one JSON object: global tokens per second (median step),
-- and for the modes that exchange, the seconds per step spent waiting for
-- sums after the pass and in the reports during it.  Run through
-- bench/dist_compare.lua, which alternates the modes.

local la = require "lualign"
local dist = la.dist

local configs = {   -- bench/gpt.lua's, and bench/llama.lua's SmolLM2-135M shape
  small = {n_layer = 6, d_model = 384, n_head = 6, ctx = 256, vocab = 8192, batch = 8},
  gpt2 = {n_layer = 12, d_model = 768, n_head = 12, ctx = 256, vocab = 50257, batch = 4},
  smollm2 = {n_layer = 30, d_model = 576, n_head = 9, n_kv_head = 3, mlp = 1536, ctx = 256, vocab = 49152,
             batch = 4, llama = true},
}
local opts = {config = "small", mode = "single", threads = 2, steps = 8, warmup = 2, bucket_mb = 4}
for i = 1, #arg do
  local k, v = arg[i]:match("^([%w_]+)=(.*)$")
  if not k or opts[k] == nil then error("bench/dist.lua: bad argument " .. arg[i], 0) end
  opts[k] = math.type(opts[k]) == "integer" and math.tointeger(tonumber(v)) or tonumber(v) or v
end
local c = assert(configs[opts.config], "unknown config " .. tostring(opts.config))
local modes = {single = true, dp = true, dp_sync = true, dp_none = true}
assert(modes[opts.mode], "unknown mode " .. tostring(opts.mode))
la.set_num_threads(opts.threads)

local rank, size = dist.rank(), dist.size()
if opts.mode == "single" then assert(size == 1, "mode single runs alone") end
if opts.mode ~= "single" then assert(size > 1 and c.batch % size == 0, "dp modes need mpirun with np dividing the batch") end

la.manual_seed(1234)
local model = c.llama and la.models.from_config{model_type = "llama", vocab_size = c.vocab, hidden_size = c.d_model,
                            intermediate_size = c.mlp, num_hidden_layers = c.n_layer, num_attention_heads = c.n_head,
                            num_key_value_heads = c.n_kv_head, max_position_embeddings = c.ctx,
                            tie_word_embeddings = true}
  or la.models.gpt{vocab_size = c.vocab, n_positions = c.ctx, n_embd = c.d_model, n_layer = c.n_layer, n_head = c.n_head}
local T, B = c.ctx, c.batch
la.manual_seed(42)
local data = la.randint(0, c.vocab, B, T + 1)
local share = B // size
local rows = data:narrow(1, rank * share + 1, share)
local x, y = rows:narrow(2, 1, T):contiguous(), rows:narrow(2, 2, T):contiguous()

local dp = dist.data_parallel(model, {bucket_mb = opts.bucket_mb})
local opt = la.optim.AdamW(model, {lr = 3e-4, betas = {0.9, 0.95}, weight_decay = 0.1})
model:train()

local function median(xs)   -- the middle value, or the mean of the two middle ones
  local s = {table.unpack(xs)}
  table.sort(s)
  return (s[(#s + 1) // 2] + s[#s // 2 + 1]) / 2
end

local times, waits, hooks, syncs = {}, {}, {}, {}
for i = 1, opts.warmup + opts.steps do
  dist.barrier()
  local before = dp:stats()
  local t0 = la.clock()
  local loss = dist.global_mean(model:loss(x, y), share * T, B * T)
  opt:zero_grad()
  local sync_s = 0
  if opts.mode == "dp" or opts.mode == "single" then
    dp:backward(loss)
  else
    loss:backward()
    if opts.mode == "dp_sync" then
      local s0 = la.clock()
      dp.reducer:sync()
      sync_s = la.clock() - s0
    end
  end
  opt:step()
  local dt = la.clock() - t0
  local after = dp:stats()
  if i > opts.warmup then
    times[#times + 1] = dist.max(dt)
    if after then
      waits[#waits + 1] = after.wait_seconds - before.wait_seconds
      hooks[#hooks + 1] = after.hook_seconds - before.hook_seconds
      syncs[#syncs + 1] = sync_s
    end
  end
end

local step = median(times)
local result = {config = opts.config, mode = opts.mode, ranks = size, threads = opts.threads,
                params = model:num_parameters(), tokens_per_step = B * T, ms_per_step = step * 1e3,
                tokens_per_s = B * T / step}
local st = dp:stats()
if st then
  local sum = function(xs) local s = 0; for _, v in ipairs(xs) do s = s + v end; return s end
  local total = sum(times)
  result.bytes_per_step = st.bytes_per_step
  result.buckets = st.buckets
  result.wait_ms_per_step = sum(waits) / #waits * 1e3
  result.hook_ms_per_step = sum(hooks) / #hooks * 1e3
  result.sync_ms_per_step = sum(syncs) / #syncs * 1e3
  result.wait_share = sum(waits) / total
  result.launched_early_per_step = st.launched_early / st.steps
end
result.peak_rss_MiB = (function()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
end)()
if dist.is_main() then print(require("lualign.recipe").json(result)) end
