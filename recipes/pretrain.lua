-- recipes/pretrain.lua -- a small GPT language model trained from scratch on
-- raw text (by default the bundled Jane Austen novels).
--
--   lualign recipes/pretrain.lua steps=300 n_layer=2        (lualign pretrain --help)
--
-- 1. Train a byte-level BPE tokenizer on the training text (or load one).
-- 2. Cut the token stream into blocks of `context` tokens; shuffle per epoch.
-- 3. AdamW with linear warmup and cosine decay, gradient clipping.
-- 4. Every eval_every steps: loss on held-out text; checkpoints to resume from.
-- Writes runs/<name>/: tokenizer.json, model.safetensors, checkpoint.safetensors,
-- metrics.jsonl, loss.svg and report.md.

local la = require "lualign"
local recipe = require "lualign.recipe"
local plot = require "lualign.plot"
local log = require "lualign.log"

local config = recipe.config(arg, "pretrain", {
  {"train_text", "austen/train.txt", "training text: a bundled file (la.data.path) or a path"},
  {"valid_text", "austen/validation.txt", "held-out text"},
  {"extra_texts", "qa/train.jsonl,sentiment/train.jsonl,vader/modest/train.jsonl",
   "JSONL files whose texts join the tokenizer's training text (comma-separated; '' for none)"},
  {"tokenizer", "", "a tokenizer.json to use instead of training one"},
  {"vocab_size", 2048, "vocabulary of the trained tokenizer"},
  {"n_layer", 4, "transformer blocks"},
  {"n_embd", 128, "width"},
  {"n_head", 4, "attention heads"},
  {"context", 128, "tokens per training block (and the model's n_positions)"},
  {"dropout", 0.0, "dropout probability"},
  {"batch_size", 16, "blocks per step"},
  {"steps", 600, "optimizer steps"},
  {"lr", 2e-3, "peak learning rate"},
  {"min_lr", 2e-4, "learning rate at the end of the cosine decay"},
  {"warmup", 40, "warmup steps"},
  {"weight_decay", 0.1, "AdamW weight decay (matrices only)"},
  {"grad_clip", 1.0, "clip the global gradient norm to this (0: off)"},
  {"eval_every", 150, "steps between held-out evaluations and checkpoints (0: none; a checkpoint at the end)"},
  {"eval_batches", 16, "held-out batches per evaluation"},
})
local run = recipe.run(config)   -- refuses a folder holding another run; writes nothing yet

