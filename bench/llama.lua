-- bench/llama.lua -- lualign's side of the Llama-family benchmark: the same
-- shapes, data and measurements as the PyTorch peer (bench/llama_torch.py).
-- Prints one JSON object.
--
--   lua5.4 bench/llama.lua SHAPE [steps] [warmup] [modes] [folder]
--   SHAPE: smollm | qwen;  modes: train,fwdbwd,generate,load,bandwidth,save
--   (save writes the model to the folder given last in BF16; load reads it
--   back with from_pretrained)
--
-- Run through bench/llama_compare.lua, which alternates it with the peer.

package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path
local la = require "lualign"
local cjson = require "cjson"
local common = require "common"
local median, peak_rss_mib = common.median, common.peak_rss_mib

local shapes = {
  smollm = {model_type = "llama", num_hidden_layers = 30, hidden_size = 576, num_attention_heads = 9,
            num_key_value_heads = 3, intermediate_size = 1536, vocab_size = 49152, rope_theta = 100000.0,
            rms_norm_eps = 1e-5, tie_word_embeddings = true, max_position_embeddings = 8192,
            ctx = 256, batch = 4},
  qwen = {model_type = "qwen2", num_hidden_layers = 24, hidden_size = 896, num_attention_heads = 14,
          num_key_value_heads = 2, intermediate_size = 4864, vocab_size = 151936, rope_theta = 1000000.0,
          rms_norm_eps = 1e-6, tie_word_embeddings = true, max_position_embeddings = 32768,
          ctx = 512, batch = 2},
}

local name = arg[1] or "smollm"
local s = assert(shapes[name], "unknown shape " .. tostring(name))
local steps = tonumber(arg[2]) or 3
local warmup = tonumber(arg[3]) or 1
local modes = {}
for m in (arg[4] or "train,generate"):gmatch("[^,]+") do modes[m] = true end
local folder = arg[5]
la.set_num_threads(tonumber(os.getenv("LUALIGN_THREADS") or "2"))

local result = {shape = name, threads = la.get_num_threads()}

if modes.bandwidth then
  -- DRAM read bandwidth: the sum of a 1 GiB tensor, best of 5.
  local x = la.ones(256 * 1024 * 1024)
  x:sum()
  local best = math.huge
  for _ = 1, 5 do
    local t0 = la.clock()
    x:sum():item()
    best = math.min(best, la.clock() - t0)
  end
  result.read_GB_s = 4 * x:numel() / best / 1e9
  x = nil
  collectgarbage()
end

if modes.load then
  local t0 = la.clock()
  local m = la.models.from_pretrained(folder)
  result.load_s = la.clock() - t0
  result.load_params = m:num_parameters()
  result.rss_after_load_MiB = peak_rss_mib()
  m = nil
  collectgarbage()
end

local cfg = {}
for k, v in pairs(s) do if k ~= "ctx" and k ~= "batch" then cfg[k] = v end end
la.manual_seed(1234)
local model = la.models.from_config(cfg)
result.params = model:num_parameters()
result.weight_bytes = 4 * result.params
la.manual_seed(42)
local data = la.randint(0, s.vocab_size, s.batch, s.ctx + 1)
local x, y = data:narrow(2, 1, s.ctx):contiguous(), data:narrow(2, 2, s.ctx):contiguous()
local tokens = s.batch * s.ctx

if modes.save then   -- the BF16 folder that the load mode (both sides) reads
  model:save_pretrained(folder, {dtype = "bf16"})
  result.saved = folder
end

for _, mode in ipairs({"train", "fwdbwd"}) do
  if modes[mode] then
    local opt = mode == "train" and la.optim.AdamW(model, {lr = 3e-4, betas = {0.9, 0.95}, weight_decay = 0.1})
    local times, losses = {}, {}
    for i = 1, warmup + steps do
      local t0 = la.clock()
      local loss = model:loss(x, y)
      if opt then opt:zero_grad() end
      loss:backward()
      if opt then opt:step() else model:zero_grad() end
      local dt = la.clock() - t0
      losses[#losses + 1] = loss:item()
      if i > warmup then times[#times + 1] = dt end
    end
    local med = median(times)
    result[mode] = {ms_per_step = med * 1e3, tokens_per_s = tokens / med,
                    loss_first = losses[1], loss_last = losses[#losses]}
    result["rss_after_" .. mode .. "_MiB"] = peak_rss_mib()
    model:zero_grad()
    opt = nil
    collectgarbage()
  end
end

if modes.generate then
  local n = 32
  local prompt = data:narrow(1, 1, 1):narrow(2, 1, 16)
  local function run() return model:generate(prompt, {max_new_tokens = n, temperature = 0, eos_id = {}}) end
  run()
  local ts, toks = {}, nil
  for _ = 1, 3 do
    local t0 = la.clock()
    toks = run().sequences[1]
    ts[#ts + 1] = la.clock() - t0
  end
  result.generate = {ms_per_token = median(ts) * 1e3 / n, tokens = toks}
end

result.peak_rss_MiB = peak_rss_mib()
print(cjson.encode(result))
