-- recipes/pipeline.lua -- the main job: every recipe in turn on the bundled
-- data, from a tokenizer and a base model trained from scratch to preference
-- optimisation with soft labels.  `make demo` runs it.
--
--   lualign recipes/pipeline.lua                 (8 minutes on 2 cores shared with other jobs)
--   lualign recipes/pipeline.lua scale=0.25      (a quick pass with fewer steps)
--
--   1. pretrain  a GPT on three Jane Austen novels (and a BPE tokenizer)
--   2. sft       on quiz and WordNet question/answer pairs and review sentences
--   3. reward    a Bradley-Terry reward model on human-labelled sentiment pairs
--   4. ppo       the SFT policy against that reward model, judged by a lexicon
--   5. gdpo      DPO, cDPO and GDPO on soft-label word pairs, where modest labels
--                dominate and where confident ones do, by win rate against the
--                reference under a held-out judge
-- Each stage writes runs/<stage>/ with its report; the summary goes to
-- runs/pipeline/summary.md and to the terminal.

local recipe = require "lualign.recipe"

local config = recipe.config(arg, "pipeline", {
  {"scale", 1.0, "multiplies every stage's number of steps"},
  {"stages", "pretrain,sft,reward,ppo,gdpo", "stages to run (comma-separated)"},
  {"losses", "dpo,cdpo,gdpo", "preference losses compared in the gdpo stage"},
  {"datasets", "modest,confident", "soft-label variants (data/vader/<name>/)"},
  {"beta", 0.1, "beta of the preference losses"},
})
local summary_run = recipe.run(config):start()
local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "recipes"
local out = config.out_dir
local function steps(n) return tostring(math.max(1, math.floor(n * config.scale + 0.5))) end
local wanted = {}
for s in config.stages:gmatch("[^,]+") do wanted[s] = true end

-- Runs a recipe in this process with key=value arguments; returns its result.
local timings = {}
local function stage(name, script, args)
  args.out_dir, args.seed, args.overwrite = out, config.seed, config.overwrite
  local shown = {}
  for k, v in pairs(args) do shown[#shown + 1] = k .. "=" .. tostring(v) end
  table.sort(shown)
  print(string.format("\n== %s: lualign %s/%s %s", name, here, script, table.concat(shown, " ")))
  local t0 = require("lualign").clock()
  local result = recipe.run_script(here .. "/" .. script, args)
  timings[#timings + 1] = {name, require("lualign").clock() - t0}
  return result
end

local results = {}
if wanted.pretrain then
  results.pretrain = stage("pretrain", "pretrain.lua", {name = "pretrain", steps = steps(400), eval_every = steps(100)})
end
if wanted.sft then
  -- the review sentences teach the policy the format PPO's prompts use
  results.sft = stage("sft", "sft.lua", {name = "sft", base = out .. "/pretrain", steps = steps(200),
                                         eval_every = steps(100), extra_train = "sentiment/train.jsonl"})
end
if wanted.reward then
  results.reward = stage("reward", "reward.lua", {name = "reward", base = out .. "/pretrain",
                                                  steps = steps(200), eval_every = steps(100)})
end
if wanted.ppo then
  results.ppo = stage("ppo", "ppo.lua", {name = "ppo", policy = out .. "/sft", reward_model = out .. "/reward",
                                         iterations = steps(40), eval_every = steps(10)})
end
local pref = {}
if wanted.gdpo then
  for ds in config.datasets:gmatch("[^,]+") do
    local reference   -- each label set's reference is fitted to that set's completions
    for loss in config.losses:gmatch("[^,]+") do
      local name = "gdpo_" .. ds .. "_" .. loss
      local args = {name = name, loss = loss, beta = config.beta, train = "vader/" .. ds .. "/train.jsonl",
                    steps = steps(150), eval_every = steps(25), best_by = "win_rate"}
      if reference then
        args.policy = reference
      else
        -- the set's first run fits the reference to its pairs' completions; the others start from it
        args.policy, args.sft_steps = out .. "/sft", steps(400)
      end
      pref[#pref + 1] = {dataset = ds, loss = loss, result = stage(name, "gdpo.lua", args)}
      reference = reference or (out .. "/" .. name .. "/reference.safetensors")
    end
  end
end

-- Summary ---------------------------------------------------------------------------------
local lines = {"# lualign pipeline", ""}
local function add(s) lines[#lines + 1] = s end
local rows = {}
if results.pretrain then
  rows[#rows + 1] = {"pretrain", "held-out loss (nats/token)",
    string.format("%.3f -> %.3f", results.pretrain.first_valid_loss or 0 / 0, results.pretrain.valid_loss)}
end
if results.sft then
  rows[#rows + 1] = {"sft", "held-out completion loss: base -> SFT",
    string.format("%.3f -> %.3f", results.sft.base_loss, results.sft.valid_loss)}
end
if results.reward then
  rows[#rows + 1] = {"reward", "held-out pairwise accuracy (test)", string.format("%.1f%%", 100 * results.reward.accuracy)}
end
if results.ppo then
  local b, a = results.ppo.before, results.ppo.after
  rows[#rows + 1] = {"ppo", "held-out reward-model score: SFT -> PPO", string.format("%.3f -> %.3f", b.reward, a.reward)}
  rows[#rows + 1] = {"ppo", "held-out judge score (lexicon): SFT -> PPO", string.format("%.3f -> %.3f", b.judge, a.judge)}
  rows[#rows + 1] = {"ppo", "KL to the reference per response", string.format("%.3f", a.kl)}
end
add(recipe.md_table({"stage", "measure", "result"}, rows))
if #pref > 0 then
  add("")
  add("Soft labels: win rate against the reference (the SFT model fitted to each label set's completions) " ..
      "under the held-out judge, of completions sampled for held-out prompts, with the KL to the reference, " ..
      "at the best checkpoint (by that win rate) and the last one; and on held-out pairs of held-out words.")
  add("")
  local prow = {}
  for _, p in ipairs(pref) do
    local r = p.result
    prow[#prow + 1] = {p.dataset, p.loss,
      r.best and string.format("%.3f (KL %.2f, step %d)", r.best.win_rate, r.best.kl, r.best.step) or "-",
      string.format("%.3f (KL %.2f)", r.last.win_rate, r.last.kl),
      recipe.fmt("%.3f", r.best and r.best.test_win_rate) .. " / " .. recipe.fmt("%.3f", r.last.test_win_rate)}
  end
  add(recipe.md_table({"labels", "loss", "best win rate", "last win rate", "held-out words: best / last"}, prow))
end
add("")
local trows = {}
for _, t in ipairs(timings) do trows[#trows + 1] = {t[1], string.format("%.0f s", t[2])} end
add(recipe.md_table({"stage", "time"}, trows))
local text = table.concat(lines, "\n") .. "\n"
summary_run:write("summary.md", text)
print("\n" .. text)
print("summary written to " .. summary_run:path("summary.md"))