-- 1. Tokenizer ---------------------------------------------------------------
local train_file = recipe.data_file(config.train_text, "train_text")
local train_text = la.data.read_text(train_file)
local valid_text = la.data.read_text(recipe.data_file(config.valid_text, "valid_text"))
local extra_files = {}
for f in config.extra_texts:gmatch("[^,]+") do extra_files[#extra_files + 1] = recipe.data_file(f, "extra_texts") end
local tok, tok_dir
if config.tokenizer ~= "" then tok, tok_dir = recipe.load_tokenizer(config.tokenizer) end
run:start()                      -- the inputs are there: config.json, and from here the run's files
if tok then
  run:save_tokenizer(tok, tok_dir)
else
  -- trained once; a resumed run keeps its ids (computed again if the texts or vocab_size differ)
  local inputs = {train_text = recipe.file_identity(train_file), vocab_size = config.vocab_size, extra_texts = {}}
  for i, f in ipairs(extra_files) do inputs.extra_texts[i] = recipe.file_identity(f) end
  tok = la.tokenizer.load(run:cached("tokenizer.json", inputs, function(path)
    local corpus = {train_text}
    for _, f in ipairs(extra_files) do
      for _, text in ipairs(recipe.jsonl_texts(f)) do corpus[#corpus + 1] = text end
    end
    la.tokenizer.train(corpus, {vocab_size = config.vocab_size}):save(path)
  end))
end

-- 2. Data ---------------------------------------------------------------------
local train = la.data.lm_loader(train_text, tok, {block_size = config.context,
  batch_size = config.batch_size, seed = config.seed, drop_last = true})
local valid = la.data.lm_loader(valid_text, tok, {block_size = config.context,
  batch_size = config.batch_size, shuffle = false, drop_last = true})

-- 3. Model and optimizer ----------------------------------------------------------
local model = la.models.gpt{vocab_size = tok.vocab_size, n_positions = config.context,
  n_embd = config.n_embd, n_layer = config.n_layer, n_head = config.n_head, dropout = config.dropout}
local dp = la.dist.data_parallel(model)   -- under mpirun: rank 0's weights on every rank
dp:shard(train)
local opt = la.optim.AdamW(model, {lr = config.lr, betas = {0.9, 0.95}, weight_decay = config.weight_decay})
local schedule = la.optim.schedule.cosine{lr = config.lr, warmup = config.warmup,
  total = config.steps, min_lr = config.min_lr}

local start = 0
if config.resume then start = run:restore_checkpoint(model, opt) or 0 end

-- Mean next-token loss over the first eval_batches held-out batches.
local function evaluate()
  model:eval()
  local total, n = 0, 0
  la.no_grad(function()
    for batch in valid:epoch(1) do
      total, n = total + model:loss(batch.ids, batch.targets):item(), n + 1
      if n == config.eval_batches then break end
    end
  end)
  model:train()
  return total / n
end

-- 4. Training loop --------------------------------------------------------------------
print(string.format("pretrain: %.2fM parameters, %d train tokens, %d held-out, vocabulary %d",
  model:num_parameters() / 1e6, #train.stream, #valid.stream, tok.vocab_size))
local logger = log.open(run, {total = config.steps, start_step = start, show = {"loss", "lr"}})
local first_valid = start == 0 and config.eval_every > 0 and evaluate() or nil
for step, batch in recipe.batches(train, start) do
  if step > config.steps then break end
  opt.lr = schedule(step)
  local loss = la.dist.global_mean(model:loss(batch.ids, batch.targets), batch.ids:numel())
  opt:zero_grad()
  dp:backward(loss)
  local norm = config.grad_clip > 0 and la.optim.clip_grad_norm(model, config.grad_clip) or nil
  local loss_value = la.dist.sum(loss:item())
  if recipe.finite_step(config, step, loss_value, norm or model, logger) then opt:step() end
  local metrics = {loss = loss_value, lr = opt.lr, grad_norm = norm}
  if recipe.eval_due(config, step, config.steps) then metrics.valid_loss = evaluate() end
  logger:log(step, metrics)   -- before the checkpoint, so a run killed in between redoes the step
  if metrics.valid_loss or step == config.steps then run:save_checkpoint(model, opt, step) end
  recipe.check_stop(config, step, logger)
end
logger:close()

-- 5. Report -----------------------------------------------------------------------
local rows = log.read(run:path("metrics.jsonl"))
local steps, losses = log.series(rows, "loss")
local vsteps, vlosses = log.series(rows, "valid_loss")
plot.new{title = "pretraining loss", xlabel = "step", ylabel = "cross-entropy (nats/token)"}
  :line(steps, losses, {label = "train", width = 1})
  :line(vsteps, vlosses, {label = "held-out", markers = true})
  :save(run:path("loss.svg"))
local final_valid = vlosses[#vlosses]   -- nil when eval_every=0 turned evaluation off
local prompt = tok:encode("It is a truth universally acknowledged")
prompt = {table.unpack(prompt, 1, math.min(#prompt, config.context // 2))}
local sample = model:generate({prompt}, {max_new_tokens = math.min(40, config.context - #prompt),
                                         temperature = 0.8, top_k = 50})
local sample_text = tok:decode(prompt) .. tok:decode(sample.sequences[1])
local summary = {
  {"held-out loss before training", recipe.fmt("%.3f", first_valid, start > 0 and "(resumed)" or "(not evaluated)")},
  {"held-out loss after training", recipe.fmt("%.3f", final_valid, "(not evaluated: eval_every=0)")},
  {"uniform-guess loss (ln V)", string.format("%.3f", math.log(tok.vocab_size))},
  {"parameters", string.format("%.2fM", model:num_parameters() / 1e6)},
}
run:write("report.md", table.concat({
  "# Pretraining: " .. config.name, "",
  recipe.md_table({"", "value"}, summary), "",
  "![loss](loss.svg)", "",
  "Sample (temperature 0.8, top-k 50):", "", "> " .. sample_text:gsub("\n", " "), "",
}, "\n"))
local saved = recipe.save_final(run, model, config)   -- hf/: the model as a Hugging Face folder
print(string.format("pretrain: held-out loss %s (ln V = %.3f); report in %s", recipe.fmt("%.3f", final_valid, "not evaluated"),
  math.log(tok.vocab_size), run:path("report.md")))
print("sample: " .. sample_text:gsub("\n", " "))
return {valid_loss = final_valid, first_valid_loss = first_valid, run = run, saved = saved}
