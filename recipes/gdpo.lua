-- recipes/gdpo.lua -- offline preference optimisation with soft labels:
-- GDPO by default (Furuta et al. 2024), or DPO, cDPO, rDPO, IPO, hinge, GIPO.
--
--   lualign recipes/gdpo.lua loss=dpo beta=0.2 train=vader/confident/train.jsonl
--
-- 1. Reference: the starting policy, optionally first fine-tuned (sft_steps)
--    on both completions of every training pair, so that it fits the data's
--    distribution as an SFT model would.
-- 2. Reference log-probs of every pair, computed once and kept in the run
--    folder (computed again when the reference, the data, the tokenizer or
--    max_len differ).
-- 3. Each step: policy log-probs of chosen and rejected (one forward pass,
--    logits never materialised); the loss of the pair's log-ratio margin
--    h = [log pi(y1) - log ref(y1)] - [log pi(y2) - log ref(y2)], with the
--    pair's soft label p (share of raters preferring y1).
-- 4. Every eval_every steps, against the reference under a held-out judge
--    (ratings never used for labels): the win rate of completions sampled
--    for held-out prompts, the judge's mean score and the KL to the reference
--    -- the reward-versus-KL curve; and the win rate on held-out pairs of
--    held-out words (`test`): policy and reference each pick one word of a
--    pair, by their own probabilities of the two, and the judge's raters'
--    vote share on the pair decides.

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "gdpo", recipe.with_memory_keys{
  {"policy", "runs/sft", "starting policy: a run folder (or its model.safetensors) or a Hugging Face model folder"},
  {"reference", "", "reference model, the same kinds (default: the policy, or its fine-tuned copy with sft_steps)"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the policy's folder)"},
  {"train", "vader/modest/train.jsonl", "soft-label preference pairs"},
  {"eval_prompts", "vader/prompts_test.jsonl", "held-out prompts for the win rate"},
  {"test", "vader/test.jsonl", "held-out pairs of held-out words, labelled by the judge's raters ('': none)"},
  {"loss", "gdpo", "dpo, cdpo, rdpo, ipo, hinge, gdpo or gipo"},
  {"beta", 0.1, "strength of the KL regularisation (the loss's beta)"},
  {"eps", 0.1, "rDPO's label-flip rate"},
  {"label_smoothing", 0.0, "cDPO's global smoothing when pairs carry no p"},
  {"hard_labels", false, "ignore p (every pair counts as p = 1)"},
  {"sft_steps", 0, "fine-tune the reference on the pairs' completions first"},
  {"sft_lr", 1e-3, "learning rate of that fine-tuning"},
  {"steps", 150, "optimizer steps"},
  {"batch_size", 32, "pairs per step"},
  {"lr", 2e-4, "learning rate"},
  {"warmup", 10, "warmup steps"},
  {"max_len", 24, "longest sequence (prompt + completion)"},
  {"eval_every", 25, "steps between evaluations and checkpoints (0: none; a checkpoint at the end)"},
  {"eval_samples", 64, "sampled completions per held-out prompt (policy and reference each)"},
  {"max_new_tokens", 6, "completion length cap when sampling"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet
recipe.check_choice(config, "loss", la.loss.preference_losses)

-- Models and data ------------------------------------------------------------------
local policy_source = recipe.model_source(config.policy, "policy")   -- a lualign run or a Hugging Face folder
local tok, tok_dir = recipe.load_tokenizer(config.tokenizer, policy_source.dir)
if config.lora and config.sft_steps > 0 then
  error("gdpo: sft_steps with lora: fine-tune the reference first with recipes/sft.lua lora=true (its "
    .. "model.safetensors holds the merged weights) and start from it", 0)
end
if config.reference ~= "" and (config.lora or config.sft_steps > 0) then
  error(string.format("gdpo: reference=%s with %s: the reference is then %s", config.reference,
    config.lora and "lora" or "sft_steps", config.lora and "the policy with its adapters off"
    or "the policy fine-tuned on the pairs"), 0)
end
local reference_source = config.reference ~= "" and recipe.model_source(config.reference, "reference")
  or policy_source
local policy = recipe.prepare_model(recipe.load_model(policy_source), config)   -- lora, weights_dtype, checkpoint
local train_file = recipe.data_file(config.train, "train")
local pairs_ = la.data.load(train_file, "preference")
for i, ex in ipairs(pairs_) do ex.index = i end
local test_file = config.test ~= "" and recipe.data_file(config.test, "test") or nil
local test_pairs = test_file and la.data.load(test_file, "preference") or {}
for i, ex in ipairs(test_pairs) do ex.index = i end
local eval_prompts = {}
for ex in la.data.prompts(recipe.data_file(config.eval_prompts, "eval_prompts")) do
  eval_prompts[#eval_prompts + 1] = tok:encode(ex.prompt)
end
local loader = la.data.preference_loader(pairs_, tok, {batch_size = config.batch_size, seed = config.seed,
                                                       max_len = config.max_len, drop_last = true})
loader.name = train_file
local function in_order(list)      -- every pair once, in file order (reference log-probs, test pairs)
  return la.data.preference_loader(list, tok, {batch_size = 128, shuffle = false, max_len = config.max_len})
end
local test_loader = in_order(test_pairs)
test_loader.name = test_file
recipe.check_batches(loader)
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = recipe.describe_data(config, "train", loader)
if test_file then
  for k, v in pairs(recipe.describe_data(config, "test", test_loader)) do data_metrics[k] = v end
end
local judge = la.data.judge()
local id = recipe.file_identity
local tokenizer_id = recipe.tokenizer_identity(tok_dir)

-- 1. The reference: the data's distribution, as an SFT model would fit it ----------
if config.sft_steps > 0 then
  local file = run:cached("reference.safetensors", {policy = recipe.model_identity(policy_source),
      train = id(train_file), tokenizer = tokenizer_id, max_len = config.max_len, batch_size = config.batch_size, seed = config.seed,
      sft_steps = config.sft_steps, sft_lr = config.sft_lr}, function()
    local sft_examples = {}
    for _, ex in ipairs(pairs_) do
      sft_examples[#sft_examples + 1] = {prompt = ex.prompt, completion = ex.chosen}
      sft_examples[#sft_examples + 1] = {prompt = ex.prompt, completion = ex.rejected}
    end
    local sft = la.data.sft_loader(sft_examples, tok, {batch_size = config.batch_size, seed = config.seed,
                                                       max_len = config.max_len, drop_last = true})
    local opt = la.optim.AdamW(policy, {lr = config.sft_lr, weight_decay = 0})
    for step, batch in recipe.batches(sft, 0) do
      if step > config.sft_steps then break end
      local loss = la.loss.cross_entropy(policy(batch.ids, {attention_mask = batch.attention_mask}), batch.targets)
      opt:zero_grad()
      loss:backward()
      opt:step()
    end
    run:save_model(policy, {stage = "reference"}, "reference.safetensors")
  end)
  recipe.load_weights(policy, file)     -- the policy starts from the reference
  reference_source = recipe.model_source(file, "reference")
end
-- The reference: with lora the policy with its adapters off, else a frozen copy.
local with_ref = recipe.reference(policy, config, function() return recipe.load_model(reference_source) end)
with_ref(la.dist.broadcast_parameters)     -- under mpirun: rank 0's policy and reference on every rank
local dp = la.dist.data_parallel(policy)
dp:shard(loader)                            -- this rank's share of every batch

-- Sequence log-probs (B,) of chosen and rejected under model, in one pass.
local function logps(model, batch)
  local ids = la.cat({batch.chosen.ids, batch.rejected.ids})
  local mask = la.cat({batch.chosen.attention_mask, batch.rejected.attention_mask})
  local targets = la.cat({batch.chosen.targets, batch.rejected.targets})
  local lmask = la.cat({batch.chosen.loss_mask, batch.rejected.loss_mask})
  local lp = model:sequence_logprobs(ids, targets, lmask, {attention_mask = mask})
  local B = batch.chosen.ids:size(1)
  return lp:narrow(1, 1, B), lp:narrow(1, B + 1, B)
end

-- 2. Reference log-probs of every pair of a file, once, kept in the run folder ------
local function reference_logps(file, list, data_path)
  local path = run:cached(file, {reference = recipe.model_identity(reference_source), data = id(data_path),
                                 tokenizer = tokenizer_id,
                                 max_len = config.max_len, weights_dtype = config.weights_dtype}, function(out)
    local c, r = {}, {}
    la.no_grad(function()
      for batch in in_order(list):epoch(1) do
        local lc, lr = with_ref(function(ref) return logps(ref, batch) end)
        for i, ex in ipairs(batch.examples) do c[ex.index], r[ex.index] = lc[i], lr[i] end
      end
    end)
    la.checkpoint.save(out, {chosen = la.tensor(c, "float32"), rejected = la.tensor(r, "float32")})
  end)
  local t = la.checkpoint.load(path)
  return t.chosen, t.rejected
end
local ref_chosen, ref_rejected = reference_logps("ref_logps.safetensors", pairs_, train_file)
local test_ref_chosen, test_ref_rejected
if test_file then test_ref_chosen, test_ref_rejected = reference_logps("ref_logps_test.safetensors", test_pairs, test_file) end

-- The examples' rows (0-based) of a batch, to pick their reference log-probs.
local function rows_of(batch)
  local idx = {}
  for i, ex in ipairs(batch.examples) do idx[i] = ex.index - 1 end
  return la.tensor(idx, "int64")
end

-- 4. Evaluation: win rates against the reference under the held-out judge -------------
local function sample(model)
  local prompts = {}
  for _, p in ipairs(eval_prompts) do
    for _ = 1, config.eval_samples do prompts[#prompts + 1] = p end
  end
  local out = model:generate(prompts, recipe.sampling_options(tok, {max_new_tokens = config.max_new_tokens,
                                                                   return_logprobs = true}))
  local texts, seq_lp = {}, {}
  for i = 1, #prompts do
    texts[i] = tok:decode(out.sequences[i], {skip_special_tokens = true})
    seq_lp[i] = 0
    for t = 1, out.lengths[i] do seq_lp[i] = seq_lp[i] + out.logprobs[i][t] end
  end
  return {prompts = prompts, out = out, texts = texts, logp = seq_lp}
end

-- Log-probs under ref of the sequences model sampled (for the KL estimate).
local function ref_logps_of(s)
  local b = s.out.batch
  return with_ref(function(ref)
    return ref:sequence_logprobs(b.ids, b.targets, b.target_mask,
      {attention_mask = b.attention_mask, position_ids = b.position_ids}):totable()
  end)
end

-- On the held-out pairs: policy and reference each pick one word of a pair
-- with their own odds of the two (q = sigmoid of the log-prob difference),
-- and the judge's raters' share p for the first word decides (ties half):
-- P(policy wins) = qp (1 - qr) p + (1 - qp) qr (1 - p) + (qp qr + (1 - qp)(1 - qr)) / 2,
-- exactly 0.5 while the policy is the reference.
local function test_win_rate()
  if #test_pairs == 0 then return nil end
  local total = 0
  for batch in test_loader:epoch(1) do
    local pc, pr = logps(policy, batch)
    local rows = rows_of(batch)
    local qp = (pc - pr):sigmoid()
    local qr = (test_ref_chosen:index_select(1, rows) - test_ref_rejected:index_select(1, rows)):sigmoid()
    local p = batch.p
    local win = qp * (1 - qr) * p + (1 - qp) * qr * (1 - p) + (qp * qr + (1 - qp) * (1 - qr)) * 0.5
    total = total + win:sum():item()
  end
  return total / #test_pairs
end

local ref_samples
local function evaluate()
  local state = la.get_rng_state()
  la.manual_seed(config.seed + 7919)          -- the same draws at every evaluation
  local result = la.no_grad(function()
    ref_samples = ref_samples or with_ref(sample)
    la.manual_seed(config.seed + 7919)        -- so the policy's draws do not depend on whether ref's were cached
    local s = sample(policy)
    local rl = ref_logps_of(s)
    local wins, judge_sum, kl = 0, 0, 0
    for i = 1, #s.texts do
      wins = wins + judge:prefers(s.texts[i], ref_samples.texts[i])
      judge_sum = judge_sum + judge:score(s.texts[i])
      kl = kl + (s.logp[i] - rl[i])
    end
    local n = #s.texts
    return {win_rate = wins / n, judge = judge_sum / n, kl = kl / n, sample = s.texts[1],
            test_win_rate = test_win_rate()}
  end)
  la.set_rng_state(state)
  return result
end

-- 3. Training ---------------------------------------------------------------------------
local opt = la.optim.AdamW(policy, {lr = config.lr, weight_decay = 0})
local schedule = la.optim.schedule.linear{lr = config.lr, warmup = config.warmup, total = config.steps,
                                          final_lr = config.lr}
local start = config.resume and run:restore_checkpoint(policy, opt) or 0
local logger = log.open(run, {total = config.steps, start_step = start,
  show = {"loss", "rewards/accuracies", "rewards/margins", "win_rate", "kl"}})
if start == 0 then
  if config.eval_every > 0 then for k, v in pairs(evaluate()) do data_metrics[k] = v end end
  logger:log(0, data_metrics)
end
for step, batch in recipe.batches(loader, start) do
  if step > config.steps then break end
  opt.lr = schedule(step)
  opt:zero_grad()
  -- grad_accum micro-batches; the loss is the mean over the (global) batch's pairs
  local loss, metrics = recipe.accumulate(config, batch, la.accumulate.pairs, function(mb)
    local index = rows_of(mb)
    local pc, pr = logps(policy, mb)
    return la.loss[config.loss](pc, pr, ref_chosen:index_select(1, index),
      ref_rejected:index_select(1, index), {beta = config.beta, p = not config.hard_labels and mb.p or nil,
      eps = config.eps, label_smoothing = config.label_smoothing})
  end, dp)
  metrics.loss = loss
  if recipe.finite_step(config, step, loss, policy, logger) then opt:step() end
  local evaluated = recipe.eval_due(config, step, config.steps)
  if evaluated then for k, v in pairs(evaluate()) do metrics[k] = v end end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if evaluated or step == config.steps then run:save_checkpoint(policy, opt, step) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- Report ----------------------------------------------------------------------------------
local rows = log.read(run:path("metrics.jsonl"))
local ks, ws, js, es, ts = {}, {}, {}, {}, {}
local first, best, last = nil, nil, nil         -- evaluations: at step 0, best win rate after it, last
for _, r in ipairs(rows) do
  if r.win_rate then
    ks[#ks + 1], ws[#ws + 1], js[#js + 1], es[#es + 1], ts[#ts + 1] = r.kl, r.win_rate, r.judge, r.step, r.test_win_rate
    if r.step == 0 then first = r end
    if r.step > 0 and (not best or r.win_rate > best.win_rate) then best = r end
    last = r
  end
end
local curves = {
  plot.new{title = "win rate against the reference vs KL", xlabel = "KL(policy || reference)", ylabel = "win rate"}
    :line(ks, ws, {label = config.loss, markers = true}),
  plot.new{title = "judge score over training", xlabel = "step"}:line(es, js, {label = config.loss, markers = true}),
}
if #ts > 0 then
  curves[3] = plot.new{title = "win rate on held-out words", xlabel = "step", ylabel = "win rate"}
    :line(es, ts, {label = config.loss, markers = true})
end
plot.save_grid(run:path("curves.svg"), curves, {cols = #curves})
local function row(label, r)
  local f = function(k) return recipe.fmt("%.3f", r and r[k]) end
  return {label, r and r.step or "-", f("win_rate"), f("judge"), f("kl"), f("test_win_rate")}
end
run:write("report.md", table.concat({
  string.format("# %s on %s (beta %g)", config.loss, config.train, config.beta), "",
  recipe.md_table({"checkpoint", "step", "win rate vs reference", "judge score", "KL to reference",
                   "win rate on held-out words"},
                  {row("start", first), row("best", best), row("last", last)}), "",
  "Win rates are under the held-out judge: of completions sampled for held-out prompts, and on " ..
  "held-out pairs of held-out words (each model picks one word of a pair by its own odds of the two).",
  "", "![curves](curves.svg)", "",
}, "\n"))
local saved = recipe.save_final(run, policy, config)   -- hf/ (save_pretrained), or with lora adapter/
if last then
  print(string.format("%s: win rate vs reference %.3f (best %s at step %s), judge %.3f, KL %.3f, held-out words %s; "
    .. "report in %s", config.loss, last.win_rate, recipe.fmt("%.3f", best and best.win_rate), recipe.fmt("%d", best and best.step),
    last.judge, last.kl, recipe.fmt("%.3f", last.test_win_rate), run:path("report.md")))
else
  print(string.format("%s: not evaluated (eval_every=0); report in %s", config.loss, run:path("report.md")))
end
return {last = last, best = best, curve = {kl = ks, win_rate = ws, judge = js, step = es, test_win_rate = ts}, run = run,
        saved = saved}
