-- recipes/experiments/grpo_arith.lua -- the bundled verifiable task on which a
-- skill carries over: GRPO on two-number additions and subtractions (data/arith)
-- with an exact-match reward, over several seeds, against the SFT model it
-- starts from.
--
--   lualign recipes/experiments/grpo_arith.lua base=runs/pretrain seeds=1,2,3
--
-- Needs a pretrained model (the pipeline's runs/pretrain).  The problems
-- ("What is 23 + 18?" -> "41", operands 0..49) come in three files split by
-- operand pair, so no problem of one file has the operands of a problem of
-- another, in either order: arith/sft.jsonl for supervised fine-tuning,
-- arith/train.jsonl for GRPO's prompts, arith/test.jsonl held out from both.
-- First fine-tunes the model with recipes/sft.lua on arith/sft.jsonl (its
-- held-out loss measured on arith/train.jsonl), then runs recipes/grpo.lua
-- with its defaults for every seed from that SFT model, but for what the data
-- requires: the arith/ examples (source_prefix) and the problem written as it
-- is (prompt_format=%s, as in SFT).  The measure: the exact-match accuracy on
-- the first 200 problems of arith/test.jsonl of greedy answers and of sampled
-- ones (the mean over eval_samples per problem, at temperature 1), before and
-- after GRPO.  Writes <out_dir>/<name>/results.md.

local recipe = require "lualign.recipe"
local la = require "lualign"
local experiment = require "lualign.experiment"

local config = recipe.config(arg, "grpo_arith", {
  {"base", "runs/pretrain", "the pretrained model the arithmetic SFT starts from"},
  {"sft_steps", 1000, "steps of the arithmetic SFT"},
  {"policy", "", "an SFT run of an earlier grpo_arith to start from, instead of fine-tuning one (empty: fine-tune)"},
  {"seeds", "1,2,3", "GRPO seeds (comma-separated)"},
  {"lr", 3e-5, "GRPO's learning rate (grpo.lua's default)"},
})
local run = recipe.run(config):start()
local here = debug.getinfo(1, "S").source:match("^@(.*)/experiments/[^/]*$") or "recipes"

local SFT, TRAIN, TEST = "arith/sft.jsonl", "arith/train.jsonl", "arith/test.jsonl"
local function count(file)
  local n = 0
  for _ in io.lines(la.data.path(file)) do n = n + 1 end
  return n
end
print(string.format("grpo_arith: SFT on %d problems; GRPO on %d others, measured on %d more",
  count(SFT), count(TRAIN), count(TEST)))

-- The problem as it is, and the answer right after it: the same text for SFT's
-- examples and for GRPO's prompts.
local sft_run, sft, sft_seconds = experiment.sft_run(here .. "/sft.lua", config.policy,
  {name = config.name .. "_sft", out_dir = config.out_dir, overwrite = config.overwrite, seed = config.seed,
   base = config.base, train = SFT, valid = TRAIN, steps = config.sft_steps, prompt_format = "%s",
   completion_format = "%s"})

local table_md, gains = experiment.grpo_seeds(here .. "/grpo.lua", config.name, config.seeds,
  {out_dir = config.out_dir, overwrite = config.overwrite, policy = sft_run, prompt_format = "%s",
   source_prefix = "arith/", prompts = TRAIN, eval_prompts = TEST, lr = config.lr})
local text = table.concat({
  "# GRPO on arithmetic problems: held-out exact-match accuracy", "",
  string.format("SFT on the %d problems of %s from %s (%s); GRPO from it with its defaults (prompt_format=%%s, "
    .. "source_prefix=arith/, lr %g) on the %d problems of %s; measured on the first 200 of the %d problems of %s, "
    .. "whose operand pairs neither SFT nor GRPO trains on; greedy answers, and the mean over sampled answers "
    .. "(temperature 1).", count(SFT), SFT, config.base, config.policy ~= "" and ("the run " .. config.policy)
      or string.format("%d steps; completion loss on %s %.3f -> %.3f; %.0f s", config.sft_steps, TRAIN,
                       sft.base_loss, sft.valid_loss, sft_seconds),
    config.lr, count(TRAIN), TRAIN, count(TEST), TEST), "",
  table_md, "", gains, "",
}, "\n")
run:write("results.md", text)
print("\n" .. text)
print("written to " .. run:path("results.md"))
