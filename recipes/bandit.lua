-- recipes/bandit.lua -- the bandit of the GDPO paper (Furuta et al. 2024,
-- "Geometric-Averaged Preference Optimization for Soft Preference Labels",
-- Figure 1 right), trained with lualign's fused loss kernels.
--
--   lua5.4 recipes/bandit.lua                     the regime where the caption holds
--   lua5.4 recipes/bandit.lua beta=0.1            a strong KL tilt: cDPO's optimum wins
--   lua5.4 recipes/bandit.lua reference=uniform   a reference that ignores the data
--   lua5.4 recipes/bandit.lua compare=true        all three regimes, one report
--
-- A policy over `actions` actions is a softmax over learnable logits.  A true
-- reward r(a) peaks at reward_center; preference pairs (a1, a2) are drawn
-- from a training distribution whose mass sits at data_center, away from the
-- peak, with a thin uniform floor; each pair carries the soft label
-- p = sigmoid((r(a1) - r(a2)) / tau) (Bradley-Terry on the true reward), or a
-- vote share when votes > 0.  The reference is fitted to the data (the SFT
-- optimum: the empirical action frequencies, add-1/2 smoothed) or uniform.
-- DPO (on the majority label), cDPO (soft-label cross-entropy) and GDPO start
-- from the reference and train with Adam on minibatches of pairs.
--
-- Theory, for reading the results: with exact labels, cDPO's optimum is
-- pi_ref(a) exp(r(a) / (beta tau)) (normalised) — the KL-regularised optimum
-- for the reward r / tau — while DPO and GDPO have no finite optimum: they
-- keep moving mass towards actions that win their comparisons, so where they
-- end up depends on how long they train.
--
-- Writes runs/<name>/ (runs/bandit/ by default): config.json, metrics.jsonl (one line
-- per evaluation: regime, method, step, expected reward, mode, KL), bandit.svg
-- (action distributions and reward-versus-KL curves) and report.md.

-- Run from a checkout without installing: find lua/ and build/ next to recipes/.
do
  local dir = (arg and arg[0] or ""):match("^(.*)/recipes/[^/]*$") or "."
  package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
  package.cpath = dir .. "/build/?.so;" .. package.cpath
end

local la = require "lualign"
local plot = require "lualign.plot"

----------------------------------------------------------------------------
-- Configuration: defaults, overridden by key=value arguments (--help lists them)

local recipe = require "lualign.recipe"
local config = recipe.config(arg, "bandit", {
  {"actions", 100, "number of actions"},
  {"reward_center", 0.75, "the true reward is exp(-(x - c)^2 / (2 w^2)), x = a / (actions - 1)"},
  {"reward_width", 0.2, "w of the reward's bump"},
  {"data_center", 0.3, "training distribution: (1 - floor) N(c, w^2) + floor uniform, over x"},
  {"data_width", 0.1, "w of the training distribution"},
  {"data_floor", 0.1, "the training distribution's uniform share"},
  {"pairs", 2000, "preference pairs in the dataset"},
  {"tau", 0.5, "temperature of the Bradley-Terry labels"},
  {"votes", 0, "0: exact soft labels; n: the share of n sampled votes"},
  {"reference", "sft", "'sft' (fitted to the data) or 'uniform'"},
  {"ref_smoothing", 0.5, "add-alpha smoothing of the SFT fit"},
  {"beta", 1.0, "beta of every loss"},
  {"methods", "dpo,cdpo,gdpo", "losses to train (comma-separated)"},
  {"steps", 3000, "Adam steps per method"},
  {"batch", 128, "pairs per step"},
  {"lr", 0.05, "Adam learning rate on the policy's logits"},
  {"eval_every", 25, "steps between evaluations (reward, mode, KL)"},
  {"compare", false, "true: run the three regimes of docs/bandit.md and compare them"},
  {"quiet", false, "true: no progress lines"},
})

----------------------------------------------------------------------------
-- The problem: reward, data distribution, dataset, reference

