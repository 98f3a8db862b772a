-- PPO losses and helpers (engine/core/la_ppo.c, lualign.loss): each against a
-- direct loop written here in plain Lua over random data with right padding.
local la = require "lualign"
local loss = la.loss

local h = require "helpers"
local near, fails_with = h.near, h.fails_with

local function near_all(t, expected, tol, what)
  local got = t:totable()
  for i = 1, #expected do
    if type(expected[i]) == "table" then
      for j = 1, #expected[i] do near(got[i][j], expected[i][j], tol, (what or "") .. " [" .. i .. "][" .. j .. "]") end
    else
      near(got[i], expected[i], tol, (what or "") .. " [" .. i .. "]")
    end
  end
end

-- Right-padded responses: row b has len[b] real tokens.
local B, T = 4, 7
local lens = {7, 3, 5, 1}
local function padding_mask()
  local m = {}
  for b = 1, B do
    m[b] = {}
    for t = 1, T do m[b][t] = t <= lens[b] and 1 or 0 end
  end
  return la.tensor(m, "float32"), m
end

describe("PPO clipped policy loss", function()
  before_each(function() la.manual_seed(17) end)

  it("equals a direct loop: loss, gradient, clip fraction, approximate KL", function()
    local old = la.randn(B, T) * 0.5 - 2
    local logp = (old + la.randn(B, T) * 0.3):requires_grad()
    local adv = la.randn(B, T)
    local mask, m = padding_mask()
    local eps = 0.2
    local l, metrics = loss.ppo_policy(logp, old, adv, mask, {clip_eps = eps})
    l:backward()
    local lp, o, A, g = logp:totable(), old:totable(), adv:totable(), logp.grad:totable()
    local total, count, clipped, kl = 0, 0, 0, 0
    local grad = {}
    for b = 1, B do
      grad[b] = {}
      for t = 1, T do grad[b][t] = 0 end
    end
    for b = 1, B do
      for t = 1, T do count = count + m[b][t] end
    end
    for b = 1, B do
      for t = 1, T do
        if m[b][t] == 1 then
          local r = math.exp(lp[b][t] - o[b][t])
          local rc = math.min(math.max(r, 1 - eps), 1 + eps)
          local l1, l2 = -A[b][t] * r, -A[b][t] * rc
          total = total + math.max(l1, l2)
          if l2 > l1 then clipped = clipped + 1 else grad[b][t] = -A[b][t] * r / count end
          kl = kl + 0.5 * (lp[b][t] - o[b][t]) ^ 2
        end
      end
    end
    near(l:item(), total / count, 1e-5, "loss")
    near(metrics["policy/clipfrac_avg"], clipped / count, 1e-9, "clipfrac")
    near(metrics["policy/approxkl_avg"], kl / count, 1e-5, "approxkl")
    assert.is_true(clipped > 0 and clipped < count, "the data should clip some tokens and not others")
    for b = 1, B do
      for t = 1, T do near(g[b][t], grad[b][t], 1e-5, "gradient") end
    end
  end)

  it("is -mean(A) at ratio 1, and an asymmetric range clips only above 1 + eps_high", function()
    local old = la.randn(2, 3)
    local adv = la.tensor({{1, -2, 0.5}, {3, 1, -1}}, "float32")
    near(loss.ppo_policy(old:clone(), old, adv):item(), -adv:mean():item(), 1e-6)
    -- ratio e^0.25 = 1.284: clipped at 1 + 0.2 for a positive advantage, not at 1 + 0.3
    local one = la.tensor({0.25})
    local _, m1 = loss.ppo_policy(one, la.zeros(1), la.ones(1), nil, {clip_eps = 0.2})
    local _, m2 = loss.ppo_policy(one, la.zeros(1), la.ones(1), nil, {clip_eps_low = 0.2, clip_eps_high = 0.3})
    near(m1["policy/clipfrac_avg"], 1)
    near(m2["policy/clipfrac_avg"], 0)
  end)

  it("passes a finite-difference check where nothing sits on a clip boundary", function()
    local old = la.randn(2, 4) * 0.1
    local adv = la.randn(2, 4)
    local ok, report = la.gradcheck(function(x) return (loss.ppo_policy(x, old, adv, nil, {clip_eps_low = 0.9, clip_eps_high = 10})) end,
      {(old + 0.05):requires_grad()})
    assert(ok, report)
  end)
end)

