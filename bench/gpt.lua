-- bench/gpt.lua -- lualign's side of the GPT training-step benchmark.
--
-- The same model, data and measurements as the PyTorch peer
-- (../shared/bench/torch_gpt.py): a pre-LayerNorm GPT-2-style decoder with a
-- tied head, random tokens from a fixed seed, AdamW (lr 3e-4, betas 0.9/0.95,
-- weight decay 0.1), fp32.  Prints one JSON object per run.
--
--   lua5.4 bench/gpt.lua CONFIG [steps] [warmup] [modes]
--   CONFIG: tiny | small | gpt2;  modes: train,forward,generate (default all)
--
-- Run through bench/gpt_compare.lua, which alternates it with the peer.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local la = require "lualign"
local cjson = require "cjson"
local common = require "common"
local median, peak_rss_mib = common.median, common.peak_rss_mib

local configs = {
  tiny = {n_layer = 4, d_model = 128, n_head = 4, ctx = 128, vocab = 256, batch = 8},
  small = {n_layer = 6, d_model = 384, n_head = 6, ctx = 256, vocab = 8192, batch = 8},
  gpt2 = {n_layer = 12, d_model = 768, n_head = 12, ctx = 256, vocab = 50257, batch = 4},
}
local default_steps = {tiny = 30, small = 15, gpt2 = 10}
local default_warmup = {tiny = 5, small = 3, gpt2 = 2}

local name = arg[1] or "tiny"
local c = assert(configs[name], "unknown config " .. tostring(name))
local steps = tonumber(arg[2]) or default_steps[name]
local warmup = tonumber(arg[3]) or default_warmup[name]
local modes = {}
for m in (arg[4] or "train,forward,generate"):gmatch("[^,]+") do modes[m] = true end
la.set_num_threads(tonumber(os.getenv("LUALIGN_THREADS") or "2"))

la.manual_seed(1234)
local model = la.models.gpt{vocab_size = c.vocab, n_positions = c.ctx, n_embd = c.d_model,
                            n_layer = c.n_layer, n_head = c.n_head}
local L, d, T, B, V = c.n_layer, c.d_model, c.ctx, c.batch, c.vocab
local n_matmul = L * 12 * d * d + V * d
local flops_per_token = 6 * n_matmul + 12 * L * d * T
local result = {config = name, threads = la.get_num_threads(), params = model:num_parameters(),
                flops_per_token_train = flops_per_token, tokens_per_step = B * T}

la.manual_seed(42)
local data = la.randint(0, V, B, T + 1)
local x, y = data:narrow(2, 1, T):contiguous(), data:narrow(2, 2, T):contiguous()

if modes.train then
  local opt = la.optim.AdamW(model, {lr = 3e-4, betas = {0.9, 0.95}, weight_decay = 0.1})
  model:train()
  local times, losses = {}, {}
  for i = 1, warmup + steps do
    local t0 = la.clock()
    local loss = model:loss(x, y)
    opt:zero_grad()
    loss:backward()
    opt:step()
    local dt = la.clock() - t0
    losses[#losses + 1] = loss:item()
    if i > warmup then times[#times + 1] = dt end
  end
  local med = median(times)
  result.train = {ms_per_step = med * 1e3, tokens_per_s = B * T / med,
                  gflops_per_s = flops_per_token * B * T / med / 1e9,
                  loss_first = losses[1], loss_last = losses[#losses]}
  result.rss_after_train_MiB = peak_rss_mib()
  model:zero_grad()
end

if modes.forward then
  model:eval()
  local times = {}
  la.no_grad(function()
    for i = 1, warmup + steps do
      local t0 = la.clock()
      local logits = model(x)
      assert(logits:numel() > 0)
      if i > warmup then times[#times + 1] = la.clock() - t0 end
    end
  end)
  local med = median(times)
  result.forward = {ms = med * 1e3, tokens_per_s = B * T / med,
                    gflops_per_s = flops_per_token / 3 * B * T / med / 1e9}
end

if modes.generate then
  local prompt = data:narrow(1, 1, 1):narrow(2, 1, 16)
  local gen = {}
  local outs = {}
  for _, cached in ipairs({false, true}) do
    local label = cached and "kv_cache" or "no_cache"
    local function run() return model:generate(prompt, {max_new_tokens = 64, temperature = 0, use_cache = cached}) end
    run()
    local ts = {}
    for _ = 1, 5 do
      local t0 = la.clock()
      outs[label] = run().sequences[1]
      ts[#ts + 1] = la.clock() - t0
    end
    local med = median(ts)
    gen[label] = {ms_per_token = med * 1e3 / 64, tokens_per_s = 64 / med}
  end
  local same = #outs.no_cache == #outs.kv_cache
  for i = 1, #outs.no_cache do same = same and outs.no_cache[i] == outs.kv_cache[i] end
  gen.outputs_match = same
  result.generate = gen
end

result.peak_rss_MiB = peak_rss_mib()
print(cjson.encode(result))