--- The true reward (a Lua list over actions, 1-based).
local function true_reward(cfg)
  local r = {}
  for a = 1, cfg.actions do
    local x = (a - 1) / (cfg.actions - 1)
    r[a] = math.exp(-(x - cfg.reward_center) ^ 2 / (2 * cfg.reward_width ^ 2))
  end
  return r
end

--- The training distribution over actions (sums to 1).
local function data_distribution(cfg)
  local mu, total = {}, 0
  for a = 1, cfg.actions do
    local x = (a - 1) / (cfg.actions - 1)
    mu[a] = math.exp(-(x - cfg.data_center) ^ 2 / (2 * cfg.data_width ^ 2))
    total = total + mu[a]
  end
  for a = 1, cfg.actions do
    mu[a] = (1 - cfg.data_floor) * mu[a] / total + cfg.data_floor / cfg.actions
  end
  return mu
end

-- One draw from a discrete distribution with the seeded generator.
local function draw(cdf, u)
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = (lo + hi) // 2
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

--- The preference dataset: a1, a2 (0-based action ids) and soft labels p,
-- all Lua lists; plus the action counts.  Actions are drawn before any votes,
-- so the same seed gives the same pairs whatever `votes` is.
local function make_dataset(cfg, r, mu)
  local cdf, acc = {}, 0
  for a = 1, cfg.actions do acc = acc + mu[a]; cdf[a] = acc end
  cdf[cfg.actions] = 1
  local u = la.rand(cfg.pairs, 2):totable()
  local uv = cfg.votes > 0 and la.rand(cfg.pairs, cfg.votes):totable() or nil
  local a1, a2, p, counts = {}, {}, {}, {}
  for a = 1, cfg.actions do counts[a] = 0 end
  for i = 1, cfg.pairs do
    local x, y = draw(cdf, u[i][1]), draw(cdf, u[i][2])
    a1[i], a2[i] = x - 1, y - 1
    counts[x], counts[y] = counts[x] + 1, counts[y] + 1
    local exact = sigmoid((r[x] - r[y]) / cfg.tau)
    if uv then   -- the share of `votes` raters who prefer a1
      local k = 0
      for v = 1, cfg.votes do if uv[i][v] < exact then k = k + 1 end end
      p[i] = k / cfg.votes
    else
      p[i] = exact
    end
  end
  return {a1 = a1, a2 = a2, p = p, counts = counts}
end

