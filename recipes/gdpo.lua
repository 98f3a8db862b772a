-- recipes/gdpo.lua -- offline preference optimisation with soft labels:
-- GDPO by default (Furuta et al. 2024), or DPO, cDPO, rDPO, IPO, hinge, GIPO.
--
--   lualign recipes/gdpo.lua loss=dpo beta=0.2 train=vader/confident/train.jsonl
--
-- 1. Reference: the starting policy, optionally first fine-tuned (sft_steps)
--    on both completions of every training pair, so that it fits the data's
--    distribution as an SFT model would.
-- 2. Reference log-probs of every pair, computed once and cached on disk.
-- 3. Each step: policy log-probs of chosen and rejected (one forward pass,
--    logits never materialised); the loss of the pair's log-ratio margin
--    h = [log pi(y1) - log ref(y1)] - [log pi(y2) - log ref(y2)], with the
--    pair's soft label p (share of raters preferring y1).
-- 4. Every eval_every steps: win rate against the reference under a held-out
--    judge (ratings never used for labels) on sampled completions of held-out
--    prompts, the judge's mean score, and the KL to the reference -- the
--    reward-versus-KL curve.

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "gdpo", {
  {"policy", "runs/sft", "starting policy: run folder or .safetensors (tokenizer.json from its folder)"},
  {"tokenizer", "", "tokenizer.json (default: the policy's folder)"},
  {"train", "vader/modest/train.jsonl", "soft-label preference pairs"},
  {"eval_prompts", "vader/prompts_test.jsonl", "held-out prompts for the win rate"},
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
  {"eval_every", 25, "steps between evaluations"},
  {"eval_samples", 64, "sampled completions per held-out prompt (policy and reference each)"},
  {"max_new_tokens", 6, "completion length cap when sampling"},
})
local run = recipe.run(config)
local function data_file(p) return io.open(p) and p or la.data.path(p) end
local losses = {dpo = true, cdpo = true, rdpo = true, ipo = true, hinge = true, gdpo = true, gipo = true}
if not losses[config.loss] then error("loss must be one of dpo, cdpo, rdpo, ipo, hinge, gdpo, gipo", 0) end

-- Models and data ------------------------------------------------------------------
local policy_dir = config.policy:match("^(.*)/[^/]+%.safetensors$") or config.policy
local tok = la.tokenizer.load(config.tokenizer ~= "" and config.tokenizer or (policy_dir .. "/tokenizer.json"))
tok:save(run:path("tokenizer.json"))
local policy = recipe.load_gpt(config.policy)
local pairs_ = la.data.load(data_file(config.train), "preference")
for i, ex in ipairs(pairs_) do ex.index = i end
local judge = la.data.judge()

