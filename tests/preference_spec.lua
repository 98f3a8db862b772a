-- Preference losses (engine/core/la_pref.c) and the Bradley-Terry reward-model
-- loss: values computed by hand, the identities of docs/losses.md ("Preference losses"), the
-- metrics and finite-difference gradients.
local la = require "lualign"
local loss = la.loss

local function softplus(x) return math.log(1 + math.exp(x)) end
local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

local h = require "helpers"
local near, fails_with = h.near, h.fails_with

local function check(fn, inputs)
  local ok, report = la.gradcheck(fn, inputs)
  assert(ok, report)
end

-- Two pairs whose log-ratio margins are h = {1, -1}:
--   pair 1: (pc - rc) - (pr - rr) = (-1 + 1.5) - (-2 + 1.5) = 1
--   pair 2: (-3 + 2) - (-2 + 2) = -1
local function pairs_h()
  return la.tensor({-1.0, -3.0}):requires_grad(), la.tensor({-2.0, -2.0}):requires_grad(),
         la.tensor({-1.5, -2.0}), la.tensor({-1.5, -2.0})
end
local beta = 0.5
local p = la.tensor({0.8, 0.3})   -- the second pair is preferred the other way round

describe("preference losses against values computed by hand", function()
  -- h = {1, -1}, beta = 0.5 (so 1 / (2 beta) = 1), p = {0.8, 0.3}
  local cases = {
    {"dpo", nil, (softplus(-0.5) + softplus(0.5)) / 2},
    {"dpo", p, softplus(-0.5)},                                -- pair 2 flipped: beta * (-1) * (-1)
    {"cdpo", p, (0.8 * softplus(-0.5) + 0.2 * softplus(0.5) + 0.3 * softplus(0.5) + 0.7 * softplus(-0.5)) / 2},
    {"rdpo", nil, ((0.9 * softplus(-0.5) - 0.1 * softplus(0.5)) + (0.9 * softplus(0.5) - 0.1 * softplus(-0.5))) / 0.8 / 2},
    {"ipo", nil, (0 + 4) / 2},                                 -- (1 - 1)^2, (-1 - 1)^2
    {"ipo", p, 0},                                             -- flipped: (1 - 1)^2 twice
    {"hinge", nil, (0.5 + 1.5) / 2},                           -- max(0, 1 - 0.5), max(0, 1 + 0.5)
    {"gdpo", p, (softplus(-0.5 * 0.6 * 1) + softplus(-0.5 * -0.4 * -1)) / 2},
    {"gipo", p, ((0.6 - 1) ^ 2 + (0.4 - 1) ^ 2) / 2},          -- (2p - 1) h = 0.6, 0.4
  }
  for _, c in ipairs(cases) do
    it(c[1] .. (c[2] and " with soft labels" or ""), function()
      local pc, pr, rc, rr = pairs_h()
      local l = loss[c[1]](pc, pr, rc, rr, {beta = beta, p = c[2], eps = 0.1})
      near(l:item(), c[3], 1e-6, c[1])
    end)
  end

  it("DPO's gradient is -beta sigmoid(-beta h) / B on the policy's chosen log-prob", function()
    local pc, pr, rc, rr = pairs_h()
    loss.dpo(pc, pr, rc, rr, {beta = beta}):backward()
    near(pc.grad[1], -beta * sigmoid(-0.5) / 2)
    near(pc.grad[2], -beta * sigmoid(0.5) / 2)
    near(pr.grad[1], beta * sigmoid(-0.5) / 2)
  end)

  it("reports TRL's metrics in the label's orientation", function()
    local pc, pr, rc, rr = pairs_h()
    local _, m = loss.dpo(pc, pr, rc, rr, {beta = beta, p = p})
    -- pair 1: chosen reward 0.5 * 0.5, rejected 0.5 * -0.5; pair 2 flipped: chosen 0.5 * 0, rejected 0.5 * -1
    near(m["rewards/chosen"], (0.25 + 0) / 2)
    near(m["rewards/rejected"], (-0.25 - 0.5) / 2)
    near(m["rewards/margins"], (0.5 + 0.5) / 2)
    near(m["rewards/accuracies"], 1)
    near(m["logps/chosen"], (-1 - 2) / 2)
    near(m["logps/rejected"], (-2 - 3) / 2)
    local _, hard = loss.dpo(pc, pr, rc, rr, {beta = beta})
    near(hard["rewards/accuracies"], 0.5)
  end)
end)

