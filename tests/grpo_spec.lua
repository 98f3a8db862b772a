-- GRPO: the group advantages and the loss (lualign.loss) against hand
-- computations, the bundled rewards, and recipes/grpo.lua end to end on a
-- miniature model: its reward rises, it resumes to the same metrics.
local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"
local rewards = require "lualign.rewards"
local loss = la.loss

local h = require "helpers"
local near, fails_with = h.near, h.fails_with

describe("GRPO advantages", function()
  it("are (r - group mean) / (unbiased group std + 1e-4), or r - mean unscaled", function()
    local r = la.tensor({{1, 0, 0, 1}, {2, 2, 2, 2}, {0, 1, 2, 3}}, "float32")
    local a, flat = loss.grpo_advantages(r)
    -- group 1: mean 0.5, std sqrt(4 * 0.25 / 3) = 0.57735; group 3: mean 1.5, std sqrt(5 / 3) = 1.29099
    local s1, s3 = math.sqrt(1 / 3), math.sqrt(5 / 3)
    local expected = {{0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), 0.5 / (s1 + 1e-4)},
                      {0, 0, 0, 0},
                      {-1.5 / (s3 + 1e-4), -0.5 / (s3 + 1e-4), 0.5 / (s3 + 1e-4), 1.5 / (s3 + 1e-4)}}
    local got = a:totable()
    for g = 1, 3 do for k = 1, 4 do near(got[g][k], expected[g][k], 1e-6, "advantage " .. g .. "," .. k) end end
    near(flat, 1 / 3, 1e-7, "share of groups with equal rewards")
    local u = loss.grpo_advantages(r, {scale = false}):totable()
    near(u[1][1], 0.5, 1e-7); near(u[3][1], -1.5, 1e-7); near(u[2][3], 0, 1e-7)
  end)

  it("refuses groups of one and unknown options", function()
    fails_with("at least 2 samples per group", function() loss.grpo_advantages(la.zeros(3, 1)) end)
    fails_with("did you mean 'scale'", function() loss.grpo_advantages(la.zeros(2, 2), {scaled = false}) end)
  end)
end)

