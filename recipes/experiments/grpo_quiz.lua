-- recipes/experiments/grpo_quiz.lua -- the bundled verifiable task: GRPO on
-- the quiz questions of data/qa with an exact-match reward, over several
-- seeds, against the SFT model it starts from.
--
--   lualign recipes/experiments/grpo_quiz.lua base=runs/pretrain seeds=1,2,3
--
-- Needs a pretrained model (the pipeline's runs/pretrain).  First fine-tunes
-- it with recipes/sft.lua on the quiz questions of qa/train.jsonl alone (the
-- pipeline's SFT model, trained on every QA pair and review sentences, answers
-- none of them exactly, so GRPO would get no reward to learn from), then runs
-- recipes/grpo.lua with its defaults for every seed from that SFT model
-- (but for prompt_format: questions are written as they are, in SFT and GRPO)
-- with the exact_match reward.  held_out=validation: GRPO on the same quiz
-- questions, measured on the 168 quiz questions of qa/validation.jsonl, which
-- neither SFT nor GRPO trains on.  held_out=half: GRPO on every second quiz
-- question of qa/train.jsonl, measured on the others (which SFT trained on):
-- whether GRPO improves answers beyond the questions it practises on.  The
-- measure: the exact-match accuracy of greedy answers and of sampled ones
-- (the mean over eval_samples per question, at temperature 1), before and
-- after.  Writes <out_dir>/<name>/results.md.

local recipe = require "lualign.recipe"
local la = require "lualign"
local cjson = require "cjson"
local experiment = require "lualign.experiment"

local config = recipe.config(arg, "grpo_quiz", {
  {"base", "runs/pretrain", "the pretrained model the quiz SFT starts from"},
  {"sft_steps", 300, "steps of the quiz SFT"},
  {"policy", "", "an SFT run of an earlier grpo_quiz to start from, instead of fine-tuning one (empty: fine-tune)"},
  {"seeds", "1,2,3", "GRPO seeds (comma-separated)"},
  {"held_out", "validation", "what GRPO is measured on: 'validation' (the quiz questions of qa/validation.jsonl, "
   .. "which SFT never saw) or 'half' (every second quiz question of qa/train.jsonl, which SFT trained on and "
   .. "GRPO does not; GRPO trains on the others)"},
})
recipe.check_choice(config, "held_out", {"validation", "half"})
local run = recipe.run(config):start()
local here = debug.getinfo(1, "S").source:match("^@(.*)/experiments/[^/]*$") or "recipes"

-- The quiz lines of a bundled QA file (those at positions keep(i) of them, when
-- given), written to the run folder.
local function quiz_file(bundled, file, keep)
  local lines, i = {}, 0
  for line in io.lines(la.data.path(bundled)) do
    local ok, ex = pcall(cjson.decode, line)
    if ok and type(ex) == "table" and tostring(ex.source or ""):sub(1, 5) == "quiz/" then
      i = i + 1
      if not keep or keep(i) then lines[#lines + 1] = line end
    end
  end
  run:write(file, table.concat(lines, "\n") .. "\n")
  return run:path(file), #lines
end
local train, n_train = quiz_file("qa/train.jsonl", "quiz_train.jsonl")
local valid, n_valid = quiz_file("qa/validation.jsonl", "quiz_validation.jsonl")
local grpo_train, grpo_eval, n_grpo, n_eval = train, valid, n_train, n_valid
if config.held_out == "half" then
  grpo_train, n_grpo = quiz_file("qa/train.jsonl", "grpo_train.jsonl", function(i) return i % 2 == 1 end)
  grpo_eval, n_eval = quiz_file("qa/train.jsonl", "grpo_held_out.jsonl", function(i) return i % 2 == 0 end)
end
print(string.format("grpo_quiz: SFT on %d quiz questions; GRPO on %d, measured on %d others", n_train, n_grpo, n_eval))
-- The question as it is, and the answer right after it: the same text for SFT's
-- training and held-out examples and for GRPO's prompts.
local sft_run, sft, sft_seconds = experiment.sft_run(here .. "/sft.lua", config.policy,
  {name = config.name .. "_sft", out_dir = config.out_dir, overwrite = config.overwrite, seed = config.seed,
   base = config.base, train = train, valid = valid, steps = config.sft_steps, prompt_format = "%s",
   completion_format = "%s"})

local table_md, gains = experiment.grpo_seeds(here .. "/grpo.lua", config.name, config.seeds,
  {out_dir = config.out_dir, overwrite = config.overwrite, policy = sft_run, prompt_format = "%s",
   prompts = grpo_train, eval_prompts = grpo_eval})
local text = table.concat({
  "# GRPO on the quiz questions: held-out exact-match accuracy", "",
  string.format("SFT on the %d quiz questions of qa/train.jsonl from %s (%s); GRPO from it with its defaults "
    .. "(prompt_format=%%s) on %s. Held out from GRPO: %s; greedy answers, and the mean over sampled answers "
    .. "(temperature 1).", n_train, config.base, config.policy ~= "" and ("the run " .. config.policy)
      or string.format("%d steps; completion loss on the %d quiz questions of qa/validation.jsonl %.3f -> %.3f; %.0f s",
                       config.sft_steps, n_valid, sft.base_loss, sft.valid_loss, sft_seconds),
    config.held_out == "half" and string.format("every second one of them (%d)", n_grpo) or "the same questions",
    config.held_out == "half" and string.format("the first 200 of the other %d, which SFT trained on", n_eval)
      or string.format("the %d quiz questions of qa/validation.jsonl, which SFT never saw", n_valid)), "",
  table_md, "", gains, "",
}, "\n")
run:write("results.md", text)
print("\n" .. text)
print("written to " .. run:path("results.md"))
