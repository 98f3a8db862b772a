-- recipes/experiments/grpo_quiz.lua -- the bundled verifiable task: GRPO on
-- the quiz questions of data/qa with an exact-match reward, over several
-- seeds, against the SFT model it starts from.
--
--   lualign recipes/experiments/grpo_quiz.lua policy=runs/sft seeds=1,2,3
--
-- Needs an SFT model (the pipeline's runs/sft).  Every seed runs
-- recipes/grpo.lua with its defaults (quiz questions of qa/train.jsonl,
-- reward exact_match) from the same SFT model, and is measured on the quiz
-- questions of qa/validation.jsonl, which neither SFT nor GRPO trains on:
-- the exact-match accuracy of greedy answers and of sampled ones (the mean
-- over eval_samples per question, at temperature 1), before and after.
-- Writes runs/grpo_quiz/results.md.

local recipe = require "lualign.recipe"

local config = recipe.config(arg, "grpo_quiz", {
  {"policy", "runs/sft", "the SFT model every run starts from"},
  {"seeds", "1,2,3", "seeds (comma-separated)"},
})
local run = recipe.run(config):start()
local here = debug.getinfo(1, "S").source:match("^@(.*)/experiments/[^/]*$") or "recipes"
local la = require "lualign"

local function mean_sd(xs)
  local n, s = #xs, 0
  for _, x in ipairs(xs) do s = s + x end
  local m, v = s / n, 0
  for _, x in ipairs(xs) do v = v + (x - m) ^ 2 end
  return m, n > 1 and math.sqrt(v / (n - 1)) or 0
end

local rows, columns = {}, {greedy_before = {}, greedy_after = {}, sampled_before = {}, sampled_after = {},
                           greedy_gain = {}, sampled_gain = {}, seconds = {}}
for seed in config.seeds:gmatch("[^,]+") do
  local name = config.name .. "_seed" .. seed
  local t0 = la.clock()
  local r = recipe.run_script(here .. "/grpo.lua", {name = name, out_dir = config.out_dir, overwrite = config.overwrite,
                                                    seed = seed, policy = config.policy})
  local b, a = r.before, r.after
  local values = {greedy_before = b.greedy, greedy_after = a.greedy, sampled_before = b.sampled,
                  sampled_after = a.sampled, greedy_gain = a.greedy - b.greedy, sampled_gain = a.sampled - b.sampled,
                  seconds = la.clock() - t0}
  for k, v in pairs(values) do table.insert(columns[k], v) end
  rows[#rows + 1] = {seed, string.format("%.3f -> %.3f", b.greedy, a.greedy),
                     string.format("%.3f -> %.3f", b.sampled, a.sampled), string.format("%.0f s", values.seconds)}
end
local function ms(k, fmt)
  local m, sd = mean_sd(columns[k])
  return string.format(fmt or "%.3f ± %.3f", m, sd)
end
rows[#rows + 1] = {"mean ± sd", ms("greedy_before") .. " -> " .. ms("greedy_after"),
                   ms("sampled_before") .. " -> " .. ms("sampled_after"), ms("seconds", "%.0f ± %.0f s")}
local text = table.concat({
  "# GRPO on the quiz questions: held-out exact-match accuracy", "",
  "Policy " .. config.policy .. "; held-out: the quiz questions of qa/validation.jsonl; greedy answers, and the mean "
    .. "over sampled answers (temperature 1).", "",
  recipe.md_table({"seed", "greedy: SFT -> GRPO", "sampled: SFT -> GRPO", "time"}, rows), "",
  string.format("Gain over the SFT model (mean ± sd over seeds %s): greedy %s, sampled %s.", config.seeds,
    ms("greedy_gain", "%+.3f ± %.3f"), ms("sampled_gain", "%+.3f ± %.3f")), "",
}, "\n")
run:write("results.md", text)
print("\n" .. text)
print("written to " .. run:path("results.md"))
