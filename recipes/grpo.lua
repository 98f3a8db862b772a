-- recipes/grpo.lua -- GRPO (Group Relative Policy Optimization, Shao et al.
-- 2024): for each prompt the policy samples a group of K completions; each
-- completion's advantage is its reward relative to its group's, so no value
-- model is needed.  Rewards come from Lua functions (verifiable rewards: an
-- exact answer, a format) and/or a reward model.
--
--   lualign recipes/grpo.lua policy=runs/sft              (lualign grpo --help)
--
-- Each iteration:
--   1. Rollout: prompts_per_step prompts, num_generations completions each
--      (KV-cache sampling; each prompt's random stream is seeded from the
--      seed, the iteration and the prompt's place in the iteration, so it is
--      the same in one process or split across several).
--   2. Score: the weighted sum of the reward functions and the reward model.
--   3. Advantages: A = (r - mean of the group) / (std of the group + 1e-4),
--      or r - mean with scale_rewards=false (Dr. GRPO).
--   4. num_iterations optimizer steps over the batch: the clipped surrogate
--      per token against the log-probs of the policy that sampled, plus
--      beta times the k3 KL estimate against the reference (beta=0: no
--      reference is loaded), averaged as loss_type says (docs/grpo.md).
-- Evaluation: the rewards of greedy and of sampled completions of held-out
-- prompts, before training and every eval_every iterations; with the bundled
-- task (exact_match on quiz questions) that is the exact-match accuracy.
-- Under mpirun the ranks split each iteration's prompts and the held-out
-- prompts; gradients and counts are summed across them (docs/distributed.md).

local la = require "lualign"
local recipe = require "lualign.recipe"
local rewards = require "lualign.rewards"
local plot = require "lualign.plot"
local log = require "lualign.log"
local L = la.loss
local dist = la.dist

