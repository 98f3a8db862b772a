-- The recipes' memory keys end to end on miniature configs: lora (with the
-- adapter in PEFT's format and a merged model.safetensors the next stage
-- loads), grad_accum (the same losses as one batch), checkpoint and
-- weights_dtype, in SFT, reward, PPO and the preference recipe.
local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"

local out = os.tmpname() .. ".runs"
assert(require("lualign.sys").mkdir(out))

-- Runs recipes/<name>.lua with args in the folder of this spec's runs.
local function run(name, args)
  args.out_dir = out
  return recipe.run_script("recipes/" .. name .. ".lua", args)
end

local function series(r, key)
  local xs = {}
  for _, row in ipairs(log.read(r.run:path("metrics.jsonl"))) do
    if row[key] then xs[#xs + 1] = row[key] end
  end
  return xs
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

describe("recipes with memory keys", function()
  setup(function()
    run("pretrain", {name = "pre", steps = 30, eval_every = 30, warmup = 5, n_layer = 2, n_embd = 32, n_head = 2,
                     context = 64, vocab_size = 320, batch_size = 8, eval_batches = 2})
  end)
  teardown(function() os.execute("rm -rf " .. out) end)

  local sft_args = {base = out .. "/pre", steps = 6, eval_every = 6, batch_size = 8, max_len = 48,
                    eval_examples = 16, samples = 1, lr = 1e-3}
  local function with(extra)
    local t = {}
    for k, v in pairs(sft_args) do t[k] = v end
    for k, v in pairs(extra) do t[k] = v end
    return t
  end

  it("sft: grad_accum gives the losses of one batch, with and without checkpointing", function()
    local one = series(run("sft", with{name = "acc1"}), "loss")
    local four = series(run("sft", with{name = "acc4", grad_accum = 4}), "loss")
    local ckpt = series(run("sft", with{name = "acc2c", grad_accum = 2, checkpoint = true}), "loss")
    assert.are.equal(6, #one)
    for i = 1, #one do
      assert.is_true(math.abs(one[i] - four[i]) < 1e-4 * math.max(1, one[i]), string.format("step %d: %.6f vs %.6f", i, one[i], four[i]))
      assert.is_true(math.abs(one[i] - ckpt[i]) < 1e-4 * math.max(1, one[i]), string.format("step %d: %.6f vs %.6f", i, one[i], ckpt[i]))
    end
  end)

  it("sft with lora: trains the adapters, writes them and a merged model the next stage loads", function()
    local r = run("sft", with{name = "sft_lora", lora = true, lora_r = 4, lora_alpha = 8, steps = 20, eval_every = 10,
                              lr = 1e-2, weights_dtype = "bfloat16", checkpoint = 1, grad_accum = 2, save_merged = true})
    -- (a model this small learns SFT mostly in its embeddings, which LoRA leaves frozen)
    assert.is_true(r.valid_loss < r.base_loss + 0.02, string.format("%.3f -> %.3f", r.base_loss, r.valid_loss))
    local adapter = la.checkpoint.load(r.run:path("adapter/adapter_model.safetensors"))
    assert.is_true(adapter["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"]:abs():max():item() > 1e-3)
    for _, f in ipairs({"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "merged/config.json",
                        "merged/model.safetensors", "model.safetensors"}) do
      assert.is_true(r.run:exists(f), f)
    end
    -- model.safetensors holds a plain model (adapters folded in): it loads, and
    -- computes what the base with the saved adapter computes
    local merged = recipe.load_model(r.run:path("model.safetensors"))
    local base = recipe.load_model(out .. "/pre")
    la.lora.load(base, r.run:path("adapter"))
    local ids = la.tensor({{5, 9, 14, 30, 2, 7}}, "int64")
    merged:eval()
    base:eval()
    local d = la.no_grad(function() return (merged(ids) - base(ids)):abs():max():item() end)
    assert.is_true(d < 0.05, "merged vs adapter: " .. d)     -- the bfloat16 base's rounding
    local hf = la.models.from_pretrained(r.run:path("merged"))
    assert.is_not_nil(hf)
  end)

  it("reward with lora trains the adapters and the reward head", function()
    local r = run("reward", {name = "rm_lora", base = out .. "/pre", steps = 40, eval_every = 20, batch_size = 16,
                             max_len = 48, lr = 5e-3, lora = true, lora_r = 4, grad_accum = 2})
    local loss = series(r, "loss")
    assert.is_true(loss[#loss] < loss[1], string.format("loss %.3f -> %.3f", loss[1], loss[#loss]))
    local t = la.checkpoint.load(r.run:path("adapter/adapter_model.safetensors"))
    assert.is_not_nil(t["base_model.model.reward_head.weight"])
    assert.is_not_nil(t["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"])
  end)

  it("gdpo with lora uses the policy with its adapters off as the reference", function()
    -- 32 soft-label pairs seen 10 times
    local lines, pairs_file = {}, out .. "/pairs.jsonl"
    for line in io.lines(la.data.path("vader/modest/train.jsonl")) do
      lines[#lines + 1] = line
      if #lines == 32 then break end
    end
    recipe.write_atomic(pairs_file, table.concat(lines, "\n") .. "\n")
    local r = run("gdpo", {name = "gdpo_lora", policy = out .. "/sft_lora", train = pairs_file, steps = 20,
                           eval = "vader/modest/validation.jsonl", eval_pairs = 32,
                           eval_prompts = "vader/prompts_test.jsonl",
                           batch_size = 16, lr = 5e-3, eval_every = 20, eval_samples = 2, lora = true, lora_r = 4,
                           grad_accum = 2, weights_dtype = "bfloat16", checkpoint = true})
    local margins = series(r, "rewards/margins")
    assert.is_true(margins[#margins] > margins[1], string.format("margin %.3f -> %.3f", margins[1], margins[#margins]))
    -- at step 0 the policy is its reference: the KL estimate is zero
    local rows = log.read(r.run:path("metrics.jsonl"))
    assert.is_true(math.abs(rows[1].kl) < 1e-4, "KL at the start " .. rows[1].kl)
    -- and it stays the base model while the adapters train: the KL moves off zero
    assert.is_true(math.abs(rows[#rows].kl) > 1e-3, "KL at the end " .. rows[#rows].kl)
    assert.is_true(r.run:exists("adapter/adapter_model.safetensors"))
    assert.has_error(function()
      run("gdpo", {name = "gdpo_bad", policy = out .. "/sft_lora", train = pairs_file, lora = true, sft_steps = 5})
    end)
  end)

  it("ppo with lora: the KL is taken against the policy with its adapters off", function()
    local rf = out .. "/reward_e.lua"     -- the letter e pays
    recipe.write_atomic(rf, "return function(prompt, response) return select(2, response:gsub('e', '')) / 4 end\n")
    local r = run("ppo", {name = "ppo_lora", policy = out .. "/sft_lora", reward = "script", reward_script = rf,
                          advantage = "rloo", rloo_k = 4, iterations = 4, batch_size = 16, mini_batch_size = 16,
                          max_new_tokens = 6, lr = 5e-3, eval_every = 4, eval_batch = 8, target_kl = 0,
                          lora = true, lora_r = 4, grad_accum = 2, checkpoint = true})
    local kl = series(r, "objective/kl")
    assert.is_true(math.abs(kl[1]) < 1e-4, "KL of the first rollout " .. kl[1])   -- adapters start at zero
    assert.is_true(math.abs(kl[#kl]) > 1e-4, "KL of the last rollout " .. kl[#kl])
    assert.is_true(r.run:exists("adapter/adapter_config.json"))
    assert.is_false(exists(r.run:path("merged/config.json")))
  end)

  it("rejects bad memory keys by name", function()
    assert.has_error(function() run("sft", with{name = "bad", weights_dtype = "int8"}) end,
      "argument 'weights_dtype=int8': weights_dtype must be 'bfloat16' or 'float16' or 'float32' (got 'int8')")
    assert.has_error(function() run("sft", with{name = "bad", checkpoint = "maybe"}) end)
  end)
end)