describe("preference-loss identities", function()
  before_each(function() la.manual_seed(3) end)

  local function random_batch(B)
    return la.randn(B):requires_grad(), la.randn(B):requires_grad(), la.randn(B), la.randn(B)
  end

  local function grads(name, pc, pr, rc, rr, opts)
    pc.grad, pr.grad = nil, nil
    local l = loss[name](pc, pr, rc, rr, opts)
    l:backward()
    return l:item(), pc.grad:clone(), pr.grad:clone()
  end

  it("GDPO at p = 1 equals DPO, values and gradients", function()
    local pc, pr, rc, rr = random_batch(6)
    local ld, gd1, gd2 = grads("dpo", pc, pr, rc, rr, {beta = 0.3})
    local lg, gg1, gg2 = grads("gdpo", pc, pr, rc, rr, {beta = 0.3, p = la.ones(6)})
    near(lg, ld, 1e-7)
    assert.is_true(gg1:allclose(gd1, 1e-6, 1e-7) and gg2:allclose(gd2, 1e-6, 1e-7))
    -- and GIPO at p = 1 is IPO
    near(loss.gipo(pc, pr, rc, rr, {beta = 0.3, p = 1}):item(), loss.ipo(pc, pr, rc, rr, {beta = 0.3}):item(), 1e-6)
  end)

  it("GDPO at p = 0.5 is log 2 with every gradient zero", function()
    local pc, pr = la.randn(5):requires_grad(), la.randn(5):requires_grad()
    local rc, rr = la.randn(5):requires_grad(), la.randn(5):requires_grad()
    local l = loss.gdpo(pc, pr, rc, rr, {beta = 2, p = la.full({5}, 0.5)})
    near(l:item(), math.log(2), 1e-7)
    l:backward()
    for _, t in ipairs({pc, pr, rc, rr}) do assert.are.equal(0, t.grad:abs():max():item()) end
  end)

  it("swapping (y1, y2, p) -> (y2, y1, 1 - p) leaves every loss unchanged", function()
    local pc, pr, rc, rr = random_batch(8)
    local soft = la.tensor({0.9, 0.1, 0.7, 0.35, 1, 0, 0.6, 0.45})
    for _, name in ipairs(loss.preference_losses) do
      if name == "simpo" then   -- reference-free
        local a = loss.simpo(pc, pr, nil, nil, {beta = 0.4, p = soft, gamma = 0.3}):item()
        near(a, loss.simpo(pr, pc, nil, nil, {beta = 0.4, p = 1 - soft, gamma = 0.3}):item(), 1e-6, name)
      else
        local a = loss[name](pc, pr, rc, rr, {beta = 0.4, p = soft, eps = 0.2}):item()
        local b = loss[name](pr, pc, rr, rc, {beta = 0.4, p = 1 - soft, eps = 0.2}):item()
        near(a, b, 1e-6, name)
      end
    end
  end)

  it("label_smoothing is cDPO's global soft label; rDPO with eps = 0 is DPO", function()
    local pc, pr, rc, rr = random_batch(4)
    near(loss.cdpo(pc, pr, rc, rr, {label_smoothing = 0.2}):item(),
      loss.cdpo(pc, pr, rc, rr, {p = la.full({4}, 0.8)}):item(), 1e-6)
    near(loss.cdpo(pc, pr, rc, rr, {p = 0.8}):item(), loss.cdpo(pc, pr, rc, rr, {p = la.full({4}, 0.8)}):item())
    near(loss.rdpo(pc, pr, rc, rr, {eps = 0}):item(), loss.dpo(pc, pr, rc, rr):item(), 1e-6)
    -- cDPO with hard labels is DPO
    near(loss.cdpo(pc, pr, rc, rr, {p = 1}):item(), loss.dpo(pc, pr, rc, rr):item(), 1e-6)
  end)

  it("without a reference the log-ratios are the log-probs", function()
    local pc, pr = la.tensor({-1.0}), la.tensor({-3.0})
    near(loss.dpo(pc, pr, nil, nil, {beta = 1}):item(), softplus(-2))
  end)

  it("every loss passes a finite-difference check through all four inputs", function()
    local soft = la.tensor({0.9, 0.2, 0.65, 0.5})
    for _, name in ipairs(loss.preference_losses) do
      local inputs = {la.randn(4):requires_grad(), la.randn(4):requires_grad(),
                      la.randn(4):requires_grad(), la.randn(4):requires_grad()}
      if name == "simpo" then   -- reference-free: two inputs
        check(function(a, b) return (loss.simpo(a, b, nil, nil, {beta = 0.7, p = soft, gamma = 0.4})) end,
          {inputs[1], inputs[2]})
      else
        check(function(a, b, c, d) return (loss[name](a, b, c, d, {beta = 0.7, p = soft, eps = 0.15})) end, inputs)
      end
    end
  end)

  it("SimPO: -log sigmoid(beta (a1 - a2) - gamma), its soft form, and no reference", function()
    local a1, a2 = la.tensor({-1.0, -2.0, -0.5}), la.tensor({-1.5, -1.0, -0.5})
    local want = (softplus(-(2 * 0.5 - 1)) + softplus(-(2 * -1.0 - 1)) + softplus(-(0 - 1))) / 3
    local l, m = loss.simpo(a1, a2, nil, nil, {beta = 2, gamma = 1})
    near(l:item(), want, 1e-6, "simpo")
    near(m["rewards/margins"], 2 * (0.5 - 1.0 + 0) / 3, 1e-6, "margins")
    near(m["rewards/accuracies"], 1 / 3, 1e-6, "accuracies")
    -- p = 1 is SimPO; p = 0.3 weighs each side's margin term: -0.3 log s(d - g) - 0.7 log s(-d - g)
    near(loss.simpo(a1, a2, nil, nil, {beta = 2, gamma = 1, p = 1}):item(), want, 1e-6, "p = 1")
    local d = 2 * (-1.0 + 1.5)
    near(loss.simpo(la.tensor({-1.0}), la.tensor({-1.5}), nil, nil, {beta = 2, gamma = 1, p = 0.3}):item(),
      0.3 * softplus(-(d - 1)) + 0.7 * softplus(-(-d - 1)), 1e-6, "p = 0.3")
    -- at p = 0.5 and equal log-probs no side is pushed
    local x, y = la.tensor({-0.7}):requires_grad(), la.tensor({-0.7}):requires_grad()
    loss.simpo(x, y, nil, nil, {p = 0.5}):backward()
    assert.are.equal(0, x.grad:abs():item())
    fails_with("loss.simpo: SimPO is reference-free", function() return loss.simpo(a1, a2, a1, a2) end)
  end)

  it("rejects bad options with messages naming the loss", function()
    local pc, pr, rc, rr = random_batch(3)
    fails_with("dpo: beta must be positive and finite (got 0)", function() return loss.dpo(pc, pr, rc, rr, {beta = 0}) end)
    fails_with("gdpo: soft label p = 1.5 at position 2 is outside [0, 1]",
      function() return loss.gdpo(pc, pr, rc, rr, {p = la.tensor({0.5, 1.5, 0.2})}) end)
    fails_with("ipo: ref_rejected has 2 entries but the batch has 3",
      function() return loss.ipo(pc, pr, rc, la.zeros(2)) end)
    fails_with("rdpo: eps (the label flip rate) must be in [0, 0.5) (got 0.5)",
      function() return loss.rdpo(pc, pr, rc, rr, {eps = 0.5}) end)
    fails_with("cdpo: soft labels p must have shape (3,); got (2,)",
      function() return loss.cdpo(pc, pr, rc, rr, {p = la.ones(2)}) end)
    fails_with("unknown preference loss 'kto'", function() return loss.preference("kto", pc, pr, rc, rr) end)
    fails_with("hinge: policy_chosen must be a float32 vector (B,); got float32 (3, 1)",
      function() return loss.hinge(pc:view(3, 1), pr, rc, rr) end)
  end)
end)

