-- recipes/experiments/grpo_arith.lua -- the bundled verifiable task on which a
-- skill carries over: GRPO on two-number additions and subtractions (data/arith)
-- with an exact-match reward, against the SFT model it starts from.  GRPO's
-- learning rate and length are chosen on validation problems, then the choice
-- is measured once, with fresh seeds, on problems nothing chose or trained on.
--
--   lualign recipes/experiments/grpo_arith.lua base=runs/pretrain
--
-- Needs a pretrained model (the pipeline's runs/pretrain).  The problems
-- ("What is 23 + 18?" -> "41", operands 0..49) come in three files split by
-- operand pair, so no problem of one file has the operands of a problem of
-- another, in either order: arith/sft.jsonl for supervised fine-tuning,
-- arith/train.jsonl for GRPO, arith/test.jsonl held out from both.
--   1. SFT with recipes/sft.lua on arith/sft.jsonl (its held-out loss measured
--      on arith/train.jsonl), the problem written as it is and the answer
--      right after it.
--   2. arith/train.jsonl's operand pairs split in two by the digest of the
--      pair (la.data.split_by_prompt): validation_fraction of them for
--      validation, the rest GRPO's prompts (both written into the run folder).
--   3. Choice: recipes/grpo.lua (its defaults but for what the data requires:
--      the arith/ examples, the problem as it is) for each learning rate of
--      `lrs` and each of `select_seeds`, `iterations` long, evaluated on the
--      validation problems every `eval_every` iterations.  The chosen learning
--      rate and length: the highest mean greedy accuracy over the seeds.
--   4. Measure: the chosen run again, from the same SFT model on the same
--      prompts, with each of `seeds`: exact-match accuracy on the first 200
--      problems of arith/test.jsonl of greedy answers and of sampled ones (the
--      mean over eval_samples per problem, at temperature 1), before and after.
-- With validation_fraction=0 there is no choice: GRPO trains on all of
-- arith/train.jsonl with the one learning rate `lrs` gives, and is measured
-- on arith/test.jsonl (the design docs/grpo.md calls the first).
-- Writes <out_dir>/<name>/results.md.

local recipe = require "lualign.recipe"
local la = require "lualign"
local log = require "lualign.log"
local cjson = require "cjson"
local experiment = require "lualign.experiment"

local config = recipe.config(arg, "grpo_arith", {
  {"base", "runs/pretrain", "the pretrained model the arithmetic SFT starts from"},
  {"sft_steps", 1000, "steps of the arithmetic SFT"},
  {"policy", "", "an SFT run of an earlier grpo_arith to start from, instead of fine-tuning one (empty: fine-tune)"},
  {"lrs", "3e-5,1e-5,3e-6,1e-6", "GRPO learning rates to choose from on the validation problems (comma-separated)"},
  {"iterations", 180, "GRPO iterations of each run compared"},
  {"eval_every", 60, "iterations between validation evaluations: the lengths a run can be chosen at"},
  {"validation_fraction", 0.2, "share of arith/train.jsonl's operand pairs held out for the choice (0: no choice)"},
  {"select_seeds", "1,2,3", "GRPO seeds of the runs compared on the validation problems"},
  {"seeds", "4,5,6", "GRPO seeds of the chosen run measured on arith/test.jsonl"},
})
local lrs = {}
for v in config.lrs:gmatch("[^,%s]+") do lrs[#lrs + 1] = tonumber(v) or error("lrs: '" .. v .. "' is not a number", 0) end
if #lrs == 0 then error("lrs: no learning rate", 0) end
if config.validation_fraction == 0 and #lrs > 1 then
  error("lrs: " .. #lrs .. " learning rates but validation_fraction=0: nothing to choose them on", 0)
end
if config.iterations % config.eval_every ~= 0 then
  error(string.format("iterations (%d) must be a multiple of eval_every (%d)", config.iterations, config.eval_every), 0)
end
local run = recipe.run(config):start()
local here = debug.getinfo(1, "S").source:match("^@(.*)/experiments/[^/]*$") or "recipes"
local GRPO = here .. "/grpo.lua"

local SFT, TRAIN, TEST = "arith/sft.jsonl", "arith/train.jsonl", "arith/test.jsonl"
local function lines(file)
  local out = {}
  for line in io.lines(file) do out[#out + 1] = line end
  return out
end

-- 1. The SFT model: the problem as it is, and the answer right after it (the
-- same text as GRPO's prompts).
local sft_run, sft, sft_seconds = experiment.sft_run(here .. "/sft.lua", config.policy,
  {name = config.name .. "_sft", out_dir = config.out_dir, overwrite = config.overwrite, seed = config.seed,
   base = config.base, train = SFT, valid = TRAIN, steps = config.sft_steps, prompt_format = "%s",
   completion_format = "%s"})

-- 2. GRPO's prompts and the validation problems: train.jsonl split by the
-- unordered operand pair, so a pair's two sums and its difference stay on one side.
local prompts, validation = TRAIN, nil
local train_lines = lines(la.data.path(TRAIN))
if config.validation_fraction > 0 then
  local problems = {}
  for i, line in ipairs(train_lines) do problems[i] = {line = line, prompt = cjson.decode(line).prompt} end
  local function pair(p)
    local a, b = p.prompt:match("^What is (%d+) [+-] (%d+)%?$")
    if not a then error(TRAIN .. ": not an arithmetic problem: " .. p.line, 0) end
    a, b = tonumber(a), tonumber(b)
    return string.format("%d,%d", math.min(a, b), math.max(a, b))
  end
  local train_part, held_part = la.data.split_by_prompt(problems, config.validation_fraction, pair)
  -- written pair by pair, in the order of each pair's first problem
  local function write(name, list)
    local order, by_pair = {}, {}
    for _, p in ipairs(list) do
      local k = pair(p)
      if not by_pair[k] then by_pair[k] = {}; order[#order + 1] = k end
      table.insert(by_pair[k], p.line)
    end
    local out = {}
    for _, k in ipairs(order) do table.move(by_pair[k], 1, #by_pair[k], #out + 1, out) end
    run:write(name, table.concat(out, "\n") .. "\n")
    return run:path(name), #out, #order
  end
  local n_train, n_valid, p_train, p_valid
  prompts, n_train, p_train = write("grpo_prompts.jsonl", train_part)
  validation, n_valid, p_valid = write("validation.jsonl", held_part)
  print(string.format("grpo_arith: %s split by operand pair: %d problems (%d pairs) for GRPO, %d (%d pairs) for "
    .. "validation", TRAIN, n_train, p_train, n_valid, p_valid))
end
local n_prompts, n_test = validation and #lines(prompts) or #train_lines, #lines(la.data.path(TEST))

local grpo_options = {out_dir = config.out_dir, overwrite = config.overwrite, policy = sft_run, prompt_format = "%s",
                      source_prefix = "arith/", prompts = prompts}
local function with(extra)
  local o = {}
  for k, v in pairs(grpo_options) do o[k] = v end
  for k, v in pairs(extra) do o[k] = v end
  return o
end

-- 3. The choice: every learning rate, every select seed, evaluated on the
-- validation problems every eval_every iterations.
local chosen = {lr = lrs[1], iterations = config.iterations}
local choice_md = ""
if validation then
  local rows, best = {}, nil
  for _, lr in ipairs(lrs) do
    local _, _, columns = experiment.grpo_seeds(GRPO, string.format("%s_select_lr%g", config.name, lr),
      config.select_seeds, with{lr = lr, eval_prompts = validation, eval_examples = 1000,
                                iterations = config.iterations, eval_every = config.eval_every})
    -- the greedy and sampled accuracy at iteration 0 (the SFT model) and at each evaluation, per seed
    local at = {}
    for s, r in ipairs(columns.runs) do
      local series = {[0] = {greedy = columns.greedy_before[s], sampled = columns.sampled_before[s]}}
      for _, row in ipairs(log.read(r:path("metrics.jsonl"))) do
        if row.eval_greedy then series[row.step] = {greedy = row.eval_greedy, sampled = row.eval_sampled} end
      end
      at[s] = series
    end
    for it = 0, config.iterations, config.eval_every do
      local g, s = {}, {}
      for k = 1, #at do g[k], s[k] = at[k][it].greedy, at[k][it].sampled end
      local gm, gsd = experiment.mean_sd(g)
      local sm, ssd = experiment.mean_sd(s)
      if it > 0 and (not best or gm > best.greedy) then best = {lr = lr, iterations = it, greedy = gm} end
      if it > 0 or lr == lrs[1] then
        rows[#rows + 1] = {it == 0 and "(SFT model)" or string.format("%g", lr), tostring(it),
                           string.format("%.3f ± %.3f", gm, gsd), string.format("%.3f ± %.3f", sm, ssd)}
      end
    end
  end
  chosen = best
  choice_md = table.concat({
    string.format("Choice on the validation problems (seeds %s; mean ± sd):", config.select_seeds), "",
    recipe.md_table({"GRPO lr", "iterations", "validation, greedy", "validation, sampled"}, rows), "",
    string.format("Chosen: lr %g, %d iterations (validation greedy %.3f).", chosen.lr, chosen.iterations, chosen.greedy),
    "",
  }, "\n")
  print("\n" .. choice_md)
end

-- 4. The measure: the chosen run with fresh seeds, on arith/test.jsonl.
local table_md, gains = experiment.grpo_seeds(GRPO, config.name, config.seeds,
  with{lr = chosen.lr, iterations = chosen.iterations, eval_prompts = TEST,
       eval_every = validation and chosen.iterations or config.eval_every})
local text = table.concat({
  "# GRPO on arithmetic problems: held-out exact-match accuracy", "",
  string.format("SFT on the %d problems of %s (%s); GRPO from it with its defaults but for prompt_format=%%s "
    .. "and source_prefix=arith/, on %d problems of %s%s.", #lines(la.data.path(SFT)), SFT,
    config.policy ~= "" and ("the SFT run " .. config.policy)
      or string.format("from %s, %d steps; completion loss on %s %.3f -> %.3f; %.0f s", config.base, config.sft_steps,
                       TRAIN, sft.base_loss, sft.valid_loss, sft_seconds),
    n_prompts, TRAIN, validation and string.format(" (the rest, %d, for validation)", #train_lines - n_prompts) or ""), "",
  choice_md,
  string.format("Measured with lr %g and %d iterations on the first 200 of the %d problems of %s, whose operand "
    .. "pairs neither SFT nor GRPO trains on; greedy answers, and the mean over sampled answers (temperature 1).",
    chosen.lr, chosen.iterations, n_test, TEST), "",
  table_md, "", gains, "",
}, "\n")
run:write("results.md", text)
print("\n" .. text)
print("written to " .. run:path("results.md"))
