--- lualign.experiment -- what experiment scripts (recipes/experiments/) share:
-- a recipe run once per seed, and the mean ± standard deviation over the seeds.

local M = {}

local recipe = require "lualign.recipe"
local log = require "lualign.log"
local la = require "lualign"

--- The mean and the sample standard deviation (divided by n - 1; 0 for one value).
function M.mean_sd(xs)
  local n, s = #xs, 0
  if n == 0 then error("mean_sd: no values", 2) end
  for _, x in ipairs(xs) do s = s + x end
  local m, v = s / n, 0
  for _, x in ipairs(xs) do v = v + (x - m) ^ 2 end
  return m, n > 1 and math.sqrt(v / (n - 1)) or 0
end

--- The SFT run an experiment starts from: the run `given`, or when `given` is
--- empty a new one, recipes/sft.lua (the path `script`) run with `options` (its
--- folder: options.out_dir/options.name).  Returns the run's folder, what sft.lua
--- returned (an empty table for a given run) and the seconds it took.
function M.sft_run(script, given, options)
  if given ~= "" then return given, {}, 0 end
  local t0 = la.clock()
  local result = recipe.run_script(script, options)
  return options.out_dir .. "/" .. options.name, result, la.clock() - t0
end

-- The mean of a logged metric over the first and over the last n rows that have it.
local function ends(path, key, n)
  local xs = {}
  for _, row in ipairs(log.read(path)) do if row[key] then xs[#xs + 1] = row[key] end end
  if #xs < n then error(string.format("%s: %d rows with %s, fewer than %d", path, #xs, key, n), 0) end
  local a, b = 0, 0
  for i = 1, n do a, b = a + xs[i] / n, b + xs[#xs - n + i] / n end
  return a, b
end

--- Runs grpo.lua (the path `script`) once for each seed of `seeds` (comma-separated)
--- with the options `options` (`seed` and `name` = name .. "_seed" .. seed added),
--- and measures each run: the held-out reward of greedy and of sampled completions
--- before and after GRPO, and the rollouts' reward over the first and the last
--- `window` iterations.  Returns the markdown table (one row per seed and a
--- "mean ± sd" row), the line of the mean gains, and the values per seed
--- (with `runs`, each seed's run).
function M.grpo_seeds(script, name, seeds, options, window)
  window = window or 10
  local columns = {greedy_before = {}, greedy_after = {}, sampled_before = {}, sampled_after = {},
                   greedy_gain = {}, sampled_gain = {}, seconds = {}, rollouts_first = {}, rollouts_last = {},
                   runs = {}}
  local rows = {}
  for seed in seeds:gmatch("[^,%s]+") do
    local opts = {}
    for k, v in pairs(options) do opts[k] = v end
    opts.seed, opts.name = seed, name .. "_seed" .. seed
    local t0 = la.clock()
    local r = recipe.run_script(script, opts)
    local b, a = r.before, r.after
    local first, last = ends(r.run:path("metrics.jsonl"), "reward", window)
    local values = {rollouts_first = first, rollouts_last = last, greedy_before = b.greedy, greedy_after = a.greedy,
                    sampled_before = b.sampled, sampled_after = a.sampled, greedy_gain = a.greedy - b.greedy,
                    sampled_gain = a.sampled - b.sampled, seconds = la.clock() - t0}
    for k, v in pairs(values) do table.insert(columns[k], v) end
    table.insert(columns.runs, r.run)
    rows[#rows + 1] = {seed, string.format("%.3f -> %.3f", b.greedy, a.greedy),
                       string.format("%.3f -> %.3f", b.sampled, a.sampled), string.format("%.3f -> %.3f", first, last),
                       string.format("%.0f s", values.seconds)}
  end
  local function ms(k, fmt)
    local m, sd = M.mean_sd(columns[k])
    return string.format(fmt or "%.3f ± %.3f", m, sd)
  end
  rows[#rows + 1] = {"mean ± sd", ms("greedy_before") .. " -> " .. ms("greedy_after"),
                     ms("sampled_before") .. " -> " .. ms("sampled_after"),
                     ms("rollouts_first") .. " -> " .. ms("rollouts_last"), ms("seconds", "%.0f ± %.0f s")}
  local md = recipe.md_table({"seed", "held out, greedy: SFT -> GRPO", "held out, sampled: SFT -> GRPO",
    string.format("training prompts, rollouts: first -> last %d iterations", window), "time"}, rows)
  local gains = string.format("Gain over the SFT model (mean ± sd over seeds %s): greedy %s, sampled %s.",
    seeds, ms("greedy_gain", "%+.3f ± %.3f"), ms("sampled_gain", "%+.3f ± %.3f"))
  return md, gains, columns
end

return M