describe("Bradley-Terry reward-model loss", function()
  local r1, r2 = la.tensor({1.0, 0.0}), la.tensor({0.0, 1.0})   -- r1 - r2 = {1, -1}

  it("matches values computed by hand: hard, margin, soft, centring", function()
    near(loss.bradley_terry(r1, r2):item(), (softplus(-1) + softplus(1)) / 2)
    near(loss.bradley_terry(r1, r2, {margin = 0.5}):item(), (softplus(-0.5) + softplus(1.5)) / 2)
    near(loss.bradley_terry(r1, r2, {margin = la.tensor({0.5, -1})}):item(), (softplus(-0.5) + softplus(0)) / 2)
    local soft = la.tensor({0.9, 0.2})
    near(loss.bradley_terry(r1, r2, {p = soft}):item(),
      (0.9 * softplus(-1) + 0.1 * softplus(1) + 0.2 * softplus(1) + 0.8 * softplus(-1)) / 2)
    -- centring adds c * mean((r1 + r2)^2) = 0.01 * 1
    near(loss.bradley_terry(r1, r2, {center = 0.01}):item(), (softplus(-1) + softplus(1)) / 2 + 0.01)
  end)

  it("reports accuracy and margin in the label's orientation", function()
    local _, m = loss.bradley_terry(r1, r2)
    near(m.accuracy, 0.5)
    near(m.margin, 0)
    local _, s = loss.bradley_terry(r1, r2, {p = la.tensor({0.9, 0.2})})
    near(s.accuracy, 1)
    near(s.margin, 1)
    near(s["rewards/chosen"], 1)
    near(s["rewards/rejected"], 0)
  end)

  it("passes finite-difference checks with every option", function()
    la.manual_seed(9)
    local a, b = la.randn(5):requires_grad(), la.randn(5):requires_grad()
    check(function(x, y) return (loss.bradley_terry(x, y)) end, {a, b})
    check(function(x, y)
      return (loss.bradley_terry(x, y, {p = la.tensor({0.9, 0.2, 0.5, 1, 0}), margin = 0.3, center = 0.05}))
    end, {a, b})
  end)

  it("rejects bad input", function()
    fails_with("bradley_terry: rewards_rejected has 3 entries but the batch has 2",
      function() return loss.bradley_terry(r1, la.zeros(3)) end)
    fails_with("bradley_terry: margin must be a number or have shape (2,); got (3,)",
      function() return loss.bradley_terry(r1, r2, {margin = la.zeros(3)}) end)
    fails_with("bradley_terry: the centring coefficient must be finite and >= 0",
      function() return loss.bradley_terry(r1, r2, {center = -1}) end)
  end)
end)