describe("GRPO loss", function()
  -- Two completions of 3 and 2 tokens (the third position of the second is padding).
  local mask = la.tensor({{1, 1, 1}, {1, 1, 0}}, "float32")
  local lp0 = {{-1.0, -0.5, -2.0}, {-0.3, -1.2, 0}}
  local old = la.tensor({{-1.1, -0.2, -2.0}, {-0.3, -1.5, 0}}, "float32")   -- ratios e^0.1, e^-0.3, 1; 1, e^0.3
  local ref = la.tensor({{-0.9, -0.6, -1.5}, {-0.5, -1.2, 0}}, "float32")
  local adv = la.tensor({1.5, -0.8}, "float32")
  local eps, beta = 0.2, 0.1

  -- The per-token loss and its derivative in logp, by hand.
  local function token(b, t)
    local lp, o, rf, A = lp0[b][t], old:totable()[b][t], ref:totable()[b][t], adv:totable()[b]
    local rho = math.exp(lp - o)
    local rc = math.min(math.max(rho, 1 - eps), 1 + eps)
    local s1, s2 = rho * A, rc * A
    local l = -math.min(s1, s2)
    local dl = (s1 <= s2) and -A * rho or 0                 -- the clipped branch has no gradient
    local d = rf - lp
    local k3 = math.exp(d) - d - 1
    return l + beta * k3, dl + beta * (1 - math.exp(d)), k3, (s2 < s1) and 1 or 0
  end

  for _, case in ipairs({
    {"grpo", function(b, n) return 1 / (n[b] * 2) end},
    {"token", function() return 1 / 5 end},
    {"dr_grpo", function() return 1 / (4 * 2) end},     -- max_tokens 4, 2 completions
  }) do
    local loss_type, weight = case[1], case[2]
    it("is the clipped surrogate plus beta k3, averaged as loss_type='" .. loss_type .. "' says", function()
      local lp = la.tensor(lp0, "float32"):requires_grad()
      local l, m = loss.grpo(lp, old, adv, mask, {clip_eps = eps, beta = beta, ref_logprobs = ref,
                                                   loss_type = loss_type, max_tokens = 4})
      l:backward()
      local n = {3, 2}
      local total, grads = 0, lp.grad:totable()
      local kl, clipped, per_completion = 0, 0, loss_type ~= "token"
      for b = 1, 2 do
        for t = 1, n[b] do
          local lt, dl, k3, c = token(b, t)
          total = total + lt * weight(b, n)
          near(grads[b][t], dl * weight(b, n), 1e-5, "gradient " .. b .. "," .. t)
          local mw = per_completion and 1 / (n[b] * 2) or 1 / 5
          kl, clipped = kl + k3 * mw, clipped + c * mw
        end
      end
      near(grads[2][3], 0, 1e-9, "padding gets no gradient")
      near(l:item(), total, 1e-5, "loss")
      near(m.kl, kl, 1e-5, "kl")
      near(m.clip_ratio, clipped, 1e-6, "clip_ratio")
      assert.are.equal(loss_type == "token" and 5 or 2, m.units)
    end)
  end

  it("clips on the side the advantage pushes: one token here of five", function()
    -- token (1,2): ratio e^-0.3 = 0.74 < 0.8 but A > 0 (no clip); token (2,2): ratio e^0.3 = 1.35 > 1.2 with
    -- A < 0 (no clip either); a positive advantage with ratio 1.35 is clipped
    local _, m = loss.grpo(la.tensor(lp0, "float32"), old, la.tensor({1.5, 0.8}, "float32"), mask, {loss_type = "token"})
    near(m.clip_ratio, 1 / 5, 1e-7)
    local _, m0 = loss.grpo(la.tensor(lp0, "float32"), old, adv, mask, {loss_type = "token"})
    near(m0.clip_ratio, 0, 1e-9)
  end)

  it("with beta = 0 needs no reference, and checks its options", function()
    local l = loss.grpo(old:clone(), old, adv, mask)
    -- ratio 1 everywhere: the loss is -mean over completions of A
    near(l:item(), -(1.5 - 0.8) / 2, 1e-6)
    fails_with("beta > 0 needs opts.ref_logprobs", function() loss.grpo(old, old, adv, mask, {beta = 0.1}) end)
    fails_with("loss_type must be 'grpo', 'token' or 'dr_grpo' (got 'bnpo')",
      function() loss.grpo(old, old, adv, mask, {loss_type = "bnpo"}) end)
    fails_with("needs opts.max_tokens", function() loss.grpo(old, old, adv, mask, {loss_type = "dr_grpo"}) end)
    fails_with("advantages must be (B,) = (2,)", function() loss.grpo(old, old, la.zeros(2, 3), mask) end)
  end)
end)

describe("generate with a random stream per row", function()
  it("samples a row the same whatever rows share its batch, and not from the global generator", function()
    la.manual_seed(5)
    local m = la.models.gpt{vocab_size = 50, n_positions = 32, n_embd = 16, n_layer = 1, n_head = 2}
    local opts = {max_new_tokens = 12, temperature = 1.5}
    local function gen(prompts, seeds, seed)
      la.manual_seed(seed)
      local o = {seeds = seeds}
      for k, v in pairs(opts) do o[k] = v end
      return m:generate(prompts, o).sequences
    end
    local together = gen({{1, 2, 3}, {4, 5}, {6}}, {{7, 1}, {7, 2}, 9}, 1)
    local alone = gen({{4, 5}}, {{7, 2}}, 2)
    local pair = gen({{6}, {1, 2, 3}}, {9, {7, 1}}, 3)
    assert.are.same(together[2], alone[1])
    assert.are.same(together[3], pair[1])
    assert.are.same(together[1], pair[2])
    -- other seeds draw other tokens (12 tokens at temperature 1.5 from 50: alike by chance ~never)
    assert.are_not.same(together[2], gen({{4, 5}}, {{7, 3}}, 2)[1])
    fails_with("seeds must be a list of one seed per row (2 rows; got 1 seeds)",
      function() m:generate({{1}, {2}}, {max_new_tokens = 2, seeds = {1}}) end)
    fails_with("generate: seeds[1]: rng: seeds must be integers, got 0.5",
      function() m:generate({{1}}, {max_new_tokens = 2, seeds = {0.5}}) end)
  end)
end)