-- 1. The reference: the data's distribution, as an SFT model would fit it ----------
if config.sft_steps > 0 and not (config.resume and run:exists("reference.safetensors")) then
  local sft_examples = {}
  for _, ex in ipairs(pairs_) do
    sft_examples[#sft_examples + 1] = {prompt = ex.prompt, completion = ex.chosen}
    sft_examples[#sft_examples + 1] = {prompt = ex.prompt, completion = ex.rejected}
  end
  local loader = la.data.sft_loader(sft_examples, tok, {batch_size = config.batch_size, seed = config.seed,
                                                       max_len = config.max_len, drop_last = true})
  local opt = la.optim.AdamW(policy, {lr = config.sft_lr, weight_decay = 0})
  for step, batch in recipe.batches(loader, 0) do
    if step > config.sft_steps then break end
    local loss = la.loss.cross_entropy(policy(batch.ids, {attention_mask = batch.attention_mask}), batch.targets)
    opt:zero_grad()
    loss:backward()
    opt:step()
  end
  run:save_model(policy, {stage = "reference"}, "reference.safetensors")
elseif run:exists("reference.safetensors") then
  recipe.load_weights(policy, run:path("reference.safetensors"))
end
local ref = recipe.load_gpt(run:exists("reference.safetensors") and run:path("reference.safetensors") or config.policy)
ref:requires_grad(false):eval()

local loader = la.data.preference_loader(pairs_, tok, {batch_size = config.batch_size, seed = config.seed,
                                                       max_len = config.max_len, drop_last = true})

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

-- 2. Reference log-probs of every pair, once, cached in the run folder --------------
local ref_chosen, ref_rejected
if run:exists("ref_logps.safetensors") then
  local t = la.checkpoint.load(run:path("ref_logps.safetensors"))
  ref_chosen, ref_rejected = t.chosen, t.rejected
else
  local c, r = {}, {}
  la.no_grad(function()
    local all = la.data.preference_loader(pairs_, tok, {batch_size = 128, shuffle = false, max_len = config.max_len})
    for batch in all:epoch(1) do
      local lc, lr = logps(ref, batch)
      for i, ex in ipairs(batch.examples) do c[ex.index], r[ex.index] = lc[i], lr[i] end
    end
  end)
  ref_chosen, ref_rejected = la.tensor(c, "float32"), la.tensor(r, "float32")
  la.checkpoint.save(run:path("ref_logps.safetensors"), {chosen = ref_chosen, rejected = ref_rejected},
                     {train = config.train, policy = config.policy})
end

-- 4. Evaluation: win rate against the reference under the held-out judge -------------
local eval_prompts = {}
for ex in la.data.prompts(data_file(config.eval_prompts)) do eval_prompts[#eval_prompts + 1] = tok:encode(ex.prompt) end

local function sample(model)
  local prompts = {}
  for _, p in ipairs(eval_prompts) do
    for _ = 1, config.eval_samples do prompts[#prompts + 1] = p end
  end
  local out = model:generate(prompts, {max_new_tokens = config.max_new_tokens, temperature = 1,
                                       eos_id = tok.eos_id, return_logprobs = true})
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
  return ref:sequence_logprobs(b.ids, b.targets, b.target_mask,
    {attention_mask = b.attention_mask, position_ids = b.position_ids}):totable()
end

local ref_samples
local function evaluate()
  local state = la.get_rng_state()
  la.manual_seed(config.seed + 7919)          -- the same draws at every evaluation
  local result = la.no_grad(function()
    ref_samples = ref_samples or sample(ref)
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
    return {win_rate = wins / n, judge = judge_sum / n, kl = kl / n, sample = s.texts[1]}
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
if start == 0 then logger:log(0, evaluate()) end
for step, batch in recipe.batches(loader, start) do
  if step > config.steps then break end
  opt.lr = schedule(step)
  local idx = {}
  for i, ex in ipairs(batch.examples) do idx[i] = ex.index - 1 end
  local index = la.tensor(idx, "int64")
  local pc, pr = logps(policy, batch)
  local loss, metrics = la.loss[config.loss](pc, pr, ref_chosen:index_select(1, index),
    ref_rejected:index_select(1, index), {beta = config.beta, p = not config.hard_labels and batch.p or nil,
    eps = config.eps, label_smoothing = config.label_smoothing})
  opt:zero_grad()
  loss:backward()
  if recipe.finite_step(config, step, loss, policy, logger) then opt:step() end
  metrics.loss = loss:item()
  local save = step % config.eval_every == 0 or step == config.steps
  if save then for k, v in pairs(evaluate()) do metrics[k] = v end end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if save then run:save_checkpoint(policy, opt, step) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- Report ----------------------------------------------------------------------------------
local rows = log.read(run:path("metrics.jsonl"))
local ks, ws, js, es = {}, {}, {}, {}
local best = nil
for _, r in ipairs(rows) do
  if r.win_rate then
    ks[#ks + 1], ws[#ws + 1], js[#js + 1], es[#es + 1] = r.kl, r.win_rate, r.judge, r.step
    if r.step > 0 and (not best or r.win_rate > best.win_rate) then best = r end
  end
end
local last = rows[#rows]
plot.save_grid(run:path("curves.svg"), {
  plot.new{title = "win rate against the reference vs KL", xlabel = "KL(policy || reference)", ylabel = "win rate"}
    :line(ks, ws, {label = config.loss, markers = true}),
  plot.new{title = "judge score over training", xlabel = "step"}:line(es, js, {label = config.loss, markers = true}),
}, {cols = 2})
run:write("report.md", table.concat({
  string.format("# %s on %s (beta %g)", config.loss, config.train, config.beta), "",
  recipe.md_table({"checkpoint", "step", "win rate vs reference", "judge score", "KL to reference"}, {
    {"start", 0, string.format("%.3f", ws[1]), string.format("%.3f", js[1]), string.format("%.3f", ks[1])},
    {"best", best and best.step or "-", best and string.format("%.3f", best.win_rate) or "-",
     best and string.format("%.3f", best.judge) or "-", best and string.format("%.3f", best.kl) or "-"},
    {"last", last.step, string.format("%.3f", last.win_rate), string.format("%.3f", last.judge), string.format("%.3f", last.kl)},
  }), "", "![curves](curves.svg)", "",
}, "\n"))
print(string.format("%s: win rate vs reference %.3f (best %.3f at step %d), judge %.3f, KL %.3f; report in %s",
  config.loss, last.win_rate, best and best.win_rate or 0 / 0, best and best.step or 0, last.judge, last.kl,
  run:path("report.md")))
return {last = last, best = best, curve = {kl = ks, win_rate = ws, judge = js, step = es}, run = run}
