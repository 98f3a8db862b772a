-- recipes/experiments/soft_labels.lua -- DPO, cDPO and GDPO over several
-- seeds on the two soft-label sets, compared by win rate against the reference
-- under the held-out judge: at the best checkpoint, at the last one, and at a
-- matched KL to the reference.
--
--   lualign recipes/experiments/soft_labels.lua policy=runs/sft seeds=1,2,3
--
-- Needs an SFT model (the pipeline's runs/sft).  For each seed and label set
-- the first run fits the reference to that set's completions (sft_steps) and
-- the other runs of that seed and set start from it.  "Matched KL" reads each run's win rate
-- where its KL to the reference first reaches KL*, the smallest final KL of
-- all runs on that dataset, interpolating between evaluations.  Writes
-- runs/soft_labels/results.md.  Took 9 minutes for 3 seeds on 2 cores shared with other jobs.

local recipe = require "lualign.recipe"

local config = recipe.config(arg, "soft_labels", {
  {"policy", "runs/sft", "the SFT model the reference is fitted from"},
  {"seeds", "1,2,3", "seeds (comma-separated)"},
  {"losses", "dpo,cdpo,gdpo", "losses to compare"},
  {"datasets", "modest,confident", "soft-label sets (data/vader/<name>/)"},
  {"beta", 0.1, "beta of every loss"},
  {"steps", 150, "steps per run"},
  {"eval_every", 25, "steps between evaluations"},
  {"sft_steps", 400, "steps fitting each seed's reference"},
})
local run = recipe.run(config):start()
local here = debug.getinfo(1, "S").source:match("^@(.*)/experiments/[^/]*$") or "recipes"
local function list(s) local t = {} for x in s:gmatch("[^,]+") do t[#t + 1] = x end return t end
local seeds, losses, datasets = list(config.seeds), list(config.losses), list(config.datasets)

-- Win rate where the KL curve first reaches kl_star (nil when it never does).
local function at_kl(curve, kl_star)
  for i = 2, #curve.kl do
    local k0, k1 = curve.kl[i - 1], curve.kl[i]
    if k1 >= kl_star then
      local t = k1 > k0 and (kl_star - k0) / (k1 - k0) or 1
      return curve.win_rate[i - 1] + t * (curve.win_rate[i] - curve.win_rate[i - 1])
    end
  end
  return nil
end

local function mean_sd(xs)
  local n, s = #xs, 0
  if n == 0 then return 0 / 0, 0 / 0 end
  for _, x in ipairs(xs) do s = s + x end
  local m, v = s / n, 0
  for _, x in ipairs(xs) do v = v + (x - m) ^ 2 end
  return m, n > 1 and math.sqrt(v / (n - 1)) or 0
end

local results = {}   -- results[dataset][loss] = list of run results
for _, seed in ipairs(seeds) do
  for _, ds in ipairs(datasets) do
    local reference
    for _, loss in ipairs(losses) do
      local name = string.format("%s_%s_%s_seed%s", config.name, ds, loss, seed)
      local args = {name = name, out_dir = config.out_dir, overwrite = config.overwrite, seed = seed, loss = loss, beta = config.beta,
                    train = "vader/" .. ds .. "/train.jsonl", steps = config.steps, eval_every = config.eval_every,
                    best_by = "win_rate"}
      if reference then args.policy = reference
      else args.policy, args.sft_steps = config.policy, config.sft_steps end
      print(string.format("== %s", name))
      local r = recipe.run_script(here .. "/gdpo.lua", args)
      reference = reference or (config.out_dir .. "/" .. name .. "/reference.safetensors")
      results[ds] = results[ds] or {}
      results[ds][loss] = results[ds][loss] or {}
      table.insert(results[ds][loss], r)
    end
  end
end

local lines = {"# Soft labels: DPO, cDPO and GDPO over " .. #seeds .. " seeds", "",
  string.format("beta %g, %d steps, win rate against the reference under the held-out judge " ..
    "(mean ± standard deviation over seeds): of completions sampled for held-out prompts (best and last " ..
    "checkpoint, and at a matched KL), and on held-out pairs of held-out words (data/vader/test.jsonl) at the " ..
    "checkpoint with the best sampled win rate and at the last.", config.beta, config.steps), ""}
for _, ds in ipairs(datasets) do
  local kl_star = math.huge
  for _, loss in ipairs(losses) do
    for _, r in ipairs(results[ds][loss]) do kl_star = math.min(kl_star, r.last.kl) end
  end
  local rows = {}
  for _, loss in ipairs(losses) do
    local best, last, matched, kls, test_best, test_last = {}, {}, {}, {}, {}, {}
    for _, r in ipairs(results[ds][loss]) do
      local b = r.best or r.last
      best[#best + 1] = b.win_rate
      last[#last + 1] = r.last.win_rate
      kls[#kls + 1] = r.last.kl
      local m = at_kl(r.curve, kl_star)
      if m then matched[#matched + 1] = m end
      test_best[#test_best + 1] = b.test_win_rate
      test_last[#test_last + 1] = r.last.test_win_rate
    end
    local function cell(xs) local m, sd = mean_sd(xs) return string.format("%.3f ± %.3f", m, sd) end
    rows[#rows + 1] = {loss, cell(best), cell(last), cell(matched), cell(kls), cell(test_best), cell(test_last)}
  end
  lines[#lines + 1] = string.format("**%s labels** (matched KL* = %.2f):", ds, kl_star)
  lines[#lines + 1] = ""
  lines[#lines + 1] = recipe.md_table({"loss", "best win rate", "last win rate", "win rate at KL*", "final KL",
    "held-out words: at the best", "held-out words: last"}, rows)
  lines[#lines + 1] = ""
end
local text = table.concat(lines, "\n")
run:write("results.md", text .. "\n")
print("\n" .. text)