--- Reference log-probs (a Lua list): the SFT fit (maximum likelihood on the
-- dataset's actions, add-alpha smoothed) or uniform.
local function reference_logprobs(cfg, data)
  local lp, total = {}, 0
  for a = 1, cfg.actions do
    local w = cfg.reference == "uniform" and 1 or data.counts[a] + cfg.ref_smoothing
    lp[a], total = w, total + w
  end
  for a = 1, cfg.actions do lp[a] = math.log(lp[a] / total) end
  return lp
end

----------------------------------------------------------------------------
-- Evaluation of a policy given as probabilities (a Lua list)

local function evaluate(probs, ref_lp, r)
  local er, kl, mode = 0, 0, 1
  for a = 1, #probs do
    er = er + probs[a] * r[a]
    if probs[a] > 0 then kl = kl + probs[a] * (math.log(probs[a]) - ref_lp[a]) end
    if probs[a] > probs[mode] then mode = a end
  end
  return {reward = er, kl = kl, mode = mode - 1, mode_reward = r[mode]}
end

-- The closed-form optimum of cDPO with exact labels: pi_ref exp(r / (beta tau)).
local function cdpo_optimum(cfg, ref_lp, r)
  local w, total = {}, 0
  for a = 1, #r do w[a] = math.exp(ref_lp[a] + r[a] / (cfg.beta * cfg.tau)); total = total + w[a] end
  for a = 1, #r do w[a] = w[a] / total end
  return w
end

----------------------------------------------------------------------------
-- Training one method

local function train(cfg, method, data, ref_lp, r, log)
  local V, B = cfg.actions, cfg.batch
  local theta = la.tensor(ref_lp, "float32"):requires_grad()   -- start at the reference
  local opt = la.optim.AdamW({theta}, {lr = cfg.lr, weight_decay = 0})
  local ref = la.tensor(ref_lp, "float32")
  local a1, a2, p = la.tensor(data.a1), la.tensor(data.a2), la.tensor(data.p, "float32")
  local curve = {}
  local function record(step)
    -- the policy's probabilities, normalised in double precision
    local t, mx, total, probs = theta:totable(), -math.huge, 0, {}
    for a = 1, V do mx = math.max(mx, t[a]) end
    for a = 1, V do probs[a] = math.exp(t[a] - mx); total = total + probs[a] end
    for a = 1, V do probs[a] = probs[a] / total end
    local e = evaluate(probs, ref_lp, r)
    e.step = step
    curve[#curve + 1] = e
    log(method, e)
    return probs
  end
  record(0)
  local probs
  for step = 1, cfg.steps do
    local idx = la.randint(0, cfg.pairs, B)
    local y1, y2 = a1:index_select(1, idx):view(B, 1), a2:index_select(1, idx):view(B, 1)
    local logits = theta:view(1, 1, V):expand(B, 1, V)
    -- per-sequence log-probs of one-token "responses", with the fused kernel
    local pc = la.loss.sequence_logprobs(logits, y1)
    local pr = la.loss.sequence_logprobs(logits, y2)
    local rc = ref:index_select(1, y1:view(B))
    local rr = ref:index_select(1, y2:view(B))
    local l = la.loss[method](pc, pr, rc, rr, {beta = cfg.beta, p = p:index_select(1, idx)})
    opt:zero_grad()
    l:backward()
    opt:step()
    if step % cfg.eval_every == 0 or step == cfg.steps then probs = record(step) end
  end
  return {curve = curve, final = curve[#curve], probs = probs or record(cfg.steps)}
end

----------------------------------------------------------------------------
-- One regime: dataset, reference, the three methods

local function run_regime(cfg, name, log)
  la.manual_seed(cfg.seed)
  local r = true_reward(cfg)
  local mu = data_distribution(cfg)
  local data = make_dataset(cfg, r, mu)
  local ref_lp = reference_logprobs(cfg, data)
  local ref_probs = {}
  for a = 1, cfg.actions do ref_probs[a] = math.exp(ref_lp[a]) end
  local result = {name = name, cfg = cfg, reward = r, mu = mu, ref = evaluate(ref_probs, ref_lp, r),
                  ref_probs = ref_probs, methods = {}, order = {}}
  result.optimum_probs = cdpo_optimum(cfg, ref_lp, r)
  result.optimum = evaluate(result.optimum_probs, ref_lp, r)
  local best = 1
  for a = 1, cfg.actions do if r[a] > r[best] then best = a end end
  result.best_action = best - 1
  for method in cfg.methods:gmatch("[^,]+") do
    la.manual_seed(cfg.seed + 1000)   -- the same minibatches for every method
    result.methods[method] = train(cfg, method, data, ref_lp, r, function(m, e) log(name, m, e) end)
    result.order[#result.order + 1] = method
  end
  return result
end

----------------------------------------------------------------------------
-- Reporting: a table, an SVG and a Markdown report

-- Probability mass on actions whose true reward is at least 0.5.
local function high_mass(probs, r)
  local m = 0
  for a = 1, #probs do if r[a] >= 0.5 then m = m + probs[a] end end
  return m
end

-- Rows of the results table for one regime.
local function table_rows(res)
  local rows = {}
  local function row(name, e, probs)
    rows[#rows + 1] = {name, string.format("%.3f", e.reward), tostring(e.mode),
                       string.format("%.3f", e.mode_reward), string.format("%.3f", high_mass(probs, res.reward)),
                       string.format("%.3f", e.kl)}
  end
  row("reference", res.ref, res.ref_probs)
  for _, m in ipairs(res.order) do row(m, res.methods[m].final, res.methods[m].probs) end
  row("cDPO optimum (closed form)", res.optimum, res.optimum_probs)
  return rows
end

local HEADER = {"policy", "E[r]", "mode", "r(mode)", "mass r>=0.5", "KL(pi||ref)"}

local function text_table(rows)
  local widths = {}
  for i, h in ipairs(HEADER) do widths[i] = #h end
  for _, r in ipairs(rows) do for i, c in ipairs(r) do widths[i] = math.max(widths[i], #c) end end
  local out = {}
  local function line(cells)
    local parts = {}
    for i, c in ipairs(cells) do parts[i] = (i == 1 and "%-" or "%") .. widths[i] .. "s" end
    out[#out + 1] = string.format(table.concat(parts, "  "), table.unpack(cells))
  end
  line(HEADER)
  for _, r in ipairs(rows) do line(r) end
  return table.concat(out, "\n")
end

--- Whether the caption's ordering holds: DPO and GDPO reach a higher expected
-- reward than cDPO, and cDPO's mode has a lower reward than theirs.
local function caption_holds(res)
  local m = res.methods
  if not (m.dpo and m.cdpo and m.gdpo) then return nil end
  local c = m.cdpo.final
  return m.dpo.final.reward > c.reward and m.gdpo.final.reward > c.reward and
         m.dpo.final.mode_reward > c.mode_reward and m.gdpo.final.mode_reward > c.mode_reward
end

local COLORS = {dpo = plot.colors[1], cdpo = plot.colors[2], gdpo = plot.colors[3],
                rdpo = plot.colors[4], ipo = plot.colors[5], hinge = plot.colors[6], gipo = plot.colors[7]}

-- Three panels for one regime: data and reward, final policies, reward versus KL.
local function regime_plots(res)
  local actions = {}
  for a = 1, res.cfg.actions do actions[a] = a - 1 end
  local mu_max = 0
  for _, v in ipairs(res.mu) do mu_max = math.max(mu_max, v) end
  local mu_scaled = {}
  for a, v in ipairs(res.mu) do mu_scaled[a] = v / mu_max end
  local data = plot.new{title = res.name .. ": data and true reward", xlabel = "action", ylabel = "reward / scaled mass",
                        width = 420, height = 300, ymin = 0, ymax = 1.05, legend = "bottom-right"}
  data:line(actions, mu_scaled, {label = "training distribution (scaled)", color = "#999999", fill = 0.3, width = 1})
  data:line(actions, res.reward, {label = "true reward", color = "#000000"})
  local pol = plot.new{title = res.name .. ": policies after training", xlabel = "action",
                       ylabel = "probability (log scale)", width = 420, height = 300, logy = true,
                       ymin = 1e-6, ymax = 1, legend = "bottom-left"}
  pol:line(actions, res.ref_probs, {label = "reference", color = "#999999", dash = true})
  pol:line(actions, res.optimum_probs, {label = "cDPO optimum", color = COLORS.cdpo, dash = "2,3", width = 1.5})
  for _, m in ipairs(res.order) do pol:line(actions, res.methods[m].probs, {label = m, color = COLORS[m]}) end
  local curve = plot.new{title = res.name .. ": reward vs KL over training", xlabel = "KL(pi || pi_ref)",
                         ylabel = "expected true reward", width = 420, height = 300, legend = "bottom-right"}
  for _, m in ipairs(res.order) do
    local xs, ys = {}, {}
    for i, e in ipairs(res.methods[m].curve) do xs[i], ys[i] = e.kl, e.reward end
    curve:line(xs, ys, {label = m, color = COLORS[m]})
  end
  curve:line({res.optimum.kl}, {res.optimum.reward}, {label = "cDPO optimum", color = COLORS.cdpo, markers = 4, width = 0})
  return {data, pol, curve}
end

local function describe_regime(res)
  local c = res.cfg
  return string.format("beta = %g, tau = %g, reference = %s, %s labels, %d pairs, %d steps of %d pairs, Adam lr %g, seed %d",
    c.beta, c.tau, c.reference, c.votes > 0 and (c.votes .. "-vote") or "exact soft", c.pairs, c.steps, c.batch, c.lr, c.seed)
end

local function report(cfg, results)
  local out = {"# Bandit: DPO, cDPO and GDPO with soft preference labels", "",
    "The 1-D bandit of Furuta et al. (2024), Figure 1 (right), produced by `recipes/bandit.lua`.",
    "E[r] is the policy's expected true reward, mode its most likely action (0-based) and r(mode) that",
    "action's reward; 'mass r>=0.5' is the probability of actions whose reward is at least 0.5; KL is",
    "KL(pi || pi_ref).  The best action is " .. results[1].best_action .. " (reward 1).", "",
    "Caption under test: *cDPO fits the data distribution and puts its mode in a low-reward region,",
    "while DPO and GDPO put mass on high-reward actions.*", "", "![bandit](bandit.svg)", ""}
  for _, res in ipairs(results) do
    out[#out + 1] = "## " .. res.name
    out[#out + 1] = ""
    out[#out + 1] = describe_regime(res) .. "."
    out[#out + 1] = ""
    out[#out + 1] = recipe.md_table(HEADER, table_rows(res))
    out[#out + 1] = ""
    local holds = caption_holds(res)
    if holds ~= nil then
      out[#out + 1] = "Caption's ordering (E[r] and r(mode) of DPO and GDPO above cDPO's): **" ..
        (holds and "holds" or "does not hold") .. "**."
      out[#out + 1] = ""
    end
  end
  return table.concat(out, "\n") .. "\n"
end

----------------------------------------------------------------------------
-- Main

-- The regimes of compare=true: the caption's, and two where it fails.
local REGIMES = {
  {name = "caption regime", overrides = {}},
  {name = "small beta", overrides = {beta = 0.1}},
  {name = "uniform reference", overrides = {reference = "uniform"}},
}

local function main(cfg)
  local cjson = require "cjson"
  local run = recipe.run(cfg)   -- refuses a folder holding another run; writes nothing yet
  recipe.check_choice(cfg, "reference", {"sft", "uniform"})
  for m in cfg.methods:gmatch("[^,]+") do recipe.check_choice({method = m}, "method", la.loss.preference_losses) end
  run:start()
  local metrics = {}
  local function log(regime, method, e)
    metrics[#metrics + 1] = cjson.encode({regime = regime, method = method, step = e.step, reward = e.reward,
                                          kl = e.kl, mode = e.mode, mode_reward = e.mode_reward})
  end
  local regimes = cfg.compare and REGIMES or {{name = cfg.reference == "sft" and cfg.beta == 1 and
    "caption regime" or string.format("beta %g, %s reference", cfg.beta, cfg.reference), overrides = {}}}
  local results, plots = {}, {}
  local t0 = la.clock()
  for _, reg in ipairs(regimes) do
    local rc = {}
    for k, v in pairs(cfg) do rc[k] = v end
    for k, v in pairs(reg.overrides) do rc[k] = v end
    local res = run_regime(rc, reg.name, log)
    results[#results + 1] = res
    for _, p in ipairs(regime_plots(res)) do plots[#plots + 1] = p end
    if not cfg.quiet then
      print(string.format("\n%s (%s)\n%s", res.name, describe_regime(res), text_table(table_rows(res))))
      local holds = caption_holds(res)
      if holds ~= nil then print("caption's ordering: " .. (holds and "holds" or "does not hold")) end
    end
  end
  run:write("metrics.jsonl", table.concat(metrics, "\n") .. "\n")
  plot.save_grid(run:path("bandit.svg"), plots, {cols = 3})
  run:write("report.md", report(cfg, results))
  local summary = {}
  for _, res in ipairs(results) do
    local s = {caption_holds = caption_holds(res), reference = res.ref, optimum = res.optimum, methods = {}}
    for m, v in pairs(res.methods) do
      s.methods[m] = {reward = v.final.reward, kl = v.final.kl, mode = v.final.mode, mode_reward = v.final.mode_reward,
                      high_mass = high_mass(v.probs, res.reward)}
    end
    summary[res.name] = s
  end
  run:write_json("summary.json", summary)
  if not cfg.quiet then
    print(string.format("\nwrote %s/{report.md, bandit.svg, metrics.jsonl, summary.json} in %.1f s", run.dir,
      la.clock() - t0))
  end
  return results
end

return main(config)
