local la = require "lualign"

-- Leaves for gradient checks: well away from the kinks of relu/abs/max.
local function leaf(...)
  local t = la.randn(...)
  t = t + t:gt(0):float() * 0.2 - t:le(0):float() * 0.2
  return t:detach():requires_grad()
end

local function positive(...)
  return (la.rand(...) + 0.5):detach():requires_grad()
end

-- A non-contiguous leaf: the transpose of a (m, n) matrix.
local function transposed_leaf(m, n)
  local t = leaf(m, n):detach():t()
  assert(not t:is_contiguous())
  return t:requires_grad()
end

local function check(fn, inputs, opts)
  local ok, report = la.gradcheck(fn, inputs, opts)
  assert(ok, report)
end

describe("gradcheck of every differentiable op", function()
  before_each(function() la.manual_seed(11) end)

  it("unary math", function()
    for _, op in ipairs({"neg", "exp", "tanh", "sigmoid", "relu", "gelu", "silu", "abs", "sin",
                         "cos", "square", "expm1", "softplus", "logsigmoid"}) do
      check(function(x) return x[op](x) end, {leaf(3, 4)})
      check(function(x) return x[op](x) end, {transposed_leaf(4, 3)})
    end
    for _, op in ipairs({"log", "sqrt", "rsqrt", "log1p"}) do
      check(function(x) return x[op](x) end, {positive(3, 4)})
    end
    check(function(x) return x:gelu("none") end, {leaf(5)})
    check(function(x) return x:clamp(-0.5, 0.5) end, {leaf(4, 4)})
  end)

  it("binary ops with broadcasting on both sides", function()
    for _, op in ipairs({"add", "sub", "mul", "maximum", "minimum"}) do
      check(function(a, b) return a[op](a, b) end, {leaf(3, 4), leaf(4)})
      check(function(a, b) return a[op](a, b) end, {leaf(3, 1), leaf(1, 4)})
      check(function(a, b) return a[op](a, b) end, {transposed_leaf(4, 3), leaf(3, 1)})
    end
    check(function(a, b) return a / b end, {leaf(3, 4), positive(4)})
    check(function(a, b) return a:pow(b) end, {positive(3, 4), leaf(3, 4)})
    check(function(a) return a ^ 3 end, {leaf(5)})
    check(function(a) return 2 ^ a end, {leaf(5)})
    check(function(a) return 1 - a * 3 end, {leaf(2, 3)})
    check(function(a) return 2 / a end, {positive(5)})
  end)

  it("where, through both branches", function()
    local cond = la.randn(3, 4):gt(0)
    check(function(a, b) return la.where(cond, a, b) end, {leaf(3, 4), leaf(4)})
    check(function(a) return a:masked_fill(cond, 0) end, {leaf(3, 4)})
  end)

  it("reductions", function()
    check(function(x) return x:sum() end, {leaf(3, 4)})
    check(function(x) return x:sum(1) end, {leaf(3, 4)})
    check(function(x) return x:sum(-1, true) end, {transposed_leaf(4, 3)})
    check(function(x) return x:mean(2) end, {leaf(2, 3, 4)})
    check(function(x) return x:mean() end, {leaf(3, 4)})
    check(function(x) return x:max() end, {leaf(3, 4)})
    check(function(x) return (x:max(2)) end, {leaf(3, 4)})
    check(function(x) return (x:min(1, true)) end, {transposed_leaf(4, 3)})
    check(function(x) return x:logsumexp(2) end, {leaf(3, 4)})
    check(function(x) return x:logsumexp() end, {leaf(3, 4)})
    check(function(x) return x:softmax(2) end, {leaf(3, 4)})
    check(function(x) return x:softmax(1) end, {leaf(3, 4)})
    check(function(x) return x:log_softmax(-1) end, {transposed_leaf(4, 3)})
    check(function(x) return x:log_softmax(2) end, {leaf(2, 3, 4)})
  end)

  it("matmul in all its shapes", function()
    check(function(a, b) return a:matmul(b) end, {leaf(3, 4), leaf(4, 2)})
    check(function(a, b) return a:matmul(b) end, {transposed_leaf(4, 3), transposed_leaf(2, 4)})
    check(function(a, b) return a:matmul(b) end, {leaf(2, 3, 4), leaf(2, 4, 5)})
    check(function(a, b) return a:matmul(b) end, {leaf(2, 3, 4), leaf(4, 5)})
    check(function(a, b) return a:matmul(b) end, {leaf(2, 1, 3, 4), leaf(3, 4, 2)})
    check(function(a, b) return a:matmul(b) end, {leaf(4), leaf(4, 3)})
    check(function(a, b) return a:matmul(b) end, {leaf(3, 4), leaf(4)})
    check(function(a, b) return a:matmul(b) end, {leaf(4), leaf(4)})
  end)

  it("views", function()
    check(function(x) return x:view(4, 3) * 2 end, {leaf(3, 4)})
    check(function(x) return x:reshape(12) end, {transposed_leaf(4, 3)})
    check(function(x) return x:transpose(1, 2):contiguous() end, {leaf(3, 4)})
    check(function(x) return x:permute(3, 1, 2) end, {leaf(2, 3, 4)})
    check(function(x) return x:narrow(2, 2, 2) end, {leaf(3, 4)})
    check(function(x) return x:select(1, 2) end, {leaf(3, 4)})
    check(function(x) return x:select(-1, -1) end, {transposed_leaf(4, 3)})
    check(function(x) return x:expand(3, 4) end, {leaf(1, 4)})
    check(function(x) return x:unsqueeze(1):expand(2, 3, 4) end, {leaf(3, 4)})
    check(function(x) return x:squeeze() end, {leaf(3, 1)})
    check(function(x) return x:unsqueeze(2) end, {leaf(3, 4)})
    check(function(x) return x:flatten() end, {leaf(2, 3, 2)})
    check(function(x) return x:clone() end, {leaf(3)})
  end)

  it("cat, stack, index_select, gather", function()
    check(function(a, b) return la.cat({a, b}, 2) end, {leaf(2, 3), leaf(2, 2)})
    check(function(a, b) return la.cat({a, b, a}) end, {leaf(2, 3), transposed_leaf(3, 2)})
    check(function(a, b) return la.stack({a, b}, 2) end, {leaf(3), leaf(3)})
    local idx = la.tensor({2, 0, 2}, "int32")   -- repeated rows accumulate
    check(function(w) return w:index_select(1, idx) end, {leaf(4, 3)})
    check(function(w) return w:index_select(2, idx) end, {leaf(2, 3)})
    local g = la.tensor({{0, 2}, {1, 1}, {2, 0}})
    check(function(x) return x:gather(2, g) end, {leaf(3, 3)})
  end)

  it("composite expressions, with a tensor used twice", function()
    check(function(a, b) return ((a * b):tanh() + a:exp() * b):sum(1):log_softmax(1) end,
      {leaf(3, 4), leaf(3, 4)})
    check(function(x) return x * x + x end, {leaf(5)})
  end)
end)

