-- Each recipe on a Hugging Face model folder: a tiny random Llama-family model
-- (untied LM head, grouped-query attention) with a tokenizer and a chat
-- template, written here; conversational data; a few steps each.  Every run
-- ends with a Hugging Face folder (or a LoRA adapter) that loads back to the
-- weights the run trained.
local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"
local h = require "helpers"

local out = h.tmpdir()
local base = out .. "/tiny-llama"

local function script(name) return "recipes/" .. name .. ".lua" end

local function with(extra)
  local t = {out_dir = out, eval_every = 0}
  for k, v in pairs(extra) do t[k] = v end
  return t
end

-- The first n lines of a bundled file, each turned into a JSON line by fn.
local function convert(rel, n, path, fn)
  local cjson = require "cjson"
  local lines = {}
  for line in io.lines(la.data.path(rel)) do
    if #lines == n then break end
    lines[#lines + 1] = recipe.json(fn(cjson.decode(line)))
  end
  return h.write(path, table.concat(lines, "\n") .. "\n")
end

local function user(text) return {{role = "user", content = text}} end
local function assistant(text) return {{role = "assistant", content = text}} end

-- The largest absolute difference between two tensors' values.
local function max_diff(a, b) return (a - b):abs():max():item() end

local ids = la.tensor({{5, 9, 33, 70, 2, 41, 8, 12}}, "int64")

describe("recipes on a Hugging Face model folder", function()
  local sft_chat, pref_chat, pref_eval, prompts
  setup(function()
    -- tokenizer: a small BPE on the bundled questions, with a chat template
    local texts = {}
    for line in io.lines(la.data.path("qa/train.jsonl")) do
      if #texts == 400 then break end
      texts[#texts + 1] = line
    end
    local tok = la.tokenizer.train(texts, {vocab_size = 384})
    assert(require("lualign.sys").mkdir(base))
    la.manual_seed(3)
    la.models.from_config{model_type = "llama", vocab_size = tok.vocab_size, hidden_size = 32,
      intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
      max_position_embeddings = 128, rms_norm_eps = 1e-5, tie_word_embeddings = false,
      bos_token_id = tok.bos_id, eos_token_id = tok:token_to_id("<|end|>")}:save_pretrained(base)
    tok:save(base)
    h.write(base .. "/tokenizer_config.json", recipe.json({
      eos_token = "<|end|>", pad_token = "<|pad|>", bos_token = "<|endoftext|>",
      chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        .. "{% if add_generation_prompt %}<|assistant|>{% endif %}"}))
    sft_chat = convert("qa/train.jsonl", 64, out .. "/sft_chat.jsonl", function(ex)
      return {messages = {user(ex.prompt)[1], assistant(ex.completion)[1]}}
    end)
    pref_chat = convert("vader/modest/train.jsonl", 48, out .. "/pref_chat.jsonl", function(ex)
      return {prompt = user(ex.prompt), chosen = assistant(ex.chosen), rejected = assistant(ex.rejected), p = ex.p}
    end)
    pref_eval = convert("vader/modest/validation.jsonl", 16, out .. "/pref_eval.jsonl", function(ex)
      return {prompt = user(ex.prompt), chosen = assistant(ex.chosen), rejected = assistant(ex.rejected), p = ex.p}
    end)
    prompts = convert("vader/prompts_test.jsonl", 4, out .. "/prompts.jsonl", function(ex) return ex end)
  end)
  teardown(function() os.execute("rm -rf '" .. out .. "'") end)

  it("sft trains the folder's model on chat data and writes a Hugging Face folder that loads back", function()
    local r = recipe.run_script(script("sft"), with{name = "sft", base = base, train = sft_chat, eval_fraction = 0.25,
      steps = 6, batch_size = 8, max_len = 64, lr = 3e-3, eval_every = 3, eval_examples = 16, samples = 1})
    assert.is_true(r.valid_loss < r.base_loss, string.format("%.3f -> %.3f", r.base_loss, r.valid_loss))
    -- a quarter of the 64 questions held out, none of them trained on
    local rows = log.read(r.run:path("metrics.jsonl"))
    local held = 64 - rows[1]["train/examples"]
    assert.is_true(held >= 8 and held <= 24, "held out " .. held)
    assert.are.equal(out .. "/sft/hf", r.saved)
    local back = la.models.from_pretrained(r.saved)
    local trained = recipe.load_model(out .. "/sft")
    assert.are.equal("llama", back.config.model_type)
    assert.are.equal(0, max_diff(back(ids), trained(ids)))
    -- and the weights moved: not the base model written back
    assert.is_true(max_diff(back(ids), la.models.from_pretrained(base)(ids)) > 1e-3)
    local tok = la.tokenizer.load(r.saved)
    assert.is_truthy(tok.chat_template and tok.chat_template:find("add_generation_prompt", 1, true))
    assert.are.equal(tok:token_to_id("<|end|>"), tok.eos_id)
  end)

  it("reward starts from the folder and writes a sequence-classification folder", function()
    local r = recipe.run_script(script("reward"), with{name = "rm", base = base, train = pref_chat,
      valid = pref_eval, test = "", steps = 4, batch_size = 8, max_len = 48})
    local cfg = require("lualign.models.hf").read_json(r.saved .. "/config.json")
    assert.are.same({"LlamaForSequenceClassification"}, cfg.architectures)
    local back = la.models.from_pretrained(r.saved)
    local trained = recipe.load_model(out .. "/rm")
    local mask = la.ones(1, 8)
    local bias = trained.reward_head.bias:item()
    local want = trained:rewards(trained:hidden(ids), mask):item() - bias
    h.near(back:rewards(back:hidden(ids), mask):item(), want, 1e-6, "reward of the folder")
  end)

  it("gdpo trains a Hugging Face policy against a Hugging Face reference and writes it", function()
    local r = recipe.run_script(script("gdpo"), with{name = "dpo", policy = out .. "/sft/hf", reference = base,
      train = pref_chat, eval = pref_eval, loss = "dpo", steps = 4, batch_size = 8, max_len = 48})
    local back = la.models.from_pretrained(r.saved)
    assert.are.equal(0, max_diff(back(ids), recipe.load_model(out .. "/dpo")(ids)))
  end)

  it("gdpo with lora writes a PEFT adapter that loads onto the policy's folder", function()
    local r = recipe.run_script(script("gdpo"), with{name = "dpo_lora", policy = base, train = pref_chat,
      eval = pref_eval, loss = "dpo", steps = 3, batch_size = 8, max_len = 48, lora = true, lora_r = 4,
      lr = 1e-2})
    assert.are.equal(out .. "/dpo_lora/adapter", r.saved)
    local m = la.models.from_pretrained(base)
    la.lora.load(m, r.saved)
    local merged = recipe.load_model(out .. "/dpo_lora")   -- model.safetensors: the merged weights
    assert.is_true(max_diff(m(ids), merged(ids)) < 1e-4)
    assert.is_true(max_diff(m(ids), la.models.from_pretrained(base)(ids)) > 1e-4)
  end)

  it("simpo on a held-out split of the training file, judged by a Lua function", function()
    -- questions with their answer as chosen and another question's answer as rejected:
    -- 96 distinct prompts, a quarter of them held out with their pairs
    local qa = {}
    for line in io.lines(la.data.path("qa/train.jsonl")) do
      if #qa == 97 then break end
      qa[#qa + 1] = require("cjson").decode(line)
    end
    local lines = {}
    for i = 1, 96 do
      lines[i] = recipe.json({prompt = user(qa[i].prompt), chosen = assistant(qa[i].completion),
                              rejected = assistant(qa[i + 1].completion)})
    end
    local own = h.write(out .. "/qa_pairs.jsonl", table.concat(lines, "\n") .. "\n")
    local judge = h.write(out .. "/judge.lua", "return function(prompt, response) return #response end\n")
    local r = recipe.run_script(script("gdpo"), with{name = "simpo", policy = out .. "/sft/hf", train = own,
      eval_fraction = 0.25, judge = judge, loss = "simpo", beta = 2, simpo_gamma = 0.5, steps = 4, batch_size = 8,
      max_len = 64, eval_every = 2, eval_samples = 2, eval_prompt_count = 4, best_by = "win_rate"})
    local rows = log.read(r.run:path("metrics.jsonl"))
    local n_train, n_eval = rows[1]["train/examples"], rows[1]["eval/examples"]
    assert.are.equal(96, n_train + n_eval)
    assert.is_true(n_eval >= 12 and n_eval <= 36, "held out " .. n_eval)
    for _, key in ipairs({"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "kl", "win_rate"}) do
      assert.is_number(r.last[key], key)
    end
    -- SimPO has no reference log-probs to compute
    assert.is_false(r.run:exists("ref_logps.safetensors"))
    assert.is_true(r.run:exists("best.safetensors"))
    local report = h.read(r.run:path("report.md"))
    assert.is_truthy(report:find(judge, 1, true))
    assert.is_truthy(report:find("highest win rate", 1, true))
  end)

  it("ipo with length-normalised log-probs, judged by the reward model's folder", function()
    local r = recipe.run_script(script("gdpo"), with{name = "ipo_avg", policy = out .. "/sft/hf", train = pref_chat,
      eval = pref_eval, loss = "ipo", average = true, judge = out .. "/rm/hf", steps = 2, batch_size = 8,
      max_len = 48, eval_every = 2, eval_samples = 2, eval_prompt_count = 2})
    assert.is_number(r.last.win_rate)
    assert.is_number(r.last.judge)
    -- the reference log-probs are per-token means: far smaller in size than sums over the completions
    local ref = la.checkpoint.load(r.run:path("ref_logps.safetensors"))
    local per_token = -math.log(la.models.from_pretrained(base).config.vocab_size)
    assert.is_true(ref.chosen:mean():item() > 2 * per_token, "mean reference log-prob " .. ref.chosen:mean():item())
  end)

  it("ppo runs a Hugging Face policy against a sequence-classification reward folder", function()
    local r = recipe.run_script(script("ppo"), with{name = "ppo", policy = out .. "/sft/hf",
      reward_model = out .. "/rm/hf", prompts = prompts, eval_prompts = prompts, iterations = 2, batch_size = 4,
      mini_batch_size = 4, max_new_tokens = 4, eval_batch = 4})
    local back = la.models.from_pretrained(r.saved)
    assert.are.equal(0, max_diff(back(ids), recipe.load_model(out .. "/ppo")(ids)))
    local rows = log.read(r.run:path("metrics.jsonl"))
    assert.is_number(rows[#rows]["objective/scores"])
  end)

  it("grpo runs a Hugging Face policy with a Lua reward and a sequence-classification reward folder", function()
    local reward = h.write(out .. "/short.lua", "return function(prompt, completion) return -#completion / 10 end\n")
    local r = recipe.run_script(script("grpo"), with{name = "grpo", policy = out .. "/sft/hf", reward_script = reward,
      reward_model = out .. "/rm/hf", prompts = prompts, eval_prompts = prompts, source_prefix = "",
      prompt_format = "%s", iterations = 2, prompts_per_step = 2, num_generations = 2, max_new_tokens = 4,
      eval_examples = 2, eval_samples = 2})
    local back = la.models.from_pretrained(r.saved)
    assert.are.equal(0, max_diff(back(ids), recipe.load_model(out .. "/grpo")(ids)))
    local rows = log.read(r.run:path("metrics.jsonl"))
    assert.is_number(rows[#rows]["rewards/reward_model"])
    assert.is_number(rows[#rows]["rewards/short"])
  end)
end)

describe("reward models as sequence-classification folders", function()
  local dir = h.tmpdir()
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)
  local ids = la.tensor({{3, 7, 1, 9, 4}}, "int64")
  local mask = la.ones(1, 5)

  for _, case in ipairs({
    {"gpt2", function() return la.models.gpt{vocab_size = 16, n_positions = 8, n_embd = 8, n_layer = 1, n_head = 2,
                                             reward_head = true} end, "GPT2ForSequenceClassification"},
    {"llama", function() return la.models.from_config{model_type = "llama", vocab_size = 16, hidden_size = 8,
      intermediate_size = 16, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1,
      max_position_embeddings = 8, tie_word_embeddings = false, reward_head = true} end,
      "LlamaForSequenceClassification"},
  }) do
    it(case[1] .. ": score.weight is the reward head, the trunk is the same, the bias is left out", function()
      la.manual_seed(5)
      local m = case[2]()
      la.no_grad(function() m.reward_head.bias:fill(0.25) end)
      local out = dir .. "/" .. case[1]
      m:save_pretrained(out, {reward_model = true})
      local cfg = require("lualign.models.hf").read_json(out .. "/config.json")
      assert.are.same({case[3]}, cfg.architectures)
      local names = la.checkpoint.header(out .. "/model.safetensors").names
      local has = {}
      for _, n in ipairs(names) do has[n] = true end
      assert.is_true(has["score.weight"])
      assert.is_nil(has["lm_head.weight"])
      local back = la.models.from_pretrained(out)
      h.near(back:rewards(back:hidden(ids), mask):item(), m:rewards(m:hidden(ids), mask):item() - 0.25, 1e-5, "reward")
      -- the trunk alone, e.g. to start a value model
      local trunk = la.models.from_pretrained(out, {reward_head = false, value_head = true})
      assert.is_nil(rawget(trunk, "reward_head"))
      assert.are.equal(0, (trunk:hidden(ids) - m:hidden(ids)):abs():max():item())
      h.fails_with("save_pretrained: reward_model = true, but the model has no reward head",
        function() trunk:save_pretrained(dir .. "/none", {reward_model = true}) end)
    end)
  end
end)
