-- recipes/gdpo.lua -- offline preference optimisation, on any model and any
-- preference data: GDPO with soft labels by default (Furuta et al. 2024), or
-- DPO, cDPO, rDPO, IPO, hinge, GIPO, and SimPO (reference-free).
--
--   lualign recipes/gdpo.lua loss=dpo beta=0.2 train=vader/confident/train.jsonl
--   lualign gdpo policy=SmolLM2-135M-Instruct train=mine.jsonl loss=ipo average=true
--
-- 1. Reference: the starting policy (or reference=), optionally first
--    fine-tuned (sft_steps) on both completions of every training pair, so
--    that it fits the data's distribution as an SFT model would.
-- 2. Held-out pairs: eval=FILE, or a share (eval_fraction) of the training
--    file's prompts with all their pairs.  Reference log-probs of every pair,
--    computed once and kept in the run folder (computed again when the
--    reference, the data, the tokenizer, max_len or average differ).
-- 3. Each step: policy log-probs of chosen and rejected (one forward pass,
--    logits never materialised), summed or averaged over the tokens; the
--    loss of the pair's log-ratio margin h = [log pi(y1) - log ref(y1)] -
--    [log pi(y2) - log ref(y2)] with the pair's soft label p (share of raters
--    preferring y1); SimPO uses the averaged log-probs alone.
-- 4. Every eval_every steps, on held-out data: the loss, the implicit-reward
--    accuracy and margin of the held-out pairs; the KL to the reference of
--    completions sampled for held-out prompts; with a judge (a reward model,
--    a Lua function, or the bundled lexicon for the bundled data) the win
--    rate of those completions against the reference's.  The best checkpoint
--    by best_by is kept as best.safetensors.  On the bundled VADER data also
--    the win rate on held-out pairs of held-out words (`test`).

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "gdpo", recipe.with_memory_keys{
  {"policy", "runs/sft", "starting policy: a run folder (or its model.safetensors) or a Hugging Face model folder"},
  {"reference", "", "reference model, the same kinds (default: the policy, or its fine-tuned copy with sft_steps)"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the policy's folder)"},
  {"train", "vader/modest/train.jsonl", "preference pairs (plain or conversational; soft labels p or votes)"},
  {"eval", "auto", "held-out pairs: a file, or '' for eval_fraction of the training prompts ('auto': the bundled " ..
   "set's validation.jsonl for bundled VADER data, else '')"},
  {"eval_fraction", 0.1, "share of the training file's prompts held out (with all their pairs) when eval is ''"},
  {"eval_pairs", 256, "held-out pairs scored per evaluation (0: all)"},
  {"eval_prompts", "auto", "prompts sampled for the KL and the win rate: a prompts file, or 'auto' (the held-out " ..
   "pairs' prompts; vader/prompts_test.jsonl for bundled VADER data)"},
  {"eval_prompt_count", 16, "distinct held-out prompts sampled per evaluation"},
  {"judge", "auto", "win-rate judge: a reward.lua run or sequence-classification folder, a .lua file returning " ..
   "function(prompt, response) -> number, 'lexicon', or 'none' ('auto': lexicon for bundled VADER data, else none)"},
  {"test", "auto", "held-out pairs of held-out words labelled by the judge's raters ('auto': vader/test.jsonl for " ..
   "bundled VADER data; '': none)"},
  {"best_by", "eval_loss", "held-out measure that picks the best checkpoint: eval_loss, eval_accuracy or win_rate"},
  {"loss", "gdpo", "dpo, cdpo, rdpo, ipo, hinge, gdpo, gipo or simpo"},
  {"beta", 0.1, "strength of the KL regularisation (the loss's beta; SimPO's reward scale)"},
  {"average", false, "length-normalised log-probs: the per-token mean instead of the sum (SimPO always)"},
  {"simpo_gamma", 1.0, "SimPO's target margin gamma"},
  {"eps", 0.1, "rDPO's label-flip rate"},
  {"label_smoothing", 0.0, "cDPO's global smoothing when pairs carry no p"},
  {"hard_labels", false, "ignore p (every pair counts as p = 1)"},
  {"chat", false, "plain pairs' prompts through the tokenizer's chat template (conversational pairs always)"},
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
recipe.check_choice(config, "best_by", {"eval_loss", "eval_accuracy", "win_rate"})
local simpo = config.loss == "simpo"            -- reference-free, always length-normalised
local average = config.average or simpo

-- Models and data ------------------------------------------------------------------
-- The bundled VADER sets come with their held-out files and judge; other data
-- gets a split of its own and no judge unless one is named.
local vader_set = config.train:match("^vader/(%w+)/train%.jsonl$")
local bundled = vader_set ~= nil and recipe.is_bundled(config, "train", "vader/")
local eval_spec = recipe.auto(config, "eval", bundled, "vader/" .. tostring(vader_set) .. "/validation.jsonl", "")
local prompts_spec = recipe.auto(config, "eval_prompts", bundled, "vader/prompts_test.jsonl", "")
local judge_spec = recipe.auto(config, "judge", bundled, "lexicon", "none")
local test_spec = recipe.auto(config, "test", bundled, "vader/test.jsonl", "")
if config.best_by == "win_rate" and judge_spec == "none" then
  error("best_by=win_rate needs a judge (judge=a reward model, a .lua file or lexicon)", 0)
end
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

-- held-out pairs: eval=FILE, or a share of the training prompts with all their pairs
local pairs_, held_out, eval_file, eval_id = recipe.held_out(la.data.load(train_file, "preference"), train_file,
  eval_spec, config.eval_fraction, "preference", "eval")
for i, ex in ipairs(pairs_) do ex.index = i end
for i, ex in ipairs(held_out) do ex.index = i end
local eval_list = {table.unpack(held_out, 1, config.eval_pairs > 0 and math.min(#held_out, config.eval_pairs) or #held_out)}
local test_file = test_spec ~= "" and recipe.data_file(test_spec, "test") or nil
local test_pairs = test_file and la.data.load(test_file, "preference") or {}
for i, ex in ipairs(test_pairs) do ex.index = i end

-- Held-out prompts to sample: {ids, text} each, their ends kept to leave room for the completion.
local encode = require "lualign.data.batch"
local room = policy:max_positions() - config.max_new_tokens
local eval_prompts, seen = {}, {}
local function add_prompt(ids, text)
  local key = table.concat(ids, ",")
  if seen[key] or #eval_prompts >= config.eval_prompt_count then return end
  seen[key] = true
  eval_prompts[#eval_prompts + 1] = {ids = {table.unpack(ids, math.max(1, #ids - room + 1))}, text = text}
end
if prompts_spec ~= "" then
  for ex in la.data.prompts(recipe.data_file(prompts_spec, "eval_prompts")) do
    add_prompt(encode.encode_prompt(tok, ex, {chat = config.chat}).prompt, ex.prompt)
  end
else
  for _, ex in ipairs(held_out) do add_prompt(encode.encode_preference(tok, ex, {chat = config.chat}).prompt, ex.prompt) end
end

local loader = la.data.preference_loader(pairs_, tok, {batch_size = config.batch_size, seed = config.seed,
                                                       max_len = config.max_len, drop_last = true, chat = config.chat})
loader.name = train_file
local function in_order(list)      -- every pair once, in order (reference log-probs, held-out pairs)
  return la.data.preference_loader(list, tok, {batch_size = 64, shuffle = false, max_len = config.max_len,
                                               chat = config.chat})
end
local eval_loader = in_order(eval_list)
eval_loader.name = eval_file
local test_loader = in_order(test_pairs)
test_loader.name = test_file
recipe.check_batches(loader)
local judge = judge_spec ~= "none" and recipe.load_judge(judge_spec, "judge", policy.config.vocab_size) or nil
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = recipe.describe_data(config, "train", loader)
for k, v in pairs(recipe.describe_data(config, "eval", eval_loader)) do data_metrics[k] = v end
if test_file then
  for k, v in pairs(recipe.describe_data(config, "test", test_loader)) do data_metrics[k] = v end
end
local id = recipe.file_identity
local tokenizer_id = recipe.tokenizer_identity(tok_dir or config.tokenizer)

-- 1. The reference: the data's distribution, as an SFT model would fit it ----------
if config.sft_steps > 0 then
  local file = run:cached("reference.safetensors", {policy = recipe.model_identity(policy_source),
      train = id(train_file), eval = eval_id, tokenizer = tokenizer_id, max_len = config.max_len,
      batch_size = config.batch_size, seed = config.seed, sft_steps = config.sft_steps, sft_lr = config.sft_lr,
      chat = config.chat}, function()
    local sft_examples = {}
    for _, ex in ipairs(pairs_) do
      for _, side in ipairs({"chosen", "rejected"}) do
        if ex.prompt_messages then
          local messages = {table.unpack(ex.prompt_messages)}
          for _, m in ipairs(ex[side .. "_messages"]) do messages[#messages + 1] = m end
          sft_examples[#sft_examples + 1] = {messages = messages}
        else
          sft_examples[#sft_examples + 1] = {prompt = ex.prompt, completion = ex[side]}
        end
      end
    end
    local sft = la.data.sft_loader(sft_examples, tok, {batch_size = config.batch_size, seed = config.seed,
      max_len = config.max_len, drop_last = true, chat = config.chat})
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

-- Sequence log-probs (B,) of chosen and rejected under model, in one pass:
-- sums over the completion tokens, or their means with average (SimPO).
local function logps(model, batch)
  local ids = la.cat({batch.chosen.ids, batch.rejected.ids})
  local mask = la.cat({batch.chosen.attention_mask, batch.rejected.attention_mask})
  local targets = la.cat({batch.chosen.targets, batch.rejected.targets})
  local lmask = la.cat({batch.chosen.loss_mask, batch.rejected.loss_mask})
  local lp = model:sequence_logprobs(ids, targets, lmask, {attention_mask = mask, average = average})
  local B = batch.chosen.ids:size(1)
  return lp:narrow(1, 1, B), lp:narrow(1, B + 1, B)
end

-- 2. Reference log-probs of every pair of a list, once, kept in the run folder ------
-- (none for SimPO, which has no reference in its loss).
local function reference_logps(file, list, data_id)
  if simpo then return nil, nil end
  local path = run:cached(file, {reference = recipe.model_identity(reference_source), data = data_id,
                                 tokenizer = tokenizer_id, max_len = config.max_len, average = average,
                                 chat = config.chat, weights_dtype = config.weights_dtype, pairs = #list}, function(out)
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
local ref_chosen, ref_rejected = reference_logps("ref_logps.safetensors", pairs_,
  {train = id(train_file), eval = eval_id})
local eval_ref_chosen, eval_ref_rejected = reference_logps("ref_logps_eval.safetensors", eval_list, eval_id)
local test_ref_chosen, test_ref_rejected
if test_file then test_ref_chosen, test_ref_rejected = reference_logps("ref_logps_test.safetensors", test_pairs, id(test_file)) end

-- The examples' rows (0-based) of a batch, to pick their reference log-probs.
local function rows_of(batch)
  local idx = {}
  for i, ex in ipairs(batch.examples) do idx[i] = ex.index - 1 end
  return la.tensor(idx, "int64")
end

-- The loss of a batch's pairs from the policy's log-probs and the reference's
-- of the same rows (nil for SimPO).
local function pair_loss(batch, pc, pr, rc, rr)
  local rows = rows_of(batch)
  local opts = {beta = config.beta, p = not config.hard_labels and batch.p or nil,
                label_smoothing = config.label_smoothing}
  if simpo then
    opts.gamma = config.simpo_gamma
    return la.loss.simpo(pc, pr, nil, nil, opts)
  end
  opts.eps = config.eps
  return la.loss[config.loss](pc, pr, rc:index_select(1, rows), rr:index_select(1, rows), opts)
end

-- 4. Evaluation on held-out data -------------------------------------------------------
-- Under mpirun each process takes every size-th batch of held-out pairs and
-- every size-th held-out prompt, and the sums are taken over all of them;
-- batches and prompts are the ones a single process has (a prompt's samples
-- are drawn from a generator seeded by the prompt's number), so the measures
-- are the same whatever the number of processes.
local rank, size = la.dist.rank(), la.dist.size()
local function mine(k) return (k - 1) % size == rank end

-- Held-out pairs: the loss, the share of pairs whose implicit reward puts the
-- chosen response first (rewards/accuracies) and the mean reward margin.
local function held_out_pairs()
  local sums = {0, 0, 0, 0}      -- loss, accuracy, margin (sums over pairs), pairs
  local k = 0
  for batch in eval_loader:epoch(1) do
    k = k + 1
    if mine(k) then
      local pc, pr = logps(policy, batch)
      local l, m = pair_loss(batch, pc, pr, eval_ref_chosen, eval_ref_rejected)
      local n = #batch.examples
      sums[1] = sums[1] + l:item() * n
      sums[2] = sums[2] + m["rewards/accuracies"] * n
      sums[3] = sums[3] + m["rewards/margins"] * n
      sums[4] = sums[4] + n
    end
  end
  sums = la.dist.sum(sums)
  return {eval_loss = sums[1] / sums[4], ["eval_rewards/accuracies"] = sums[2] / sums[4],
          ["eval_rewards/margins"] = sums[3] / sums[4]}
end

-- eval_samples completions sampled for held-out prompt j, with their
-- log-probs under the sampling model.
local function sample(model, j)
  local ids, texts = {}, {}
  for i = 1, config.eval_samples do ids[i], texts[i] = eval_prompts[j].ids, eval_prompts[j].text end
  local out = model:generate(ids, recipe.sampling_options(tok, {max_new_tokens = config.max_new_tokens,
                                                                return_logprobs = true}))
  local responses, seq_lp = {}, {}
  for i = 1, #ids do
    responses[i] = tok:decode(out.sequences[i], {skip_special_tokens = true})
    seq_lp[i] = 0
    for t = 1, out.lengths[i] do seq_lp[i] = seq_lp[i] + out.logprobs[i][t] end
  end
  local s = {prompts = texts, responses = responses, batch = out.batch, logp = seq_lp}
  s.scores = judge and judge.scores(s) or nil
  return s
end

-- Log-probs under ref of the sequences model sampled (for the KL estimate).
local function ref_logps_of(s)
  local b = s.batch
  return with_ref(function(ref)
    return ref:sequence_logprobs(b.ids, b.targets, b.target_mask,
      {attention_mask = b.attention_mask, position_ids = b.position_ids}):totable()
  end)
end

-- On the held-out pairs of held-out words (bundled VADER data): policy and
-- reference each pick one word of a pair with their own odds of the two (q =
-- sigmoid of the log-prob difference), and the judge's raters' share p for
-- the first word decides (ties half): P(policy wins) = qp (1 - qr) p + (1 -
-- qp) qr (1 - p) + (qp qr + (1 - qp)(1 - qr)) / 2, exactly 0.5 while the
-- policy is the reference.
local function test_win_rate()
  if #test_pairs == 0 or simpo then return nil end
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

local ref_samples = {}       -- the reference's samples of each prompt, drawn once
local function evaluate()
  local state = la.get_rng_state()
  local result = la.no_grad(function()
    local r = held_out_pairs()
    local sums = {0, 0, 0, 0}                 -- KL, wins, judge score (sums over samples), samples
    for j = 1, #eval_prompts do
      if mine(j) then
        local seed = config.seed + 7919 + j     -- the same draws at every evaluation
        if not ref_samples[j] then
          la.manual_seed(seed)
          ref_samples[j] = with_ref(function(ref) return sample(ref, j) end)
        end
        la.manual_seed(seed)
        local s = sample(policy, j)
        local rl = ref_logps_of(s)
        for i = 1, #s.responses do
          sums[1] = sums[1] + (s.logp[i] - rl[i])
          if judge then
            local a, b = s.scores[i], ref_samples[j].scores[i]
            sums[2] = sums[2] + (a > b and 1 or a == b and 0.5 or 0)
            sums[3] = sums[3] + a
          end
          sums[4] = sums[4] + 1
        end
        r.sample = r.sample or s.responses[1]
      end
    end
    sums = la.dist.sum(sums)
    if sums[4] > 0 then r.kl = sums[1] / sums[4] end
    if judge and sums[4] > 0 then r.win_rate, r.judge = sums[2] / sums[4], sums[3] / sums[4] end
    r.test_win_rate = test_win_rate()
    return r
  end)
  la.set_rng_state(state)
  return result
end

-- The held-out measure that picks the best checkpoint, as a number to maximise.
local function merit(r)
  local v = r[({eval_loss = "eval_loss", eval_accuracy = "eval_rewards/accuracies", win_rate = "win_rate"})[config.best_by]]
  if v == nil then return nil end
  return config.best_by == "eval_loss" and -v or v
end

-- 3. Training ---------------------------------------------------------------------------
local opt = la.optim.AdamW(policy, {lr = config.lr, weight_decay = 0})
local schedule = la.optim.schedule.linear{lr = config.lr, warmup = config.warmup, total = config.steps,
                                          final_lr = config.lr}
local start, extra = 0, {}
if config.resume then start, extra = run:restore_checkpoint(policy, opt) end
start, extra = start or 0, extra or {}
local best_merit = extra.best_merit
local logger = log.open(run, {total = config.steps, start_step = start,
  show = {"loss", "rewards/accuracies", "eval_loss", "eval_rewards/accuracies", "kl", "win_rate"}})
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
    local pc, pr = logps(policy, mb)
    return pair_loss(mb, pc, pr, ref_chosen, ref_rejected)
  end, dp)
  metrics.loss = loss
  if recipe.finite_step(config, step, loss, policy, logger) then opt:step() end
  local evaluated = recipe.eval_due(config, step, config.steps)
  local better = false
  if evaluated then
    for k, v in pairs(evaluate()) do metrics[k] = v end
    local m = merit(metrics)
    better = m ~= nil and (best_merit == nil or m > best_merit)
    if better then best_merit = m end
  end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if better then run:save_model(policy, {step = step, best_by = config.best_by}, "best.safetensors") end
  if evaluated or step == config.steps then run:save_checkpoint(policy, opt, step, {best_merit = best_merit}) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- Report ----------------------------------------------------------------------------------
local rows = log.read(run:path("metrics.jsonl"))
local first, best, last = nil, nil, nil         -- evaluations: at step 0, best by best_by after it, last
for _, r in ipairs(rows) do
  if r.eval_loss then
    if r.step == 0 then first = r end
    if r.step > 0 and merit(r) and (not best or merit(r) > merit(best)) then best = r end
    last = r
  end
end
local function curve(key) return log.series(rows, key) end
local function panel(title, key, eval_key, ylabel)
  local p = plot.new{title = title, xlabel = "step", ylabel = ylabel}
  local xs, ys = curve(key)
  if #xs > 0 then p:line(xs, ys, {label = "train", width = 1}) end
  local ex, ey = curve(eval_key)
  if #ex > 0 then p:line(ex, ey, {label = "held-out", markers = true}) end
  return p
end
local es, ks = curve("kl")
local _, ws = curve("win_rate")
local _, js = curve("judge")
local curves = {
  panel(config.loss .. " loss", "loss", "eval_loss"),
  panel("implicit-reward accuracy", "rewards/accuracies", "eval_rewards/accuracies"),
  panel("implicit-reward margin", "rewards/margins", "eval_rewards/margins"),
  plot.new{title = "KL to the reference, held-out prompts", xlabel = "step", ylabel = "nats per completion"}
    :line(es, ks, {label = config.loss, markers = true}),
}
if judge then
  curves[#curves + 1] = plot.new{title = "win rate against the reference vs KL", xlabel = "KL(policy || reference)",
    ylabel = "win rate"}:line(ks, ws, {label = config.loss, markers = true})
end
local ts_steps, ts = curve("test_win_rate")
if #ts > 0 then
  curves[#curves + 1] = plot.new{title = "win rate on held-out words", xlabel = "step", ylabel = "win rate"}
    :line(ts_steps, ts, {label = config.loss, markers = true})
end
plot.save_grid(run:path("curves.svg"), curves, {cols = 3})
local function row(label, r)
  local f = function(k) return recipe.fmt("%.3f", r and r[k]) end
  return {label, r and r.step or "-", f("eval_loss"), f("eval_rewards/accuracies"), f("eval_rewards/margins"), f("kl"),
          f("win_rate"), f("judge"), f("test_win_rate")}
end
run:write("report.md", table.concat({
  string.format("# %s on %s (beta %g%s)", config.loss, config.train, config.beta,
    average and ", length-normalised log-probs" or ""), "",
  recipe.md_table({"checkpoint", "step", "held-out loss", "held-out accuracy", "held-out margin", "KL to reference",
                   "win rate vs reference", "judge score", "win rate on held-out words"},
                  {row("start", first), row("best", best), row("last", last)}), "",
  string.format("Held-out pairs: %s (%d scored). KL and win rate: completions sampled (temperature 1) for %d held-out "
    .. "prompts, %d each, against the reference's for the same prompts; judge: %s. \"best\" is the checkpoint with the %s "
    .. "(written to best.safetensors).", eval_file, #eval_list, #eval_prompts, config.eval_samples,
    judge and judge.name or "none (no win rate)",
    ({eval_loss = "lowest held-out loss", eval_accuracy = "highest held-out accuracy",
      win_rate = "highest win rate"})[config.best_by]),
  "", "![curves](curves.svg)", "",
}, "\n"))
local saved = recipe.save_final(run, policy, config)   -- hf/ (save_pretrained), or with lora adapter/
if last then
  print(string.format("%s: held-out loss %.3f, accuracy %.3f, margin %.3f, KL %.3f, win rate %s (best by %s at step %s); "
    .. "report in %s", config.loss, last.eval_loss, last["eval_rewards/accuracies"], last["eval_rewards/margins"], last.kl,
    recipe.fmt("%.3f", last.win_rate, "- (no judge)"), config.best_by, recipe.fmt("%d", best and best.step),
    run:path("report.md")))
else
  print(string.format("%s: not evaluated (eval_every=0); report in %s", config.loss, run:path("report.md")))
end
return {last = last, best = best, first = first, run = run, saved = saved,
        curve = {step = es, kl = ks, win_rate = ws, judge = js, test_win_rate = ts}}
