-- recipes/sft.lua -- supervised fine-tuning on prompt/completion pairs (or
-- chat messages), with the loss on completion tokens only.
--
--   lualign recipes/sft.lua base=runs/pretrain steps=300        (lualign sft --help)
--
-- 1. Load the base model and its tokenizer: a lualign run (pretraining) or a
--    Hugging Face model folder (its tokenizer and chat template come with it).
-- 2. Batch the examples: prompt + completion + EOS, labels masked to the
--    completion; optionally pack several examples per row (segment ids keep
--    them from attending to each other).
-- 3. AdamW with warmup and cosine decay; held-out completion loss of the base
--    model before training and of the tuned model every eval_every steps.
-- 4. Sample answers to held-out prompts for the report.

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "sft", recipe.with_memory_keys{
  {"base", "runs/pretrain", "base model: a run folder (or its model.safetensors) or a Hugging Face model folder"},
  {"tokenizer", "", "tokenizer.json or a folder holding one (default: the base model's folder)"},
  {"train", "qa/train.jsonl", "SFT examples: a bundled file or a path"},
  {"extra_train", "", "preference files whose chosen and rejected responses join the training " ..
   "examples as they are, without the formats (comma-separated)"},
  {"valid", "auto", "held-out SFT examples: a file, or '' for eval_fraction of the training prompts ('auto': " ..
   "qa/validation.jsonl for the bundled data, else '')"},
  {"eval_fraction", 0.05, "share of the training file's prompts held out (with all their examples) when valid is ''"},
  {"chat", false, "prompt/completion examples through the tokenizer's chat template (a user turn and an " ..
   "assistant turn) instead of the formats; messages examples always go through it"},
  {"prompt_format", "Question: %s\nAnswer:", "how a prompt is written (%s: the prompt)"},
  {"completion_format", " %s", "how a completion is written"},
  {"max_len", 128, "longest training sequence (prompt + completion)"},
  {"pack", true, "pack several examples into one row"},
  {"batch_size", 16, "rows per step"},
  {"steps", 300, "optimizer steps"},
  {"lr", 1e-3, "peak learning rate"},
  {"warmup", 20, "warmup steps"},
  {"weight_decay", 0.0, "AdamW weight decay (matrices only)"},
  {"grad_clip", 1.0, "clip the global gradient norm (0: off)"},
  {"eval_every", 100, "steps between evaluations and checkpoints (0: none; a checkpoint at the end)"},
  {"eval_examples", 200, "held-out examples per evaluation"},
  {"samples", 5, "held-out prompts answered in the report"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet

-- 1. Base model and tokenizer --------------------------------------------------
local base = recipe.model_source(config.base, "base")   -- a lualign run or a Hugging Face folder
local tok, tok_dir = recipe.load_tokenizer(config.tokenizer, base.dir)
local model = recipe.prepare_model(recipe.load_model(base), config)   -- lora, weights_dtype, checkpoint
local dp = la.dist.data_parallel(model)   -- under mpirun: rank 0's weights on every rank

-- 2. Data ------------------------------------------------------------------------
local fmt = {prompt_format = config.prompt_format, completion_format = config.completion_format,
             max_len = config.max_len, chat = config.chat}
local function loader(source, opts)
  local o = {batch_size = config.batch_size, seed = config.seed}
  for k, v in pairs(fmt) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return la.data.sft_loader(source, tok, o)
end
local train_file = recipe.data_file(config.train, "train")
-- held-out examples: valid=FILE, or a share of the training prompts with all their examples
local train_examples, valid_examples, valid_name = recipe.held_out(la.data.load(train_file, "sft"), train_file,
  recipe.auto(config, "valid", recipe.is_bundled(config, "train", "qa/"), "qa/validation.jsonl", ""),
  config.eval_fraction, "sft", "valid")
for i, ex in ipairs(train_examples) do   -- the formats, applied once here (chats keep their template)
  if ex.prompt and ex.completion and not config.chat then
    train_examples[i] = {prompt = config.prompt_format:format(ex.prompt),
                         completion = config.completion_format:format(ex.completion)}
  end
end
for f in config.extra_train:gmatch("[^,]+") do
  for _, ex in ipairs(la.data.load(recipe.data_file(f, "extra_train"), "preference")) do
    train_examples[#train_examples + 1] = {prompt = ex.prompt, completion = ex.chosen}
    train_examples[#train_examples + 1] = {prompt = ex.prompt, completion = ex.rejected}
  end
end
local plain = {prompt_format = "%s", completion_format = "%s"}
local train = dp:shard(loader(train_examples, {pack = config.pack, drop_last = true,
  prompt_format = plain.prompt_format, completion_format = plain.completion_format}))
train.name = config.train .. (config.extra_train ~= "" and (" + " .. config.extra_train) or "")
local held_out = {table.unpack(valid_examples, 1, math.min(#valid_examples, config.eval_examples))}
local valid = loader(held_out, {shuffle = false})
valid.name = valid_name
recipe.check_batches(train)
run:start()                      -- the inputs are there: config.json, and from here the run's files
run:save_tokenizer(tok, tok_dir)
local data_metrics = recipe.describe_data(config, "train", train)
for k, v in pairs(recipe.describe_data(config, "valid", valid)) do data_metrics[k] = v end

local function batch_loss(m, batch)
  local logits = m(batch.ids, {attention_mask = batch.attention_mask, segments = batch.segment_ids,
                               position_ids = batch.position_ids})
  return la.loss.cross_entropy(logits, batch.targets)
end

-- Mean loss per completion token over the held-out examples.
local function evaluate(m)
  m:eval()
  local total, tokens = 0, 0
  la.no_grad(function()
    for batch in valid:epoch(1) do
      local loss, info = batch_loss(m, batch)
      total, tokens = total + loss:item() * info.tokens, tokens + info.tokens
    end
  end)
  m:train()
  return total / tokens
end

-- 3. Training -------------------------------------------------------------------------
local opt = la.optim.AdamW(model, {lr = config.lr, betas = {0.9, 0.95}, weight_decay = config.weight_decay})
local schedule = la.optim.schedule.cosine{lr = config.lr, warmup = config.warmup, total = config.steps,
                                          min_lr = config.lr / 10}
local start, extra = 0, {}
if config.resume then start, extra = run:restore_checkpoint(model, opt) end
start, extra = start or 0, extra or {}
local base_loss = extra.base_loss or (config.eval_every > 0 and evaluate(model) or nil)
if base_loss then print(string.format("sft: held-out loss of the base model %.3f", base_loss)) end

local logger = log.open(run, {total = config.steps, start_step = start, show = {"loss", "lr"}})
if start == 0 then logger:log(0, data_metrics) end
for step, batch in recipe.batches(train, start) do
  if step > config.steps then break end
  opt.lr = schedule(step)
  opt:zero_grad()
  -- grad_accum micro-batches; the loss is the mean over the (global) batch's completion tokens
  local loss = recipe.accumulate(config, batch, la.accumulate.tokens, function(mb) return batch_loss(model, mb) end, dp)
  local norm = config.grad_clip > 0 and la.optim.clip_grad_norm(model, config.grad_clip) or nil
  if recipe.finite_step(config, step, loss, norm or model, logger) then opt:step() end
  local metrics = {loss = loss, lr = opt.lr, grad_norm = norm}
  if recipe.eval_due(config, step, config.steps) then metrics.valid_loss = evaluate(model) end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if metrics.valid_loss or step == config.steps then run:save_checkpoint(model, opt, step, {base_loss = base_loss}) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- 4. Samples and report -------------------------------------------------------------------
local rows = log.read(run:path("metrics.jsonl"))
local steps, losses = log.series(rows, "loss")
local vsteps, vlosses = log.series(rows, "valid_loss")
local final_loss = vlosses[#vlosses]
plot.new{title = "SFT loss (completion tokens)", xlabel = "step", ylabel = "nats/token"}
  :line(steps, losses, {label = "train", width = 1})
  :line(vsteps, vlosses, {label = "held-out", markers = true})
  :vline(0, {label = "base model held-out " .. recipe.fmt("%.2f", base_loss, "not evaluated")})
  :save(run:path("loss.svg"))

-- A held-out example as a prompt to answer: its ids (formatted, or through the
-- chat template: a conversation up to its last assistant turn), the question
-- shown and the reference answer.
local function prompt_of(ex)
  if ex.prompt and ex.completion and not config.chat then
    return tok:encode(config.prompt_format:format(ex.prompt)), ex.prompt, ex.completion
  end
  local last = #ex.messages
  while ex.messages[last].role ~= "assistant" do last = last - 1 end
  local context = {table.unpack(ex.messages, 1, last - 1)}
  local ids = tok:apply_chat_template(context, {add_generation_prompt = true})
  return ids, context[#context] and context[#context].content or "", ex.messages[last].content
end
local prompts, questions, answers = {}, {}, {}
local n_positions = model:max_positions()
local max_new = math.min(32, n_positions // 2)
local sample_rows = {}
for i = 1, math.min(config.samples, #held_out) do
  local ids, question, reference = prompt_of(held_out[i])
  prompts[i] = {table.unpack(ids, math.max(1, #ids - (n_positions - max_new) + 1))}   -- keep the end
  questions[i] = question
  sample_rows[i] = {(question:gsub("|", "/")), "", (reference:gsub("|", "/"))}
end
local out = model:generate(prompts, {max_new_tokens = max_new, temperature = 0, eos_id = tok.eos_ids or tok.eos_id,
                                     pad_id = tok.pad_id or tok.eos_id})
for i = 1, #prompts do
  answers[i] = tok:decode(out.sequences[i], {skip_special_tokens = true}):gsub("\n", " ")
  sample_rows[i][2] = answers[i]:gsub("|", "/")
end
run:write("report.md", table.concat({
  "# Supervised fine-tuning: " .. config.name, "",
  recipe.md_table({"", "held-out loss (nats per completion token)"}, {
    {"base model", recipe.fmt("%.3f", base_loss, "not evaluated (eval_every=0)")},
    {"after SFT", recipe.fmt("%.3f", final_loss, "not evaluated (eval_every=0)")},
  }), "", "![loss](loss.svg)", "", "Greedy answers to held-out questions:", "",
  recipe.md_table({"prompt", "model", "reference"}, sample_rows), "",
}, "\n"))
local saved = recipe.save_final(run, model, config)   -- hf/ (save_pretrained), or with lora adapter/
print(string.format("sft: held-out loss %s -> %s; report in %s", recipe.fmt("%.3f", base_loss),
  recipe.fmt("%.3f", final_loss), run:path("report.md")))
for i = 1, #prompts do print(string.format("  Q: %s\n  A: %s", questions[i], answers[i])) end
return {base_loss = base_loss, valid_loss = final_loss, run = run, saved = saved}
