-- recipes/reward.lua -- a Bradley-Terry reward model: a GPT trunk with a
-- scalar head read at each sequence's last token, trained so the preferred
-- response of a pair scores higher.
--
--   lualign recipes/reward.lua base=runs/pretrain steps=300     (lualign reward --help)
--
-- 1. Start from a language model's trunk and add a reward head.
-- 2. For each pair, score chosen and rejected in one (2B, T) forward pass.
-- 3. Loss -log sigmoid(r_chosen - r_rejected - margin), or its soft-label form
--    with the pair's p, plus optional reward centring c * mean((r1 + r2)^2).
-- 4. Held-out pairwise accuracy (the share of pairs scored the right way round).

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "reward", recipe.with_memory_keys{
  {"base", "runs/pretrain", "model whose trunk starts the reward model: a run folder or a Hugging Face model folder"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the base model's folder)"},
  {"train", "sentiment/train.jsonl", "preference pairs (plain or conversational): a bundled file or a path"},
  {"valid", "auto", "held-out pairs for accuracy during training: a file, or '' for eval_fraction of the " ..
   "training prompts ('auto': sentiment/validation.jsonl for the bundled data, else '')"},
  {"eval_fraction", 0.1, "share of the training file's prompts held out (with all their pairs) when valid is ''"},
  {"test", "auto", "held-out pairs for the final accuracy ('': the valid pairs; 'auto': sentiment/test.jsonl " ..
   "for the bundled data, else '')"},
  {"chat", false, "plain pairs' prompts through the tokenizer's chat template (conversational pairs always)"},
  {"soft_labels", true, "use each pair's p (when given) instead of a hard label"},
  {"use_margin", true, "subtract each pair's margin (when given)"},
  {"center", 0.01, "reward centring coefficient c (0: off)"},
  {"max_len", 96, "longest sequence (prompt + response)"},
  {"batch_size", 16, "pairs per step"},
  {"steps", 300, "optimizer steps"},
  {"lr", 5e-4, "peak learning rate"},
  {"warmup", 20, "warmup steps"},
  {"weight_decay", 0.01, "AdamW weight decay (matrices only)"},
  {"grad_clip", 1.0, "clip the global gradient norm (0: off)"},
  {"eval_every", 100, "steps between evaluations and checkpoints (0: none; a checkpoint at the end)"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet

-- 1. Model ---------------------------------------------------------------------
local base = recipe.model_source(config.base, "base")   -- a lualign run or a Hugging Face folder
local tok, tok_dir = recipe.load_tokenizer(config.tokenizer, base.dir)
local model = recipe.prepare_model(recipe.load_model(base, {reward_head = true}), config,
                                   {modules_to_save = {"reward_head"}})

-- 2. Data ----------------------------------------------------------------------
local bundled = recipe.is_bundled(config, "train", "sentiment/")
local train_file = recipe.data_file(config.train, "train")
-- held-out pairs: valid=FILE, or a share of the training prompts with all their pairs
local train_list, valid_list, valid_name = recipe.held_out(la.data.load(train_file, "preference"), train_file,
  recipe.auto(config, "valid", bundled, "sentiment/validation.jsonl", ""), config.eval_fraction, "preference", "valid")
local test_spec = recipe.auto(config, "test", bundled, "sentiment/test.jsonl", "")
local test_name = test_spec ~= "" and recipe.data_file(test_spec, "test") or valid_name
local test_list = test_spec ~= "" and la.data.load(test_name, "preference") or valid_list
local function loader(list, name, opts)
  local o = {batch_size = config.batch_size, seed = config.seed, max_len = config.max_len, chat = config.chat}
  for k, v in pairs(opts or {}) do o[k] = v end
  local l = la.data.preference_loader(list, tok, o)
  l.name = name
  return l
end
local dp = la.dist.data_parallel(model)   -- under mpirun: rank 0's weights (and fresh head) everywhere
local train = dp:shard(loader(train_list, train_file, {drop_last = true}))
local valid = loader(valid_list, valid_name, {shuffle = false})
local test = loader(test_list, test_name, {shuffle = false})
recipe.check_batches(train)
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = {}
for _, set in ipairs({{"train", train}, {"valid", valid}, {"test", test}}) do
  for k, v in pairs(recipe.describe_data(config, set[1], set[2])) do data_metrics[k] = v end
end

-- Rewards (B,) of the chosen and of the rejected sequences, in one pass.
local function rewards(batch)
  local ids = la.cat({batch.chosen.ids, batch.rejected.ids})
  local mask = la.cat({batch.chosen.attention_mask, batch.rejected.attention_mask})
  local r = model:rewards(model:hidden(ids, {attention_mask = mask}), mask)
  local B = batch.chosen.ids:size(1)
  return r:narrow(1, 1, B), r:narrow(1, B + 1, B)
end

local function pair_loss(batch)
  local rc, rr = rewards(batch)
  return la.loss.bradley_terry(rc, rr, {
    p = config.soft_labels and batch.p or nil,
    margin = config.use_margin and batch.margin or nil,
    center = config.center > 0 and config.center or nil,
  })
end

-- Share of pairs whose chosen response scores higher.
local function accuracy(data)
  model:eval()
  local right, n = 0, 0
  la.no_grad(function()
    for batch in data:epoch(1) do
      local rc, rr = rewards(batch)
      right = right + rc:gt(rr):float():sum():item()
      n = n + rc:numel()
    end
  end)
  model:train()
  return right / n
end

-- 3. Training ----------------------------------------------------------------------
local opt = la.optim.AdamW(model, {lr = config.lr, weight_decay = config.weight_decay})
local schedule = la.optim.schedule.cosine{lr = config.lr, warmup = config.warmup, total = config.steps,
                                          min_lr = config.lr / 10}
local start = config.resume and run:restore_checkpoint(model, opt) or 0
local logger = log.open(run, {total = config.steps, start_step = start, show = {"loss", "accuracy"}})
if start == 0 then logger:log(0, data_metrics) end
for step, batch in recipe.batches(train, start) do
  if step > config.steps then break end
  opt.lr = schedule(step)
  opt:zero_grad()
  local loss, m = recipe.accumulate(config, batch, la.accumulate.pairs, pair_loss, dp)   -- grad_accum micro-batches
  if config.grad_clip > 0 then la.optim.clip_grad_norm(model, config.grad_clip) end
  if recipe.finite_step(config, step, loss, model, logger) then opt:step() end
  local metrics = {loss = loss, accuracy = m.accuracy, margin = m.margin, lr = opt.lr}
  if recipe.eval_due(config, step, config.steps) then metrics.valid_accuracy = accuracy(valid) end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if metrics.valid_accuracy or step == config.steps then run:save_checkpoint(model, opt, step) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- 4. Held-out accuracy and report ------------------------------------------------------
local test_accuracy = accuracy(test)
local rows = log.read(run:path("metrics.jsonl"))
local steps, losses = log.series(rows, "loss")
local vsteps, vacc = log.series(rows, "valid_accuracy")
plot.save_grid(run:path("curves.svg"), {
  plot.new{title = "Bradley-Terry loss", xlabel = "step"}:line(steps, losses, {label = "train", width = 1}),
  plot.new{title = "held-out pairwise accuracy", xlabel = "step", ymin = 0.4, ymax = 1}
    :line(vsteps, vacc, {label = "validation", markers = true}),
}, {cols = 2})
run:write("report.md", table.concat({
  "# Reward model: " .. config.name, "",
  recipe.md_table({"", "value"}, {
    {"pairwise accuracy, test set (" .. test_name .. ")", string.format("%.1f%%", 100 * test_accuracy)},
    {"pairwise accuracy, validation (last)", recipe.fmt("%.1f%%", vacc[#vacc] and 100 * vacc[#vacc], "not evaluated (eval_every=0)")},
    {"training pairs", #train},
  }), "", "![curves](curves.svg)", "",
}, "\n"))
-- hf/: a sequence-classification folder (save_pretrained), or with lora adapter/
local saved = recipe.save_final(run, model, config, {reward_model = true})
print(string.format("reward: held-out pairwise accuracy %.1f%% (test), %s (validation); report in %s",
  100 * test_accuracy, recipe.fmt("%.1f%%", vacc[#vacc] and 100 * vacc[#vacc]), run:path("report.md")))
return {accuracy = test_accuracy, run = run, saved = saved}
