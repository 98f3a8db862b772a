local la = require "lualign"
local optim = la.optim

local h = require "helpers"
local near = h.near

describe("AdamW", function()
  it("matches the update written out by hand, with bias correction and decoupled decay", function()
    local w = la.tensor({{0.5, -1.0}}, "float32"):requires_grad()
    local b = la.tensor({0.25}, "float32"):requires_grad()
    local opt = optim.AdamW({w, b}, {lr = 0.1, betas = {0.9, 0.99}, eps = 1e-8, weight_decay = 0.5})
    local grads = {{{0.2, -0.4}}, {{-0.1, 0.3}}}
    local ref_w, ref_b = {0.5, -1.0}, {0.25}
    local m, v = {0, 0, 0}, {0, 0, 0}
    for step = 1, 2 do
      w.grad = la.tensor(grads[step], "float32")
      b.grad = la.tensor({grads[step][1][1]}, "float32")
      opt:step()
      local params = {ref_w[1], ref_w[2], ref_b[1]}
      local g = {grads[step][1][1], grads[step][1][2], grads[step][1][1]}
      for i = 1, 3 do
        m[i] = 0.9 * m[i] + 0.1 * g[i]
        v[i] = 0.99 * v[i] + 0.01 * g[i] ^ 2
        local mhat, vhat = m[i] / (1 - 0.9 ^ step), v[i] / (1 - 0.99 ^ step)
        local decay = i < 3 and 0.5 or 0      -- 1-d tensors are not decayed by default
        params[i] = params[i] * (1 - 0.1 * decay) - 0.1 * mhat / (math.sqrt(vhat) + 1e-8)
      end
      ref_w, ref_b = {params[1], params[2]}, {params[3]}
    end
    assert.is_true(near(w:get({1, 1}), ref_w[1], 1e-5), w:get({1, 1}) .. " vs " .. ref_w[1])
    assert.is_true(near(w:get({1, 2}), ref_w[2], 1e-5))
    assert.is_true(near(b[1], ref_b[1], 1e-5))
  end)

  it("computes 1 - beta in double: the second moment is (1 - beta2) g^2 to float precision", function()
    -- with 1 - beta2 taken after rounding beta2 = 0.999 to float, every v would be off by 1.3e-5 relative
    local w = la.tensor({1.0, 1.0, 1.0}, "float32"):requires_grad()
    local opt = optim.AdamW({w}, {lr = 1e-3, betas = {0.9, 0.999}, weight_decay = 0})
    local g = {0.37, -1.25, 3.0}
    w.grad = la.tensor(g, "float32")
    opt:step()
    for i = 1, 3 do
      local gi = la.tensor({g[i]}, "float32")[1]        -- the gradient as float32 holds it
      local v, want = opt.v[1][i], (1 - 0.999) * gi * gi
      assert.is_true(math.abs(v - want) <= 2e-7 * want, string.format("v %.9g vs %.9g", v, want))
      local m, want_m = opt.m[1][i], (1 - 0.9) * gi
      assert.is_true(math.abs(m - want_m) <= 2e-7 * math.abs(want_m), string.format("m %.9g vs %.9g", m, want_m))
    end
  end)

  it("decays only matrices by default, everything with a filter, and accepts modules and groups", function()
    local model = la.nn.Linear(3, 2)
    local opt = optim.AdamW(model, {weight_decay = 0.1})
    assert.are.same({0.1, 0}, opt.decay)
    local all = optim.AdamW(model, {weight_decay = 0.1, decay_filter = function() return true end})
    assert.are.same({0.1, 0.1}, all.decay)
    local groups = optim.AdamW({{params = {model.weight}, weight_decay = 0.3}, {params = {model.bias}}})
    assert.are.same({0.3, 0.01 * 0}, {groups.decay[1], groups.decay[2]})
  end)

  it("trains a linear regression to its solution", function()
    la.manual_seed(5)
    local x = la.randn(64, 3)
    local true_w = la.tensor({{1.5, -2.0, 0.5}}, "float32")
    local y = x:matmul(true_w:t()) + 0.3
    local model = la.nn.Linear(3, 1)
    local opt = optim.AdamW(model, {lr = 0.05, weight_decay = 0})
    for _ = 1, 400 do
      local loss = ((model(x) - y) ^ 2):mean()
      opt:zero_grad()
      loss:backward()
      opt:step()
    end
    assert.is_true(model.weight:allclose(true_w, 0, 1e-2), tostring(model.weight))
    assert.is_true(math.abs(model.bias[1] - 0.3) < 1e-2)
  end)

  it("saves and restores its state", function()
    local w = la.ones(2):requires_grad()
    local opt = optim.AdamW({w}, {lr = 0.1})
    w.grad = la.ones(2)
    opt:step()
    local tensors, scalars = opt:state_dict()
    local opt2 = optim.AdamW({w}, {lr = 0.1})
    opt2:load_state_dict(tensors, scalars)
    assert.are.equal(1, opt2.step_count)
    assert.is_true(opt2.m[1]:allclose(opt.m[1]))
  end)
end)

