-- bench/memory.lua -- one contender of bench/memory_compare.lua: DPO steps of a
-- Qwen2.5-0.5B-shaped model (random weights; 24 layers, width 896, 14 heads,
-- 2 key/value heads, MLP 4864, vocabulary 151936, tied head) on 2 pairs of 512
-- tokens (256 prompt + 256 completion, log-probs summed over the completion),
-- in one configuration, in a process of its own so that its peak RSS is the
-- configuration's.  The model is loaded from a Hugging Face folder in BF16, as
-- a Qwen2.5 checkpoint is, that `prepare` writes once.  Prints one JSON line.
--
--   lua5.4 bench/memory.lua prepare DIR
--   lua5.4 bench/memory.lua CONFIG DIR [steps]
--
-- Configurations:
--   lora       LoRA r=16 (alpha 32) on q, k, v, o, gate, up and down projections,
--              the frozen base in bfloat16, activation checkpointing per block;
--              the step computes the reference log-probs with the adapters
--              disabled, then the policy's, the DPO loss, backward, AdamW.
--   lora_bf16  the same without checkpointing (what checkpointing saves and costs).
--   lora_f32   the same with the base in float32 and no checkpointing.
--   full       full fine-tune in float32 with checkpointing per block;
--              reference log-probs computed once before the steps (as the
--              preference recipe caches them), AdamW over every parameter.
--   ceiling    the sgemm ceiling: lualign's 2048^3 float32 matmul, best of 5.
--
-- BENCH_LAYERS=n (prepare, and the peer's environment) makes an n-layer model
-- instead of 24, for a quick check that both sides compute the same thing.

local here = arg[0]:match("^(.*)/") or "."
package.path = here .. "/?.lua;" .. here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path
local la = require "lualign"
local cjson = require "cjson"

local config, dir, steps = arg[1], arg[2], tonumber(arg[3]) or 3
la.set_num_threads(tonumber(os.getenv("BENCH_THREADS") or "2"))

local peak_rss_mib = require("common").peak_rss_mib

if config == "ceiling" then
  local a, b = la.randn(2048, 2048), la.randn(2048, 2048)
  local best = math.huge
  for _ = 1, 5 do
    local t0 = la.clock()
    local c = a:matmul(b)
    best = math.min(best, la.clock() - t0)
    c = nil
  end
  print(cjson.encode({config = "ceiling", gflops = 2 * 2048 ^ 3 / best / 1e9}))
  return
end

if config == "prepare" then
  la.manual_seed(1)
  local model = la.models.from_config{model_type = "qwen2", vocab_size = 151936, hidden_size = 896,
    intermediate_size = 4864, num_hidden_layers = tonumber(os.getenv("BENCH_LAYERS") or "24"), num_attention_heads = 14, num_key_value_heads = 2,
    max_position_embeddings = 32768, rope_theta = 1000000.0, rms_norm_eps = 1e-6, tie_word_embeddings = true,
    use_sliding_window = false}
  model:save_pretrained(dir, {dtype = "bf16"})
  print(cjson.encode({config = "prepare", dir = dir}))
  return
end

local known = {lora = true, lora_bf16 = true, lora_f32 = true, full = true}
if not known[config] then
  error("config must be prepare, lora, lora_bf16, lora_f32, full or ceiling (got " .. tostring(config) .. ")")
end

-- The model --------------------------------------------------------------------------
la.manual_seed(1)
local t_build = la.clock()
local lora = config:match("^lora") ~= nil
-- lora, lora_bf16: the frozen base read straight into bfloat16; the others in float32
local bf16 = config == "lora" or config == "lora_bf16"
local model = la.models.from_pretrained(dir, {weights_dtype = bf16 and "bfloat16" or nil})
if lora then
  la.lora.apply(model, {r = 16, alpha = 32,
    target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}})
end
if config == "lora" or config == "full" then model:set_checkpointing(true) end
collectgarbage()
la.empty_cache()
t_build = la.clock() - t_build

-- The batch: rows 1-2 chosen, 3-4 rejected; targets are the next tokens,
-- counted on the completion (positions 256 .. 510, predicting 257 .. 511).
-- The tokens are a multiplicative hash of the position, as the peer's.
local B, T, P = 4, 512, 256
local rows = {}
for b = 1, B do
  rows[b] = {}
  for t = 1, T do rows[b][t] = ((b - 1) * T + t - 1) * 2654435761 % 151936 end
end
local ids = la.tensor(rows)
local targets = la.cat({ids:narrow(2, 2, T - 1), la.zeros(B, 1, "int64")}, 2)
local mask = la.zeros(B, T)
mask:narrow(2, P, T - P):fill(1)
mask:narrow(2, T, 1):fill(0)

local function logps() return model:sequence_logprobs(ids, targets, mask) end

local ref
if config == "full" then ref = la.no_grad(logps) end
local opt = la.optim.AdamW(model:parameters(), {lr = 1e-5, weight_decay = 0})

local rss_built = peak_rss_mib()
local times, losses, phases, ref_logp = {}, {}, {}, nil
for step = 1, steps do
  local t0 = la.clock()
  local r = ref
  if lora then
    r = la.no_grad(function()
      local off <close> = la.lora.disable(model)
      return logps()
    end)
  end
  ref_logp = ref_logp or r:totable()
  local t1 = la.clock()
  local lp = logps()
  local loss = la.loss.dpo(lp:narrow(1, 1, 2), lp:narrow(1, 3, 2), r:narrow(1, 1, 2), r:narrow(1, 3, 2), {beta = 0.1})
  local t2 = la.clock()
  opt:zero_grad()
  loss:backward()
  local t3 = la.clock()
  opt:step()
  losses[step] = loss:item()
  times[step] = la.clock() - t0
  phases[step] = {reference = t1 - t0, forward = t2 - t1, backward = t3 - t2, optimizer = la.clock() - t3}
  local mem = la.memory()
  io.stderr:write(string.format("lualign %s step %d: %.2f s (reference %.1f, forward %.1f, backward %.1f, "
    .. "AdamW %.1f), loss %.6f, peak RSS %.0f MiB (%.0f after building the model; tensors: peak %.0f MiB live, "
    .. "%.0f MiB cached now)\n", config, step, times[step], t1 - t0, t2 - t1, t3 - t2, phases[step].optimizer,
    losses[step], peak_rss_mib(), rss_built, mem.peak_bytes / 2 ^ 20, mem.cached_bytes / 2 ^ 20))
end

local trainable = 0
for _, p in ipairs(model:parameters()) do if p:needs_grad() then trainable = trainable + p:numel() end end
print(cjson.encode({config = config, step_s = times, loss = losses, peak_rss_MiB = peak_rss_mib(),
  build_rss_MiB = rss_built, phases = phases, ref_logp = ref_logp, build_s = t_build, trainable = trainable,
  peak_tensor_MiB = la.memory().peak_bytes / 2 ^ 20, threads = la.get_num_threads()}))