describe("bundled rewards", function()
  it("exact_match compares the completion's first line with the answer, trimmed", function()
    local em = rewards.load("exact_match")
    assert.are.equal(1, em("What is 8 x 5?", " 40\nQuestion: ...", {completion = "40"}))
    assert.are.equal(0, em("What is 8 x 5?", " 400", {completion = "40"}))
    assert.are.equal(1, em("Capital?", " Santa Fe ", {answer = "Santa Fe"}))
    assert.are.equal(0, em("Capital?", " santa fe", {answer = "Santa Fe"}))
    fails_with('no "answer" or "completion" field', function() em("p", "x", {prompt = "p"}) end)
    fails_with("did you mean 'exact_match'", function() rewards.load("exact_mach") end)
  end)
end)

describe("recipes/grpo.lua on a miniature model", function()
  local out = h.tmpdir()
  teardown(function() os.execute("rm -rf '" .. out .. "'") end)
  local reward_e
  setup(function()
    recipe.run_script("recipes/pretrain.lua", {out_dir = out, name = "pre", n_layer = 1, n_embd = 32, n_head = 2,
      context = 64, vocab_size = 320, batch_size = 8, eval_batches = 4, steps = 40, eval_every = 20, warmup = 5})
    recipe.run_script("recipes/sft.lua", {out_dir = out, name = "sft", base = out .. "/pre", steps = 40,
      eval_every = 20, batch_size = 8, max_len = 64, eval_examples = 32, samples = 2})
    -- a reward that asks for the letter e (a quarter per e): easy to learn
    reward_e = h.write(out .. "/reward_e.lua",
      "return function(prompt, response) local _, n = response:gsub('e', '') return n / 4 end\n")
  end)

  local function mean_of(rows, key, from, to)
    local s = 0
    for i = from, to do s = s + rows[i][key] end
    return s / (to - from + 1)
  end

  it("raises a scripted reward on its rollouts and on held-out prompts", function()
    local r = recipe.run_script("recipes/grpo.lua", {out_dir = out, name = "grpo", policy = out .. "/sft",
      reward_script = reward_e, source_prefix = "", iterations = 24, eval_every = 12, prompts_per_step = 4,
      num_generations = 4, eval_examples = 32, eval_samples = 2, max_new_tokens = 8, lr = 1e-3})
    local rows = {}
    for _, row in ipairs(log.read(r.run:path("metrics.jsonl"))) do if row.reward then rows[#rows + 1] = row end end
    assert.are.equal(24, #rows)
    -- The rollout reward goes from about 0.30 to 0.73 (first and last 6 iterations).  Each iteration's
    -- mean is over 16 completions whose rewards have a standard deviation of about 0.3, so a mean of 6
    -- iterations varies by about 0.03 without learning: a rise of 0.15 is 3.5 standard deviations of the
    -- difference; a loss of the wrong sign lowers the reward.
    local first, last = mean_of(rows, "reward", 1, 6), mean_of(rows, "reward", 19, 24)
    assert.is_true(last > first + 0.15, string.format("rollout reward %.3f -> %.3f", first, last))
    -- held out: the same draws before and after, so a policy that does not learn gains nothing
    assert.is_true(r.after.sampled > r.before.sampled + 0.15,
      string.format("held-out sampled reward %.3f -> %.3f", r.before.sampled, r.after.sampled))
    assert.is_true(rows[24].kl > 0, "the policy moved away from the reference")
    for _, f in ipairs({"config.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors",
                        "tokenizer.json", "curves.svg", "report.md"}) do
      assert.is_true(r.run:exists(f), f)
    end
  end)

  it("resumes to the same metrics as an uninterrupted run (beta = 0, Dr. GRPO)", function()
    local args = {out_dir = out, name = "full", policy = out .. "/sft", reward_script = reward_e, source_prefix = "",
      iterations = 6, eval_every = 3, prompts_per_step = 3, num_generations = 3, eval_examples = 8, eval_samples = 2,
      max_new_tokens = 6, lr = 1e-3, beta = 0, scale_rewards = false, loss_type = "dr_grpo"}
    recipe.run_script("recipes/grpo.lua", args)
    local rows = log.read(out .. "/full/metrics.jsonl")
    assert.is_nil(rows[#rows].kl, "beta = 0: no reference, no KL")
    args.name, args.stop_at = "cut", 3
    assert.has_error(function() recipe.run_script("recipes/grpo.lua", args) end, "cut: stopped after step 3 (stop_at)")
    args.stop_at, args.resume = 0, true
    recipe.run_script("recipes/grpo.lua", args)
    assert.are.equal(h.read(out .. "/full/metrics.jsonl"), h.read(out .. "/cut/metrics.jsonl"))
  end)

  it("weighs a reward function and a reward model, and trains LoRA adapters against the adapters-off reference", function()
    recipe.run_script("recipes/reward.lua", {out_dir = out, name = "rm", base = out .. "/pre", steps = 4,
      eval_every = 0, batch_size = 8, max_len = 48})
    local r = recipe.run_script("recipes/grpo.lua", {out_dir = out, name = "mixed", policy = out .. "/sft",
      reward_script = reward_e, reward_model = out .. "/rm", reward_weights = "1,0.5", source_prefix = "",
      iterations = 2, eval_every = 0, prompts_per_step = 2, num_generations = 3, eval_examples = 4, eval_samples = 2,
      max_new_tokens = 6, lora = true, lora_r = 4})
    for _, row in ipairs(log.read(r.run:path("metrics.jsonl"))) do
      if row.reward then
        near(row.reward, row["rewards/reward_e"] + 0.5 * row["rewards/reward_model"], 1e-5, "weighted reward")
        assert.is_true(row["rewards/reward_model"] ~= 0)
      end
    end
    near(r.after.sampled, r.after.parts.reward_e.sampled + 0.5 * r.after.parts.reward_model.sampled, 1e-5)
    assert.is_true(r.run:exists("adapter/adapter_model.safetensors"))
  end)

  it("gives the same run with grad_accum = 4 (uneven micro-batches) as with whole batches, for each loss_type", function()
    for _, loss_type in ipairs({"grpo", "token"}) do
      local args = {out_dir = out, policy = out .. "/sft", reward_script = reward_e, source_prefix = "",
        iterations = 3, eval_every = 0, prompts_per_step = 2, num_generations = 3, eval_examples = 2, eval_samples = 2,
        max_new_tokens = 6, lr = 1e-3, loss_type = loss_type}
      args.name = "whole_" .. loss_type
      recipe.run_script("recipes/grpo.lua", args)
      args.name, args.grad_accum = "accum_" .. loss_type, 4   -- 6 completions: micro-batches of 2, 2, 1, 1
      recipe.run_script("recipes/grpo.lua", args)
      local a, b = log.read(out .. "/whole_" .. loss_type .. "/metrics.jsonl"), log.read(out .. "/accum_" .. loss_type .. "/metrics.jsonl")
      assert.are.equal(#a, #b)
      for i = 2, #a do
        for _, k in ipairs({"reward", "loss", "kl", "grad_norm"}) do
          near(b[i][k], a[i][k], 1e-4, string.format("%s, iteration %d, %s", loss_type, i - 1, k))
        end
      end
    end
  end)

  it("names bad reward settings", function()
    local base = {out_dir = out, name = "bad", policy = out .. "/sft", overwrite = true}
    local function with(t) local a = {} for k, v in pairs(base) do a[k] = v end for k, v in pairs(t) do a[k] = v end return a end
    fails_with("reward_script: no such file: nope.lua", function()
      recipe.run_script("recipes/grpo.lua", with{reward_script = "nope.lua"}) end)
    fails_with("reward_weights: 2 weights for 1 rewards", function()
      recipe.run_script("recipes/grpo.lua", with{reward_weights = "1,2"}) end)
    fails_with("loss_type must be one of grpo, token, dr_grpo (got 'dapo')", function()
      recipe.run_script("recipes/grpo.lua", with{loss_type = "dapo"}) end)
    fails_with("num_generations must be at least 2", function()
      recipe.run_script("recipes/grpo.lua", with{num_generations = 1}) end)
  end)
end)