describe("gradcheck itself", function()
  it("catches a wrong gradient", function()
    -- exp's derivative is right, so claiming grad of a*a is a*2 via detach is wrong:
    local x = leaf(4)
    local ok, report = la.gradcheck(function(a) return a * a:detach() end, {x})
    assert.is_false(ok)
    assert.is_truthy(report:find("numeric", 1, true))
  end)
end)

describe("autograd semantics", function()
  it("runs the README example", function()
    la.manual_seed(1)
    local x = la.randn(4, 8)
    local w = la.randn(8, 3):requires_grad()
    local loss = x:matmul(w):relu():sum()
    loss:backward()
    assert.are.same({8, 3}, w.grad:shape())
    -- d/dw sum(relu(xw)) = x^T (xw > 0)
    local expected = x:t():matmul(x:matmul(w:detach()):gt(0):float())
    assert.is_true(w.grad:allclose(expected, 1e-5, 1e-5))
  end)

  it("accumulates into .grad until cleared; .grad keeps its identity", function()
    local x = la.ones(3):requires_grad();
    (x * 2):sum():backward();
    (x * 3):sum():backward()
    assert.are.same({5, 5, 5}, x.grad:totable())
    assert.is_true(x.grad == x.grad)
    x:zero_grad()
    assert.is_nil(x.grad);
    (x * 4):sum():backward()
    assert.are.same({4, 4, 4}, x.grad:totable())
    x.grad = nil
    assert.is_nil(x.grad)
    local g = la.zeros(3)
    x.grad = g
    assert.is_true(x.grad == g);
    (x * 1):sum():backward()
    assert.are.same({1, 1, 1}, g:totable())   -- accumulated into the assigned tensor
  end)

  it("takes an explicit gradient for non-scalar outputs", function()
    local x = la.tensor({1, 2, 3}, "float32"):requires_grad()
    local y = x * x
    y:backward(la.tensor({1, 0, 2}, "float32"))
    assert.are.same({2, 0, 12}, x.grad:totable())
  end)

  it("frees the graph after backward unless retained", function()
    local x = la.ones(2):requires_grad()
    local y = (x:exp() * 3):sum()
    y:backward({retain_graph = true})
    y:backward()
    assert.is_true(math.abs(x.grad[1] - 6 * math.exp(1)) < 1e-4)
    assert.has_error(function() y:backward() end,
      "backward: the graph through 'sum' was already freed by an earlier backward(); call the first backward with retain_graph = true to run backward twice")
  end)

  it("detach and no_grad stop recording, in both forms", function()
    local x = la.ones(2):requires_grad()
    assert.is_false(x:detach():needs_grad())
    local y = la.no_grad(function() return x * 2 end)
    assert.is_false(y:needs_grad())
    assert.is_nil(y:grad_fn())
    do
      local _ <close> = la.no_grad()
      assert.is_false(la.is_grad_enabled())
      assert.is_false((x * 2):needs_grad())
    end
    assert.is_true(la.is_grad_enabled())
    assert.is_true((x * 2):needs_grad())
    assert.are.equal("mul", (x * 2):grad_fn())
    -- the mode is restored even when the function fails
    assert.has_error(function() la.no_grad(function() error("boom") end) end)
    assert.is_true(la.is_grad_enabled())
    la.no_grad(function() la.enable_grad(function() assert.is_true(la.is_grad_enabled()) end) end)
  end)

  it("flows through views of leaves and sums over broadcast dims", function()
    local w = la.ones(2, 3):requires_grad()
    w:t():narrow(1, 2, 2):sum():backward()
    assert.are.same({{0, 1, 1}, {0, 1, 1}}, w.grad:totable())
    local b = la.zeros(3):requires_grad();
    (la.ones(4, 3) + b):sum():backward()
    assert.are.same({4, 4, 4}, b.grad:totable())
  end)

  it("guards in-place writes", function()
    local w = la.ones(3):requires_grad()
    assert.has_error(function() w:fill(0) end,
      "fill: cannot modify in place a tensor that requires grad while gradients are recorded; use an out-of-place op, or wrap the update in la.no_grad")
    la.no_grad(function() w:add_(1) end)       -- an optimizer step
    assert.are.same({2, 2, 2}, w:totable())
    local y = w:exp()
    local s = y:sum()
    la.no_grad(function() y:mul_(0) end)
    assert.has_error(function() s:backward() end)
  end)

  it("only float leaves can require grad", function()
    assert.has_error(function() la.tensor({1, 2}):requires_grad() end,
      "requires_grad: only float32 tensors can require gradients (got int64)")
    local y = la.ones(2):requires_grad() * 2
    assert.has_error(function() y:requires_grad(false) end)
  end)
end)