describe("SGD", function()
  it("plain, with momentum and with Nesterov momentum", function()
    local function run(opts, steps)
      local p = la.tensor({1.0}, "float32"):requires_grad()
      local opt = optim.SGD({p}, opts)
      for s = 1, steps do
        p.grad = la.tensor({s * 1.0}, "float32")
        opt:step()
      end
      return p[1]
    end
    assert.is_true(near(run({lr = 0.1}, 2), 1 - 0.1 * 1 - 0.1 * 2))
    -- momentum 0.9: b1 = 1, b2 = 0.9 + 2 = 2.9
    assert.is_true(near(run({lr = 0.1, momentum = 0.9}, 2), 1 - 0.1 - 0.29))
    -- nesterov: g + mu * b: step1 1 + 0.9 = 1.9, step2 2 + 0.9 * 2.9 = 4.61
    assert.is_true(near(run({lr = 0.1, momentum = 0.9, nesterov = true}, 2), 1 - 0.19 - 0.461))
    -- L2 weight decay is added to the gradient: g = 1 + 0.5 * 1
    assert.is_true(near(run({lr = 0.1, weight_decay = 0.5, decay_filter = function() return true end}, 1), 1 - 0.15))
  end)
end)

describe("clip_grad_norm", function()
  it("returns the global norm and scales the gradients down to max_norm", function()
    local a, b = la.zeros(2):requires_grad(), la.zeros(1):requires_grad()
    a.grad, b.grad = la.tensor({3, 0}, "float32"), la.tensor({4}, "float32")
    local norm = optim.clip_grad_norm({a, b}, 1.0)
    assert.is_true(near(norm, 5))
    assert.is_true(near(a.grad[1], 0.6, 1e-5) and near(b.grad[1], 0.8, 1e-5))
    assert.is_true(near(optim.clip_grad_norm({a, b}, 10), 1, 1e-5))   -- below the limit: untouched
    assert.is_true(near(a.grad[1], 0.6, 1e-5))
    b.grad = la.tensor({0 / 0}, "float32")
    local bad = optim.clip_grad_norm({a, b}, 1.0)
    assert.is_true(bad ~= bad)
    assert.is_true(near(a.grad[1], 0.6, 1e-5))   -- nothing scaled when the norm is not finite
  end)
end)

describe("learning-rate schedules", function()
  it("constant, linear and cosine with warmup", function()
    assert.are.equal(0.1, optim.schedule.constant(0.1)(50))
    local lin = optim.schedule.linear{lr = 1, warmup = 10, total = 110}
    assert.is_true(near(lin(5), 0.5))
    assert.is_true(near(lin(10), 1))
    assert.is_true(near(lin(60), 0.5))
    assert.is_true(near(lin(110), 0))
    local cos = optim.schedule.cosine{lr = 1, warmup = 0, total = 100, min_lr = 0.1}
    assert.is_true(near(cos(0), 1))
    assert.is_true(near(cos(50), 0.55))
    assert.is_true(near(cos(100), 0.1))
  end)
end)
