-- recipes/ppo.lua -- RLHF with PPO: a policy generates responses to prompts,
-- a reward model (or a Lua function) scores them, and PPO raises the reward
-- while a per-token KL penalty keeps the policy near its starting point.
--
--   lualign recipes/ppo.lua policy=runs/sft reward_model=runs/reward      (lualign ppo --help)
--
-- Each iteration:
--   1. Rollout: sample responses to a batch of prompts (KV-cache generation).
--   2. Score: reward model (or reward_script) on prompt + response; a penalty
--      for responses that never emit EOS.
--   3. Per-token log-probs of the policy and the frozen reference; rewards
--      -kl_coef * KL on every token plus the score on the last one.
--   4. Advantages: GAE(gamma, lambda) with a value model, whitened -- or, with
--      advantage=rloo, k samples per prompt and the leave-one-out mean of the
--      other samples' rewards as the baseline (no value model).
--   5. ppo_epochs passes over mini-batches: clipped policy surrogate and
--      clipped value loss.  An adaptive KL coefficient steers the KL to a target.
-- Evaluation: mean reward and an independent judge's score (a lexicon the
-- reward model never saw) of the starting policy and of the trained one on
-- held-out prompts, with the KL to the reference.

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"
local L = la.loss

local config = recipe.config(arg, "ppo", recipe.with_memory_keys{
  {"policy", "runs/sft", "starting policy: a run folder (or its model.safetensors) or a Hugging Face model folder"},
  {"reference", "", "reference of the KL penalty, the same kinds (default: the starting policy)"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the policy's folder)"},
  {"reward_model", "runs/reward", "reward model (reward=model): a reward.lua run, or a sequence-classification folder"},
  {"reward", "model", "'model' (a trained reward model) or 'script' (a Lua function)"},
  {"reward_script", "", "Lua file returning function(prompt, response) -> score (reward=script)"},
  {"prompts", "sentiment/prompts_train.jsonl", "training prompts"},
  {"eval_prompts", "sentiment/prompts_test.jsonl", "held-out prompts"},
  {"advantage", "gae", "'gae' (value model) or 'rloo' (leave-one-out baseline, no value model)"},
  {"rloo_k", 4, "samples per prompt for rloo"},
  {"iterations", 40, "rollout/update iterations"},
  {"batch_size", 32, "responses per rollout"},
  {"mini_batch_size", 16, "responses per PPO update"},
  {"ppo_epochs", 2, "passes over each rollout"},
  {"max_new_tokens", 20, "response length cap"},
  {"temperature", 1.0, "sampling temperature of rollouts"},
  {"lr", 3e-5, "policy learning rate"},
  {"value_lr", 3e-4, "value model learning rate"},
  {"clip_eps", 0.2, "policy ratio clip"},
  {"value_clip_eps", 0.2, "value clip"},
  {"gamma", 1.0, "discount"},
  {"lam", 0.95, "GAE lambda"},
  {"kl_coef", 0.2, "KL penalty coefficient (the initial one when adaptive)"},
  {"kl_estimator", "k1", "per-token KL estimator: k1 or k3"},
  {"target_kl", 0.0, "adaptive KL: target KL per response (0: keep kl_coef fixed)"},
  {"kl_horizon", 200, "adaptive KL controller's horizon (rollouts)"},
  {"missing_eos_penalty", 1.0, "subtracted from the score of responses without EOS"},
  {"whiten_rewards", false, "whiten the per-token rewards before GAE"},
  {"grad_clip", 1.0, "gradient norm clip"},
  {"eval_every", 10, "iterations between held-out evaluations and checkpoints (0: none; a checkpoint at the end)"},
  {"eval_batch", 150, "held-out prompts per evaluation"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet
recipe.check_choice(config, "reward", {"model", "script"})
recipe.check_choice(config, "advantage", {"gae", "rloo"})
recipe.check_choice(config, "kl_estimator", {"k1", "k2", "k3"})

-- Models ------------------------------------------------------------------------
local policy_source = recipe.model_source(config.policy, "policy")   -- a lualign run or a Hugging Face folder
local tok, tok_dir = recipe.load_tokenizer(config.tokenizer, policy_source.dir)
local policy = recipe.prepare_model(recipe.load_model(policy_source), config)   -- lora, weights_dtype, checkpoint
if config.lora and config.reference ~= "" then
  error("ppo: reference=" .. config.reference .. " with lora: the reference is then the policy with its adapters off", 0)
end
local reference_source = config.reference ~= "" and recipe.model_source(config.reference, "reference") or policy_source
-- The reference for the KL: with lora the policy with its adapters off, else a frozen copy.
local with_ref = recipe.reference(policy, config, function() return recipe.load_model(reference_source) end)
local rm, score_fn, rm_source
if config.reward == "model" then
  rm_source = recipe.model_source(config.reward_model, "reward_model")
  rm = recipe.prepare_frozen(recipe.load_model(rm_source), config)
  if not rawget(rm, "reward_head") then
    error(string.format("reward_model: %s has no reward head (a reward.lua run or a sequence-classification folder)",
      config.reward_model), 0)
  end
else
  local chunk, err = loadfile(config.reward_script)
  if not chunk then error("reward_script: " .. err, 0) end
  score_fn = chunk()
  if type(score_fn) ~= "function" then
    error("reward_script: " .. config.reward_script .. " must return function(prompt, response) -> score", 0)
  end
end
local critic = config.advantage == "gae" and
  recipe.prepare_model(recipe.load_model(rm_source or policy_source, {value_head = true, reward_head = false}), config,
                       {modules_to_save = {"value_head"}}) or nil
local judge = la.data.judge()

local popt = la.optim.AdamW(policy, {lr = config.lr, weight_decay = 0})
local vopt = critic and la.optim.AdamW(critic, {lr = config.value_lr, weight_decay = 0})

-- Prompts --------------------------------------------------------------------------
-- Prompts longer than the context leaves room for keep their end.
local function prompt_ids(key)
  local path = recipe.data_file(config[key], key)
  local list, room, cut = {}, policy:max_positions() - config.max_new_tokens, 0
  for ex in la.data.prompts(path) do
    local ids = tok:encode(ex.prompt)
    if #ids > room then cut = cut + 1 end
    list[#list + 1] = {text = ex.prompt, ids = {table.unpack(ids, math.max(1, #ids - room + 1))}}
  end
  return list, {examples = #list, truncated = cut, name = path,
                limits = string.format("the context minus max_new_tokens = %d tokens", room)}
end
local train_prompts, train_info = prompt_ids("prompts")
local eval_prompts, eval_info = prompt_ids("eval_prompts")
local order = la.data.permutation(#train_prompts, config.seed, 1)
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = recipe.describe_data(config, "prompts", train_info)
for k, v in pairs(recipe.describe_data(config, "eval_prompts", eval_info)) do data_metrics[k] = v end

-- Data parallelism ---------------------------------------------------------------------
-- Under mpirun the ranks split each iteration's prompts (and the held-out
-- ones): each generates and scores its share, statistics over the batch are
-- summed across them, and the gradients of the losses, normalised over the
-- global token count, are summed during the backward pass.
local dist = la.dist
local dp = dist.data_parallel(policy)             -- rank 0's weights on every rank
local dp_critic = critic and dist.data_parallel(critic)
with_ref(dist.broadcast_parameters)               -- and rank 0's reference
local per_prompt = config.advantage == "rloo" and config.rloo_k or 1
local n_prompts = config.batch_size // per_prompt  -- prompts per iteration
if n_prompts < dist.size() then
  error(string.format("batch_size: %d prompts per iteration cannot be shared by %d processes", n_prompts,
    dist.size()), 0)
end

-- Rollouts ---------------------------------------------------------------------------
-- Generates responses; generate lays out prompt + response as one left-padded
-- row: ids (B, P+N), attention mask, position ids, and the response's mask (B, N).
-- Row b draws from a random stream seeded by seeds[b] -- the run's seed, the
-- iteration (0 for evaluations) and the row's place in the global batch, never
-- the rank -- so that splitting the batch across processes samples the same.
local function rollout(model, prompts, seeds)
  local lists = {}
  for i, p in ipairs(prompts) do lists[i] = p.ids end
  local out = model:generate(lists, recipe.sampling_options(tok, {max_new_tokens = config.max_new_tokens,
                                     temperature = config.temperature, seeds = seeds}))
  local texts = {}
  for b = 1, #prompts do texts[b] = tok:decode(out.sequences[b], {skip_special_tokens = true}) end
  local batch = out.batch
  return {ids = batch.ids, mask = batch.attention_mask, position_ids = batch.position_ids,
          response_mask = batch.response_mask, tokens = out.tokens, texts = texts,
          P = batch.prompt_length, N = batch.response_length, has_eos = out.finished, prompts = prompts}
end

-- Log-probs (B, N) of the response tokens under model, and the hidden states.
local function response_logprobs(model, r)
  local h = model:hidden(r.ids, {attention_mask = r.mask, position_ids = r.position_ids})
  local hr = h:narrow(2, r.P, r.N)                       -- states that predict response tokens
  local logits = model:logits(hr)
  if config.temperature ~= 1 then logits = logits / config.temperature end
  return L.token_logprobs(logits, r.tokens, r.response_mask), logits
end

local function scores_of(r)
  if rm then
    return la.no_grad(function()
      return rm:rewards(rm:hidden(r.ids, {attention_mask = r.mask, position_ids = r.position_ids}), r.mask)
    end)
  end
  local s = {}
  for b, text in ipairs(r.texts) do s[b] = score_fn(r.prompts[b].text, text) end
  return la.tensor(s, "float32")
end

local function judge_sum(texts)
  local total = 0
  for _, t in ipairs(texts) do total = total + judge:score(t) end
  return total
end

-- (x - mean) / sqrt(var + 1e-8) with the masked mean and unbiased variance of
-- the global batch (every rank's rows), as L.masked_whiten computes them for
-- one process's; shift_mean = false adds the mean back.
local function global_whiten(x, mask, shift_mean)
  return la.no_grad(function()
    local m = mask:float()
    local sums = dist.sum({m:sum():item(), (x * m):sum():item()})
    local n, mean = sums[1], sums[2] / sums[1]
    if n <= 1 then error(string.format("whiten: %g response tokens in the batch; more than 1 are needed", n), 0) end
    local var = dist.sum(((x - mean) ^ 2 * m):sum():item()) / (n - 1)
    local w = (x - mean) * (1 / math.sqrt(var + 1e-8))
    if shift_mean == false then w = w + mean end
    return w * mask:ne(0):float()
  end)
end

-- Held-out evaluation: sampling at the training temperature, with the same
-- draws at every evaluation; the ranks split the prompts.
local function evaluate(model)
  local n = math.min(config.eval_batch, #eval_prompts)
  local lo, hi = dist.share(n)
  local prompts, seeds = {}, {}
  for j = lo, hi do prompts[#prompts + 1], seeds[#seeds + 1] = eval_prompts[j], {config.seed, 0, j} end
  local sums = {0, 0, 0}
  local sample
  if #prompts > 0 then
    local r = rollout(model, prompts, seeds)
    sums[1] = la.no_grad(function()
      local lp = response_logprobs(model, r)
      local lr = with_ref(function(ref) return response_logprobs(ref, r) end)
      return ((lp - lr) * r.response_mask):sum():item()
    end)
    sums[2], sums[3], sample = scores_of(r):sum():item(), judge_sum(r.texts), r.texts[1]
  end
  sums = dist.sum(sums)
  return {reward = sums[2] / n, judge = sums[3] / n, kl = sums[1] / n, sample = sample}
end

-- Training -------------------------------------------------------------------------------
-- The value model and its optimizer share the policy's checkpoint, so a resumed run continues both.
local others = critic and {critic = {critic, vopt}} or nil
local start, extra = 0, {}
if config.resume then start, extra = run:restore_checkpoint(policy, popt, others) end
start, extra = start or 0, extra or {}
local kl_coef = extra.kl_coef or config.kl_coef
local before = extra.before or evaluate(policy)
print(string.format("ppo: starting policy: reward %.3f, judge %.3f on held-out prompts", before.reward, before.judge))

local logger = log.open(run, {total = config.iterations, start_step = start, every = 1,
  show = {"objective/scores", "objective/kl", "judge"}})
if start == 0 then logger:log(0, data_metrics) end
local lo, hi = dist.share(n_prompts)
local row_lo = (lo - 1) * per_prompt + 1                  -- this rank's rows of the global batch
local B_global = n_prompts * per_prompt
for it = start + 1, config.iterations do
  -- 1. this rank's prompts (the training order walked through, batch after batch) and rollouts
  local prompts, seeds = {}, {}
  for j = lo, hi do
    local p = train_prompts[order[((it - 1) * n_prompts + j - 1) % #order + 1]]
    for k = 1, per_prompt do
      prompts[#prompts + 1], seeds[#seeds + 1] = p, {config.seed, it, (j - 1) * per_prompt + k}
    end
  end
  local r = rollout(policy, prompts, seeds)
  local B = #prompts
  -- 2-3. scores, log-probs of policy and reference, values, per-token rewards
  local old_lp, ref_lp, old_values, entropy
  la.no_grad(function()
    local logits
    old_lp, logits = response_logprobs(policy, r)
    local ent = (L.entropy(logits, r.response_mask) * r.response_mask):sum():item()
    local sums = dist.sum({ent, r.response_mask:sum():item()})
    entropy = sums[1] / sums[2]
    ref_lp = with_ref(function(ref) return response_logprobs(ref, r) end)
    if critic then
      local h = critic:hidden(r.ids, {attention_mask = r.mask, position_ids = r.position_ids})
      old_values = critic:values(h):narrow(2, r.P, r.N)
    end
  end)
  local has_eos = {}
  for b = 1, B do has_eos[b] = r.has_eos[b] and 1 or 0 end
  local scores = scores_of(r)
  local rewards, rm_metrics = L.ppo_rewards(scores, old_lp, ref_lp, r.response_mask, {
    kl_coef = kl_coef, estimator = config.kl_estimator, has_eos = la.tensor(has_eos, "float32"),
    missing_eos_penalty = config.missing_eos_penalty})
  rm_metrics = dist.mean_metrics(rm_metrics, B)            -- the global batch's means
  -- 4. advantages
  local advantages, returns
  if config.advantage == "gae" then
    if config.whiten_rewards then rewards = global_whiten(rewards, r.response_mask, false) end
    advantages, returns = L.gae(rewards, old_values, r.response_mask, {gamma = config.gamma, lam = config.lam})
  else
    -- RLOO: sequence reward minus the mean of the other k-1 samples of its prompt.
    local seq = rewards:sum(2):view(B // per_prompt, per_prompt)
    local baseline = (seq:sum(2, true) - seq) / (per_prompt - 1)
    advantages = (seq - baseline):view(B, 1):expand(B, r.N):contiguous()
  end
  advantages = global_whiten(advantages, r.response_mask)
  -- 5. PPO epochs over mini-batches of the global batch; each rank takes the
  -- mini-batch's rows it holds, and the losses are means over the whole
  -- mini-batch's response tokens (grad_accum micro-batches)
  local stats = {}
  local function add(k, v) stats[k] = (stats[k] or 0) + v end
  local n_updates = 0
  local function tokens(m) return m.response_mask:sum():item() end
  for epoch = 1, config.ppo_epochs do
    local perm = la.data.permutation(B_global, config.seed + it, epoch)
    for s = 1, B_global, config.mini_batch_size do
      local idx = {}
      for k = s, math.min(B_global, s + config.mini_batch_size - 1) do
        local local_row = perm[k] - row_lo                  -- 0-based within this rank's rows
        if local_row >= 0 and local_row < B then idx[#idx + 1] = local_row end
      end
      local micro = {}
      if #idx > 0 then
        local index = la.tensor(idx, "int64")
        local function pick(t) return t:index_select(1, index) end
        local mb = {ids = pick(r.ids), mask = pick(r.mask), position_ids = pick(r.position_ids),
                    response_mask = pick(r.response_mask), tokens = pick(r.tokens), P = r.P, N = r.N,
                    old_lp = pick(old_lp), advantages = pick(advantages),
                    old_values = critic and pick(old_values), returns = critic and pick(returns)}
        micro = la.accumulate.split(mb, math.min(config.grad_accum, #idx))
      end
      popt:zero_grad()
      local pr = la.accumulate.run(micro, tokens, function(m)
        local lp = response_logprobs(policy, m)
        return L.ppo_policy(lp, m.old_lp, m.advantages, m.response_mask, {clip_eps = config.clip_eps})
      end, dp)
      local pnorm = la.optim.clip_grad_norm(policy, config.grad_clip)
      if recipe.finite_step(config, it, pr.loss, pnorm, logger) then popt:step() end
      add("loss/policy_avg", pr.loss)
      add("policy/clipfrac_avg", pr.metrics["policy/clipfrac_avg"])
      add("policy/approxkl_avg", pr.metrics["policy/approxkl_avg"])
      if critic then
        vopt:zero_grad()
        local vr = la.accumulate.run(micro, tokens, function(m)
          local h = critic:hidden(m.ids, {attention_mask = m.mask, position_ids = m.position_ids})
          local v = critic:values(h):narrow(2, r.P, r.N)
          return L.ppo_value(v, m.old_values, m.returns, m.response_mask, {clip_eps = config.value_clip_eps})
        end, dp_critic)
        local vnorm = la.optim.clip_grad_norm(critic, config.grad_clip)
        if recipe.finite_step(config, it, vr.loss, vnorm, logger) then vopt:step() end
        add("loss/value_avg", vr.loss)
        add("val/clipfrac_avg", vr.metrics["val/clipfrac_avg"])
      end
      n_updates = n_updates + 1
    end
  end
  -- Adaptive KL coefficient (Ziegler et al. 2019): proportional control toward target_kl.
  if config.target_kl > 0 then
    local err = math.max(-0.2, math.min(0.2, rm_metrics["objective/kl"] / config.target_kl - 1))
    kl_coef = kl_coef * (1 + err * B_global / config.kl_horizon)
  end
  local eos = 0
  for _, e in ipairs(has_eos) do eos = eos + e end
  local totals = dist.sum({judge_sum(r.texts), eos})
  local metrics = {judge = totals[1] / B_global, ["objective/entropy"] = entropy, kl_coef = kl_coef,
                   eos_rate = totals[2] / B_global}
  for k, v in pairs(rm_metrics) do metrics[k] = v end
  for k, v in pairs(stats) do metrics[k] = v / n_updates end
  local save = recipe.eval_due(config, it, config.iterations) or it == config.iterations
  if recipe.eval_due(config, it, config.iterations) then
    local ev = evaluate(policy)
    metrics.eval_reward, metrics.eval_judge, metrics.eval_kl = ev.reward, ev.judge, ev.kl
  end
  logger:log(it, metrics)   -- before the checkpoint, so a run killed in between redoes the iteration
  if save then
    if critic then run:save_model(critic, {step = it}, "value_model.safetensors") end
    run:save_checkpoint(policy, popt, it, {kl_coef = kl_coef,
      before = {reward = before.reward, judge = before.judge, kl = before.kl}}, others)
  end
  recipe.check_stop(config, it, logger)
end
logger:close()

-- Report ---------------------------------------------------------------------------------
local after = evaluate(policy)
local rows = log.read(run:path("metrics.jsonl"))
local xs, sc = log.series(rows, "objective/scores")
local _, kl = log.series(rows, "objective/kl")
local _, jd = log.series(rows, "judge")
local ex, er = log.series(rows, "eval_reward")
local _, ej = log.series(rows, "eval_judge")
plot.save_grid(run:path("curves.svg"), {
  plot.new{title = "reward-model score", xlabel = "iteration"}:line(xs, sc, {label = "rollouts", width = 1})
    :line(ex, er, {label = "held-out", markers = true}),
  plot.new{title = "judge score (held-out lexicon)", xlabel = "iteration"}:line(xs, jd, {label = "rollouts", width = 1})
    :line(ex, ej, {label = "held-out", markers = true}),
  plot.new{title = "KL to the reference (per response)", xlabel = "iteration"}:line(xs, kl, {label = "rollouts", width = 1}),
}, {cols = 3})
run:write("report.md", table.concat({
  "# PPO: " .. config.name, "",
  recipe.md_table({"held-out prompts", "reward model", "judge (lexicon)", "KL to reference"}, {
    {"starting policy", string.format("%.3f", before.reward), string.format("%.3f", before.judge), "0"},
    {"after PPO", string.format("%.3f", after.reward), string.format("%.3f", after.judge), string.format("%.3f", after.kl)},
  }), "", "![curves](curves.svg)", "",
  "A held-out sample before: " .. tostring(before.sample):gsub("\n", " "), "",
  "and after: " .. tostring(after.sample):gsub("\n", " "), "",
}, "\n"))
local saved = recipe.save_final(run, policy, config)   -- hf/ (save_pretrained), or with lora adapter/
print(string.format("ppo: held-out reward %.3f -> %.3f, judge %.3f -> %.3f, KL %.3f; report in %s",
  before.reward, after.reward, before.judge, after.judge, after.kl, run:path("report.md")))
return {before = before, after = after, run = run, saved = saved}