describe("PPO clipped value loss", function()
  before_each(function() la.manual_seed(19) end)

  it("equals a direct loop: loss, gradient, clip fraction", function()
    local old = la.randn(B, T)
    local v = (old + la.randn(B, T) * 0.4):requires_grad()
    local R = la.randn(B, T)
    local mask, m = padding_mask()
    local eps = 0.2
    local l, metrics = loss.ppo_value(v, old, R, mask, {clip_eps = eps})
    l:backward()
    local vt, ot, rt, g = v:totable(), old:totable(), R:totable(), v.grad:totable()
    local total, count, clipped = 0, 0, 0
    for b = 1, B do
      for t = 1, T do count = count + m[b][t] end
    end
    for b = 1, B do
      for t = 1, T do
        local expected_grad = 0
        if m[b][t] == 1 then
          local vc = math.min(math.max(vt[b][t], ot[b][t] - eps), ot[b][t] + eps)
          local e1, e2 = (vt[b][t] - rt[b][t]) ^ 2, (vc - rt[b][t]) ^ 2
          total = total + 0.5 * math.max(e1, e2)
          if e2 > e1 then clipped = clipped + 1 else expected_grad = (vt[b][t] - rt[b][t]) / count end
        end
        near(g[b][t], expected_grad, 1e-5, "gradient")
      end
    end
    near(l:item(), total / count, 1e-5, "loss")
    near(metrics["val/clipfrac_avg"], clipped / count, 1e-9, "clipfrac")
    assert.is_true(clipped > 0 and clipped < count)
  end)
end)