local config = recipe.config(arg, "grpo", recipe.with_memory_keys{
  {"policy", "runs/sft", "starting policy: a run folder (or its model.safetensors) or a Hugging Face model folder"},
  {"reference", "", "reference of the KL penalty, the same kinds (default: the starting policy)"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the policy's folder)"},
  {"prompts", "qa/train.jsonl", "training prompts: JSONL with \"prompt\" and what the rewards read (\"completion\" or \"answer\", ...)"},
  {"eval_prompts", "qa/validation.jsonl", "held-out prompts"},
  {"source_prefix", "quiz/", "keep only examples whose \"source\" field starts with this (empty: every example)"},
  {"prompt_format", "Question: %s\nAnswer:", "how a prompt is written (%s: the prompt)"},
  {"reward_script", "exact_match", "reward functions, comma-separated: built-in names (exact_match) or Lua files "
   .. "returning function(prompt, completion, example) -> number"},
  {"reward_model", "", "a reward model whose score is one more reward: a reward.lua run or a sequence-classification "
   .. "folder (empty: none)"},
  {"reward_weights", "", "weights of the rewards, comma-separated, the scripts' then the model's (empty: all 1)"},
  {"num_generations", 8, "completions sampled per prompt (the group size K)"},
  {"prompts_per_step", 16, "prompts per iteration"},
  {"iterations", 60, "rollout/update iterations"},
  {"num_iterations", 2, "optimizer steps (passes) over each iteration's completions"},
  {"max_new_tokens", 12, "completion length cap"},
  {"temperature", 1.0, "sampling temperature of rollouts (the log-probs are taken at the same temperature)"},
  {"lr", 3e-5, "learning rate (AdamW, constant)"},
  {"clip_eps", 0.2, "ratio clip: [1 - clip_eps, 1 + clip_eps_high]"},
  {"clip_eps_high", 0.0, "upper clip (0: the same as clip_eps)"},
  {"beta", 0.04, "coefficient of the k3 KL to the reference (0: no reference model is loaded)"},
  {"scale_rewards", true, "divide advantages by the group's reward std (false: Dr. GRPO's unscaled advantages)"},
  {"loss_type", "grpo", "averaging of token losses: grpo (per completion, then over completions), token "
   .. "(over every token), dr_grpo (per-completion sums / max_new_tokens)"},
  {"grad_clip", 1.0, "clip the global gradient norm (0: off)"},
  {"eval_every", 20, "iterations between held-out evaluations and checkpoints (0: none; a checkpoint at the end)"},
  {"eval_examples", 200, "held-out prompts per evaluation"},
  {"eval_samples", 4, "sampled completions per held-out prompt (besides the greedy one)"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet
recipe.check_choice(config, "loss_type", {"grpo", "token", "dr_grpo"})
if config.num_generations < 2 then error("num_generations must be at least 2 (a group of one has no baseline)", 0) end
if config.num_iterations < 1 then error("num_iterations must be at least 1", 0) end
if config.prompts_per_step < dist.size() then
  error(string.format("prompts_per_step (%d) must be at least the number of processes (%d)",
    config.prompts_per_step, dist.size()), 0)
end
-- Every field of a prompt's line goes to the reward functions: none is ignored.
la.data.on_ignored_fields(function() end)

-- Models ------------------------------------------------------------------------
local policy_source = recipe.model_source(config.policy, "policy")   -- a lualign run or a Hugging Face folder
local tok, tok_dir = recipe.load_tokenizer(config.tokenizer, policy_source.dir)
local policy = recipe.prepare_model(recipe.load_model(policy_source), config)   -- lora, weights_dtype, checkpoint
if config.lora and config.reference ~= "" then
  error("grpo: reference=" .. config.reference .. " with lora: the reference is then the policy with its adapters off", 0)
end
local reference_source = config.reference ~= "" and recipe.model_source(config.reference, "reference") or policy_source
local dp = dist.data_parallel(policy)   -- under mpirun: rank 0's weights on every rank
-- Dropout stays off throughout: the ratio to the sampling policy must compare
-- the function that sampled with itself.
policy:eval()
-- The reference for the KL (beta > 0): with lora the policy with its adapters off, else a frozen copy.
local with_ref = config.beta > 0 and recipe.reference(policy, config, function() return recipe.load_model(reference_source) end)
if with_ref then with_ref(dist.broadcast_parameters) end   -- under mpirun: rank 0's reference everywhere

-- Rewards: functions (by name or file), then the reward model; and their weights.
local reward_fns = {}
for name in config.reward_script:gmatch("[^,%s]+") do
  reward_fns[#reward_fns + 1] = {name = name:match("([^/]+)%.lua$") or name, fn = rewards.load(name, "reward_script")}
end
local rm
if config.reward_model ~= "" then
  rm = recipe.prepare_frozen(recipe.load_model(recipe.model_source(config.reward_model, "reward_model")), config)
  if not rawget(rm, "reward_head") then
    error(string.format("reward_model: %s has no reward head (a reward.lua run or a sequence-classification folder)",
      config.reward_model), 0)
  end
  if rm.config.vocab_size ~= policy.config.vocab_size then
    error(string.format("reward_model: its vocabulary (%d tokens) is not the policy's (%d): it scores the policy's "
      .. "token ids, so it must share the policy's tokenizer", rm.config.vocab_size, policy.config.vocab_size), 0)
  end
end
local n_rewards = #reward_fns + (rm and 1 or 0)
if n_rewards == 0 then error("no reward: give reward_script and/or reward_model", 0) end
local weights = {}
for w in config.reward_weights:gmatch("[^,%s]+") do
  weights[#weights + 1] = tonumber(w) or error("reward_weights: '" .. w .. "' is not a number", 0)
end
if #weights == 0 then for i = 1, n_rewards do weights[i] = 1 end end
if #weights ~= n_rewards then
  error(string.format("reward_weights: %d weights for %d rewards (%d functions%s)", #weights, n_rewards,
    #reward_fns, rm and " and the reward model" or ""), 0)
end

local opt = la.optim.AdamW(policy, {lr = config.lr, weight_decay = 0})

-- Prompts --------------------------------------------------------------------------
-- The first `limit` examples (all by default) of the file config[key] names: their
-- fields, and the ids of their formatted prompts (a prompt longer than the
-- context leaves room for keeps its end).
local function prompt_set(key, limit)
  local path = recipe.data_file(config[key], key)
  local list, room, cut = {}, policy:max_positions() - config.max_new_tokens, 0
  for ex in la.data.prompts(path) do
    local fields = {prompt = ex.prompt}
    for k, v in pairs(ex.meta or {}) do fields[k] = v end
    if config.source_prefix == "" or tostring(fields.source or ""):sub(1, #config.source_prefix) == config.source_prefix then
      local ids = tok:encode(config.prompt_format:format(ex.prompt))
      list[#list + 1] = {example = fields, ids = {table.unpack(ids, math.max(1, #ids - room + 1))}, cut = #ids > room}
    end
  end
  if #list == 0 then
    error(string.format("%s: no example of %s%s", key, path, config.source_prefix ~= "" and
      (" has a \"source\" starting with '" .. config.source_prefix .. "' (source_prefix)") or ""), 0)
  end
  list = {table.unpack(list, 1, math.min(#list, limit or #list))}
  for _, item in ipairs(list) do if item.cut then cut = cut + 1 end end
  return list, {examples = #list, truncated = cut, name = path,
                limits = string.format("the context minus max_new_tokens = %d tokens", room)}
end
local train_set, train_info = prompt_set("prompts")
local eval_set, eval_info = prompt_set("eval_prompts", config.eval_examples)
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = recipe.describe_data(config, "prompts", train_info)
for k, v in pairs(recipe.describe_data(config, "eval_prompts", eval_info)) do data_metrics[k] = v end

-- Rollouts ---------------------------------------------------------------------------
-- n completions of each of `items` (rows (i - 1) * n + 1 .. i * n), as one
-- left-padded batch ready for a forward pass.  Sampled rows draw from random
-- streams of their own, seeded by the run's seed, the iteration (0 for
-- evaluations), the prompt's place j in it (first + i - 1) and the sample k --
-- never by the rank, so splitting the prompts across processes draws the
-- same completions.
local function sample(model, items, first, n, temperature, it)
  local lists, seeds = {}, {}
  for i, item in ipairs(items) do
    for k = 1, n do
      lists[#lists + 1] = item.ids
      seeds[#seeds + 1] = {config.seed, it, first + i - 1, k}
    end
  end
  local out = model:generate(lists, recipe.sampling_options(tok, {max_new_tokens = config.max_new_tokens,
    temperature = temperature, seeds = temperature > 0 and seeds or nil}))
  local texts = {}
  for b = 1, #lists do texts[b] = tok:decode(out.sequences[b], {skip_special_tokens = true}) end
  local batch = out.batch
  return {ids = batch.ids, mask = batch.attention_mask, position_ids = batch.position_ids,
          response_mask = batch.response_mask, tokens = out.tokens, texts = texts,
          P = batch.prompt_length, N = batch.response_length}
end

-- Log-probs (B, N) of the completion tokens under model, at the sampling temperature.
local function completion_logprobs(model, g)
  local h = model:hidden(g.ids, {attention_mask = g.mask, position_ids = g.position_ids})
  local logits = model:logits(h:narrow(2, g.P, g.N))   -- the states that predict completion tokens
  if config.temperature ~= 1 then logits = logits / config.temperature end
  return L.token_logprobs(logits, g.tokens, g.response_mask)
end

-- Each reward (a list over the rows, per reward, in order) and their weighted
-- sum (a list) for a batch of n completions of each of items.
local function score(items, n, g)
  local parts, total = {}, {}
  for b = 1, #g.texts do total[b] = 0 end
  for i, r in ipairs(reward_fns) do
    parts[i] = {}
    for b, text in ipairs(g.texts) do
      local ex = items[(b - 1) // n + 1].example
      parts[i][b] = rewards.call(r.fn, r.name, ex.prompt, text, ex)
      total[b] = total[b] + weights[i] * parts[i][b]
    end
  end
  if rm then
    local s = la.no_grad(function()
      return rm:rewards(rm:hidden(g.ids, {attention_mask = g.mask, position_ids = g.position_ids}), g.mask)
    end):totable()
    parts[n_rewards] = s
    for b = 1, #s do total[b] = total[b] + weights[n_rewards] * s[b] end
  end
  return parts, total
end

local reward_names = {}
for i, r in ipairs(reward_fns) do reward_names[i] = r.name end
if rm then reward_names[n_rewards] = "reward_model" end

-- Held-out evaluation: the mean reward (each reward and the weighted sum) of a
-- greedy completion and of eval_samples sampled ones per prompt, with the same
-- draws at every evaluation; the ranks split the prompts, eval_chunk at a time.
local eval_chunk = 32
local function evaluate(model)
  local lo, hi = dist.share(#eval_set)
  local R, S = n_rewards, config.eval_samples
  local sums = {}
  for k = 1, 2 * (R + 1) do sums[k] = 0 end
  local shown
  for c = lo, hi, eval_chunk do
    local items = {table.unpack(eval_set, c, math.min(hi, c + eval_chunk - 1))}
    local greedy = sample(model, items, c, 1, 0, 0)
    local gp, gt = score(items, 1, greedy)
    local sampled = sample(model, items, c, S, config.temperature, 0)
    local sp, st = score(items, S, sampled)
    for b = 1, #items do
      for i = 1, R do sums[i] = sums[i] + gp[i][b] end
      sums[R + 1] = sums[R + 1] + gt[b]
    end
    for b = 1, #items * S do
      for i = 1, R do sums[R + 1 + i] = sums[R + 1 + i] + sp[i][b] / S end
      sums[2 * (R + 1)] = sums[2 * (R + 1)] + st[b] / S
    end
    shown = shown or {prompt = items[1].example.prompt, greedy = greedy.texts[1]}
  end
  sums = dist.sum(sums)
  local n = #eval_set
  local result = {greedy = sums[R + 1] / n, sampled = sums[2 * (R + 1)] / n, parts = {}, sample = shown}
  for i, name in ipairs(reward_names) do
    result.parts[name] = {greedy = sums[i] / n, sampled = sums[R + 1 + i] / n}
  end
  return result
end

-- Iteration it's prompt j: the training set is walked through a fresh
-- permutation at each epoch.
local permutations = {}
local function prompt_of(it, j)
  local q, n = (it - 1) * config.prompts_per_step + j, #train_set
  local epoch = (q - 1) // n + 1
  permutations[epoch] = permutations[epoch] or la.data.permutation(n, config.seed, epoch)
  return train_set[permutations[epoch][(q - 1) % n + 1]]
end

-- Training -------------------------------------------------------------------------------
local start, extra = 0, {}
if config.resume then start, extra = run:restore_checkpoint(policy, opt) end
start, extra = start or 0, extra or {}
local before = extra.before or evaluate(policy)
print(string.format("grpo: starting policy: held-out reward %.3f greedy, %.3f sampled", before.greedy, before.sampled))

local logger = log.open(run, {total = config.iterations, start_step = start, every = 1,
  show = {"reward", "reward_std", "kl", "eval_greedy"}})
if start == 0 then logger:log(0, data_metrics) end
local K = config.num_generations
for it = start + 1, config.iterations do
  -- 1-3. this rank's share of the prompts: rollouts, rewards, group advantages
  local lo, hi = dist.share(config.prompts_per_step)
  local items = {}
  for j = lo, hi do items[#items + 1] = prompt_of(it, j) end
  local g = sample(policy, items, lo, K, config.temperature, it)
  local parts, total = score(items, K, g)
  local adv, flat = L.grpo_advantages(la.tensor(total, "float32"):view(#items, K), {scale = config.scale_rewards})
  g.advantages = adv:view(#items * K)
  if with_ref then
    g.ref_lp = la.no_grad(function() return with_ref(function(ref) return completion_logprobs(ref, g) end) end)
  end
  -- sums over this rank's prompts: each reward's mean, the reward's mean and std,
  -- equal-reward groups, completion length
  local sums = {}
  for k = 1, n_rewards + 4 do sums[k] = 0 end
  for i = 1, #items do
    local mean, var = 0, 0
    for b = (i - 1) * K + 1, i * K do
      for r = 1, n_rewards do sums[r] = sums[r] + parts[r][b] / K end
      mean = mean + total[b] / K
    end
    for b = (i - 1) * K + 1, i * K do var = var + (total[b] - mean) ^ 2 / (K - 1) end
    sums[n_rewards + 1] = sums[n_rewards + 1] + mean
    sums[n_rewards + 2] = sums[n_rewards + 2] + math.sqrt(var)
  end
  sums[n_rewards + 3] = flat * #items
  sums[n_rewards + 4] = g.response_mask:sum():item() / K
  local micro_batches = la.accumulate.split(g, config.grad_accum)
  -- 4. num_iterations optimizer steps over these completions; the first pass's
  -- log-probs (before any update) are the sampling policy's
  local units = config.loss_type == "token" and function(mb) return mb.response_mask:sum():item() end
                                             or function(mb) return mb.tokens:size(1) end
  local stats = {}
  for pass = 1, config.num_iterations do
    opt:zero_grad()
    local result = la.accumulate.run(micro_batches, units, function(mb)
      local lp = completion_logprobs(policy, mb)
      mb.old_lp = mb.old_lp or lp:detach()
      return L.grpo(lp, mb.old_lp, mb.advantages, mb.response_mask, {clip_eps = config.clip_eps,
        clip_eps_high = config.clip_eps_high > 0 and config.clip_eps_high or nil, beta = config.beta,
        ref_logprobs = mb.ref_lp, loss_type = config.loss_type, max_tokens = config.max_new_tokens})
    end, dp)
    local loss, m = result.loss, result.metrics
    local norm = config.grad_clip > 0 and la.optim.clip_grad_norm(policy, config.grad_clip) or nil
    if recipe.finite_step(config, it, loss, norm or policy, logger) then opt:step() end
    stats.loss = (stats.loss or 0) + loss / config.num_iterations
    stats.clip_ratio = (stats.clip_ratio or 0) + m.clip_ratio / config.num_iterations
    if m.kl and pass == 1 then stats.kl = m.kl end   -- the sampling policy's KL to the reference
    stats.grad_norm = norm
  end
  sums = dist.sum(sums)
  local P = config.prompts_per_step
  local metrics = {loss = stats.loss, clip_ratio = stats.clip_ratio, kl = stats.kl, grad_norm = stats.grad_norm,
                   reward = sums[n_rewards + 1] / P, reward_std = sums[n_rewards + 2] / P,
                   frac_reward_zero_std = sums[n_rewards + 3] / P, completion_length = sums[n_rewards + 4] / P}
  for i, name in ipairs(reward_names) do metrics["rewards/" .. name] = sums[i] / P end
  local due = recipe.eval_due(config, it, config.iterations)
  if due then
    local ev = evaluate(policy)
    metrics.eval_greedy, metrics.eval_sampled = ev.greedy, ev.sampled
  end
  logger:log(it, metrics)   -- before the checkpoint, so a run killed in between redoes the iteration
  if due or it == config.iterations then
    -- (the sample text stays out: a completion need not be valid UTF-8, which the metadata must be)
    run:save_checkpoint(policy, opt, it, {before = {greedy = before.greedy, sampled = before.sampled,
                                                    parts = before.parts}})
  end
  recipe.check_stop(config, it, logger)
end
logger:close()

-- Report ---------------------------------------------------------------------------------
local after = evaluate(policy)
local rows = log.read(run:path("metrics.jsonl"))
local xs, rw = log.series(rows, "reward")
local ex, eg = log.series(rows, "eval_greedy")
local _, es = log.series(rows, "eval_sampled")
local panels = {
  plot.new{title = "reward of the rollouts", xlabel = "iteration"}:line(xs, rw, {label = "mean", width = 1}),
  plot.new{title = "held-out reward", xlabel = "iteration"}
    :line({0, table.unpack(ex)}, {before.greedy, table.unpack(eg)}, {label = "greedy", markers = true})
    :line({0, table.unpack(ex)}, {before.sampled, table.unpack(es)}, {label = "sampled", markers = true}),
}
local kx, kl = log.series(rows, "kl")
if #kx > 0 then
  panels[#panels + 1] = plot.new{title = "KL to the reference (k3, per token)", xlabel = "iteration"}
    :line(kx, kl, {label = "rollouts", width = 1})
end
plot.save_grid(run:path("curves.svg"), panels, {cols = #panels})
local table_rows = {
  {"starting policy", string.format("%.3f", before.greedy), string.format("%.3f", before.sampled)},
  {"after GRPO", string.format("%.3f", after.greedy), string.format("%.3f", after.sampled)},
}
local per_reward = {}
for _, name in ipairs(reward_names) do
  local b, a = before.parts[name], after.parts[name]
  per_reward[#per_reward + 1] = {name, string.format("%.3f -> %.3f", b.greedy, a.greedy),
                                 string.format("%.3f -> %.3f", b.sampled, a.sampled)}
end
run:write("report.md", table.concat({
  "# GRPO: " .. config.name, "",
  string.format("%d held-out prompts (%s); the weighted reward of a greedy completion and the mean over %d sampled "
    .. "ones (temperature %g) per prompt.", #eval_set, config.eval_prompts, config.eval_samples, config.temperature), "",
  recipe.md_table({"held-out reward", "greedy", "sampled"}, table_rows), "",
  recipe.md_table({"reward", "greedy: start -> end", "sampled: start -> end"}, per_reward), "",
  "![curves](curves.svg)", "",
  "A held-out prompt: " .. tostring(after.sample and after.sample.prompt):gsub("\n", " "), "",
  "greedy before: " .. (before.sample and before.sample.greedy or "(from before a resume: not kept)"):gsub("\n", " "), "",
  "greedy after: " .. tostring(after.sample and after.sample.greedy):gsub("\n", " "), "",
}, "\n"))
local saved = recipe.save_final(run, policy, config)   -- hf/ (save_pretrained), or with lora adapter/
print(string.format("grpo: held-out reward %.3f -> %.3f greedy, %.3f -> %.3f sampled; report in %s",
  before.greedy, after.greedy, before.sampled, after.sampled, run:path("report.md")))
return {before = before, after = after, run = run, saved = saved}