describe("GAE, KL estimators, scores and masked statistics", function()
  before_each(function() la.manual_seed(23) end)

  it("GAE equals TRL's loop over the full length with padding zeroed", function()
    local mask, m = padding_mask()
    local rewards = la.randn(B, T) * mask
    local values = la.randn(B, T)
    local gamma, lam = 0.9, 0.8
    local adv, ret = loss.gae(rewards, values, mask, {gamma = gamma, lam = lam})
    local r, v = rewards:totable(), values:totable()
    local ea, er = {}, {}
    for b = 1, B do
      ea[b], er[b] = {}, {}
      local last = 0
      for t = T, 1, -1 do
        local vt = v[b][t] * m[b][t]
        local nextv = t < T and v[b][t + 1] * m[b][t + 1] or 0
        local delta = r[b][t] + gamma * nextv - vt
        last = delta + gamma * lam * last
        ea[b][t] = last * m[b][t]
        er[b][t] = (last + vt) * m[b][t]
      end
    end
    near_all(adv, ea, 1e-5, "advantages")
    near_all(ret, er, 1e-5, "returns")
    assert.is_false(adv:needs_grad())
    -- gamma = lambda = 1 with zero values: the advantage is the reward-to-go
    local a1 = loss.gae(la.tensor({{1, 2, 3}}, "float32"), la.zeros(1, 3), nil, {gamma = 1, lam = 1})
    near_all(a1, {{6, 5, 3}})
  end)

  it("KL estimators k1, k2, k3 equal their definitions; k3 is never negative", function()
    local lp, ref = la.randn(3, 5), la.randn(3, 5)
    local a, b = lp:totable(), ref:totable()
    local k1, k2, k3 = loss.kl(lp, ref, "k1"), loss.kl(lp, ref, "k2"), loss.kl(lp, ref, {estimator = "k3"})
    local e1, e2, e3 = {}, {}, {}
    for i = 1, 3 do
      e1[i], e2[i], e3[i] = {}, {}, {}
      for j = 1, 5 do
        local d = a[i][j] - b[i][j]
        local r = math.exp(b[i][j] - a[i][j])   -- pi_ref / pi
        e1[i][j], e2[i][j], e3[i][j] = d, d * d / 2, (r - 1) - math.log(r)
      end
    end
    near_all(k1, e1, 1e-5, "k1")
    near_all(k2, e2, 1e-5, "k2")
    near_all(k3, e3, 1e-4, "k3")
    assert.is_true(k3:min():item() >= 0)
    fails_with("estimator must be 'k1', 'k2' or 'k3'", function() return loss.kl(lp, ref, "k4") end)
  end)

  it("add_score and ppo_rewards put the score on the last real token", function()
    local mask, m = padding_mask()
    local scores = la.tensor({1, 2, 3, 4}, "float32")
    local lp, ref = la.randn(B, T), la.randn(B, T)
    local out = loss.add_score(la.zeros(B, T), scores, mask):totable()
    for b = 1, B do
      for t = 1, T do near(out[b][t], t == lens[b] and b or 0) end
    end
    local has_eos = la.tensor({true, false, true, true})
    local rewards, metrics = loss.ppo_rewards(scores, lp, ref, mask,
      {kl_coef = 0.1, has_eos = has_eos, missing_eos_penalty = 1.5})
    local a, c, rw = lp:totable(), ref:totable(), rewards:totable()
    local kl_sum, ns_sum, sc_sum = 0, 0, 0
    for b = 1, B do
      local score = b - (b == 2 and 1.5 or 0)
      sc_sum = sc_sum + score
      for t = 1, T do
        local kl = (a[b][t] - c[b][t]) * m[b][t]
        kl_sum, ns_sum = kl_sum + kl, ns_sum - 0.1 * kl
        near(rw[b][t], -0.1 * kl + (t == lens[b] and score or 0), 1e-5, "reward")
      end
    end
    near(metrics["objective/kl"], kl_sum / B, 1e-5)
    near(metrics["objective/non_score_reward"], ns_sum / B, 1e-5)
    near(metrics["objective/scores"], sc_sum / B, 1e-6)
    near(metrics["objective/rlhf_reward"], (sc_sum + ns_sum) / B, 1e-5)
  end)

  it("masked mean, variance (unbiased) and whitening equal direct loops", function()
    local mask, m = padding_mask()
    local x = la.randn(B, T) * 3 + 1
    local v = x:totable()
    local s, n = 0, 0
    for b = 1, B do
      for t = 1, T do s, n = s + v[b][t] * m[b][t], n + m[b][t] end
    end
    local mean = s / n
    local ss = 0
    for b = 1, B do
      for t = 1, T do ss = ss + m[b][t] * (v[b][t] - mean) ^ 2 end
    end
    local var = ss / n * n / (n - 1)
    near(loss.masked_mean(x, mask):item(), mean, 1e-5, "mean")
    near(loss.masked_var(x, mask):item(), var, 1e-5, "var")
    near(loss.masked_var(x, mask, false):item(), ss / n, 1e-5, "biased var")
    local w = loss.masked_whiten(x, mask):totable()
    for b = 1, B do
      for t = 1, T do
        near(w[b][t], m[b][t] == 1 and (v[b][t] - mean) / math.sqrt(var + 1e-8) or 0, 1e-4, "whitened")
      end
    end
    local rows = loss.masked_mean(x, mask, 2):totable()
    for b = 1, B do
      local rs = 0
      for t = 1, lens[b] do rs = rs + v[b][t] end
      near(rows[b], rs / lens[b], 1e-5, "row mean")
    end
    fails_with("masked_var: the mask sums to 1", function() return loss.masked_var(x, la.tensor({{1, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0}}, "float32")) end)
  end)

  it("reject mismatched shapes naming both", function()
    fails_with("ppo_policy_loss: advantages has shape (2, 3) but logprobs has shape (2, 4)",
      function() return loss.ppo_policy(la.zeros(2, 4), la.zeros(2, 4), la.zeros(2, 3)) end)
    fails_with("ppo_value_loss: mask has shape (2,) but values has shape (2, 4)",
      function() return loss.ppo_value(la.zeros(2, 4), la.zeros(2, 4), la.zeros(2, 4), la.ones(2)) end)
    fails_with("gae: gamma and lambda must be finite and >= 0",
      function() return loss.gae(la.zeros(2, 4), la.zeros(2, 4), nil, {gamma = -1}) end)
  end)
end)
