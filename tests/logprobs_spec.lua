-- Fused log-probs and entropy (engine/core/la_logprobs.c): the same values and
-- gradients as the composed log_softmax -> gather -> mask -> sum, from logits
-- and from hidden states without logits; masked rows cost nothing and are never
-- read; the logits-free path keeps its peak memory far below the logits' size.
local la = require "lualign"
local loss = la.loss

local function check(fn, inputs, opts)
  local ok, report = la.gradcheck(fn, inputs, opts)
  assert(ok, report)
end

local function assert_close(a, b, tol, what)
  tol = tol or 1e-5
  assert(a:allclose(b, tol, tol), (what or "tensors differ") .. ":\n" .. tostring(a) .. "\n" .. tostring(b))
end

local h = require "helpers"
local fails_with = h.fails_with

-- The composed reference: per-token log-probs (B, T) times the mask.
local function composed_token(logits, targets, mask, temperature)
  local x = temperature and logits / temperature or logits
  local safe = la.where(mask:ne(0), targets, 0)
  return x:log_softmax(-1):gather(3, safe:unsqueeze(3)):squeeze(3) * mask:float()
end

local function composed_entropy(logits, mask)
  local lp = logits:log_softmax(-1)
  return -(lp:exp() * lp):sum(-1) * mask:float()
end

describe("token and sequence log-probs from logits", function()
  before_each(function() la.manual_seed(7) end)

  local B, T, V = 3, 4, 11
  local function data()
    local logits = (la.randn(B, T, V) * 2):requires_grad()
    local targets = la.randint(0, V, B, T)
    local mask = la.tensor({{0, 1, 1, 1}, {0, 0, 1, 0}, {1, 1, 1, 1}}, "float32")
    targets[{2, 4}] = -100   -- masked positions are never read
    targets[{1, 1}] = V + 5
    return logits, targets, mask
  end

  it("token_logprobs equals log_softmax -> gather -> mask, with the same gradient", function()
    local logits, targets, mask = data()
    local fused = loss.token_logprobs(logits, targets, mask)
    local ref = composed_token(logits, targets, mask)
    assert.are.same({B, T}, fused:shape())
    assert_close(fused, ref, 1e-5)
    assert.are.equal(0, fused[{2, 4}])
    local g = la.randn(B, T)
    fused:backward(g)
    local fused_grad = logits.grad
    logits.grad = nil
    ref:backward(g)
    assert_close(fused_grad, logits.grad, 1e-5, "gradients differ")
    -- masked rows get exactly zero gradient
    assert.are.equal(0, fused_grad[2][4]:abs():max():item())
  end)

  it("sequence_logprobs sums over the mask, or averages with average = true", function()
    local logits, targets, mask = data()
    local tok = composed_token(logits, targets, mask)
    assert_close(loss.sequence_logprobs(logits, targets, mask), tok:sum(2), 1e-5)
    local mean = loss.sequence_logprobs(logits, targets, mask, {average = true})
    assert_close(mean, tok:sum(2) / mask:sum(2), 1e-5)
    -- the second row has one real token: its mean is that token's log-prob
    assert.is_true(math.abs(mean[2] - tok[{2, 3}]) < 1e-6)
  end)

  it("sequence log-probs against values computed by hand", function()
    -- one sequence of two tokens over a vocabulary of three
    local logits = la.tensor({{{0, 0, 0}, {1, 2, 3}}}, "float32")
    local targets = la.tensor({{2, 0}})
    local lse2 = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    local expected = -math.log(3) + (1 - lse2)
    assert.is_true(math.abs(loss.sequence_logprobs(logits, targets, nil)[1] - expected) < 1e-6)
    local only_second = la.tensor({{0, 1}}, "float32")
    assert.is_true(math.abs(loss.sequence_logprobs(logits, targets, only_second)[1] - (1 - lse2)) < 1e-6)
  end)

  it("an empty mask gives 0 (sum and mean) and no gradient", function()
    local logits = la.randn(2, 3, 5):requires_grad()
    local targets = la.zeros(2, 3, "int64")
    local mask = la.tensor({{0, 0, 0}, {1, 0, 1}}, "float32")
    local mean = loss.sequence_logprobs(logits, targets, mask, {average = true})
    assert.are.equal(0, mean[1])
    mean:sum():backward()
    assert.are.equal(0, logits.grad[1]:abs():max():item())
    assert.is_true(logits.grad[2]:abs():max():item() > 0)
  end)

  it("works for non-contiguous logits, int32 targets, bool masks and no mask", function()
    local base = la.randn(B, V, T)
    local logits = base:transpose(2, 3)           -- (B, T, V), not contiguous
    assert.is_false(logits:is_contiguous())
    local targets = la.randint(0, V, B, T, "int32")
    local maskb = la.rand(B, T):gt(0.3)
    local maskf = maskb:float()
    assert_close(loss.token_logprobs(logits, targets, maskb), composed_token(logits, targets:long(), maskf))
    assert_close(loss.sequence_logprobs(logits, targets),
      composed_token(logits, targets:long(), la.ones(B, T)):sum(2))
  end)

  it("temperature divides the logits, and scales the gradient", function()
    local logits, targets, mask = data()
    local fused = loss.sequence_logprobs(logits, targets, mask, {temperature = 0.7})
    local ref = composed_token(logits, targets, mask, 0.7):sum(2)
    assert_close(fused, ref, 1e-5)
    fused:sum():backward()
    local g = logits.grad
    logits.grad = nil
    ref:sum():backward()
    assert_close(g, logits.grad, 1e-5)
  end)

  it("agree with the composed path over long rows whose maximum moves from block to block", function()
    -- rows longer than the kernel's 1024-wide blocks, rising so each block raises the running maximum
    local Vl = 3000
    local ramp = la.arange(Vl):float() * 0.01
    local logits = (la.randn(2, 3, Vl) + ramp):requires_grad()
    local targets = la.tensor({{0, 1500, 2999}, {2048, 7, 1023}})
    local mask = la.ones(2, 3)
    local fused = loss.token_logprobs(logits, targets, mask)
    local ref = composed_token(logits, targets, mask)
    assert_close(fused, ref, 1e-4)
    assert_close(loss.entropy(logits, mask), composed_entropy(logits, mask), 1e-4)
    fused:sum():backward()
    local g = logits.grad
    logits.grad = nil
    ref:sum():backward()
    assert_close(g, logits.grad, 1e-5)
  end)

  it("propagate NaN to the row that holds it, and allow -inf logits", function()
    local x = la.tensor({{{0, 0 / 0, 1}, {2, -math.huge, 0}}}, "float32")
    local lp = loss.token_logprobs(x, la.tensor({{0, 0}})):totable()[1]
    assert.is_true(lp[1] ~= lp[1], "a NaN logit makes the row's log-prob NaN")
    assert.is_true(math.abs(lp[2] - (2 - math.log(math.exp(2) + 1))) < 1e-6)
    local h = loss.entropy(la.tensor({{{-math.huge, -math.huge}}}, "float32"), nil)
    assert.are.equal(0, h:item())
  end)

  it("passes finite-difference checks (token, sum, mean, temperature)", function()
    local targets = la.tensor({{1, 4, 0}, {2, 2, -100}})
    local mask = la.tensor({{1, 1, 0}, {1, 0.5, 0}}, "float32")   -- weights are allowed
    local x = la.randn(2, 3, 5):requires_grad()
    check(function(l) return loss.token_logprobs(l, targets, mask) end, {x})
    check(function(l) return loss.sequence_logprobs(l, targets, mask) end, {x})
    check(function(l) return loss.sequence_logprobs(l, targets, mask, {average = true}) end, {x})
    check(function(l) return loss.sequence_logprobs(l, targets, mask, {temperature = 2}) end, {x})
  end)
end)

describe("log-probs from hidden states without logits", function()
  before_each(function() la.manual_seed(11) end)

  local B, T, C, V = 2, 5, 6, 13
  local function data()
    local h = la.randn(B, T, C):requires_grad()
    local w = la.randn(V, C):requires_grad()
    local targets = la.randint(0, V, B, T)
    local mask = la.tensor({{0, 0, 1, 1, 1}, {0, 1, 1, 0, 0}}, "float32")
    targets[{2, 5}] = -1
    return h, w, targets, mask
  end

  for _, chunk in ipairs({1, 2, 3, 16, 0}) do
    it("equal the logits path in values and in both gradients (chunk_rows = " .. chunk .. ")", function()
      local h, w, targets, mask = data()
      local opts = {chunk_rows = chunk}
      local g = la.randn(B, T)
      local fused = loss.token_logprobs_hidden(h, w, targets, mask, opts)
      fused:backward(g)
      local gh, gw = h.grad, w.grad
      h.grad, w.grad = nil, nil
      local ref = composed_token(h:matmul(w:t()), targets, mask)
      ref:backward(g)
      assert_close(fused, ref, 1e-5)
      assert_close(gh, h.grad, 1e-5, "hidden gradients differ")
      assert_close(gw, w.grad, 1e-5, "weight gradients differ")
      assert_close(loss.sequence_logprobs_hidden(h, w, targets, mask, opts), ref:sum(2), 1e-5)
    end)
  end

  it("with a frozen weight give the hidden gradient of the trainable-weight path", function()
    -- a frozen weight takes the path that forms d value / d hidden in the forward pass
    local h, w, targets, mask = data()
    local frozen = w:detach()
    local cases = {
      {"token", function(a, b, o) return loss.token_logprobs_hidden(a, b, targets, mask, o) end, la.randn(B, T)},
      {"sum", function(a, b, o) return loss.sequence_logprobs_hidden(a, b, targets, mask, o) end, la.randn(B)},
      {"mean", function(a, b, o)
        return loss.sequence_logprobs_hidden(a, b, targets, mask, {average = true, temperature = o.temperature,
          chunk_rows = o.chunk_rows})
      end, la.randn(B)},
      {"entropy", function(a, b, o) return loss.entropy_hidden(a, b, mask, o) end, la.randn(B, T)},
    }
    for _, c in ipairs(cases) do
      for _, opts in ipairs({{chunk_rows = 2}, {chunk_rows = 16, temperature = 0.7}}) do
        h.grad, w.grad = nil, nil
        local trained = c[2](h, w, opts)
        trained:backward(c[3])
        local want = h.grad
        h.grad = nil
        local got = c[2](h, frozen, opts)
        assert_close(got, trained, 1e-6, c[1] .. ": values differ")
        got:backward(c[3], {retain_graph = true})
        assert_close(h.grad, want, 1e-5, c[1] .. ": hidden gradients differ")
        got:backward(c[3])   -- a retained graph gives the same gradient again
        assert_close(h.grad, want * 2, 1e-5, c[1] .. ": the second backward differs")
        assert.are.equal(0, h.grad[{1, 1, 1}])   -- a masked row gets nothing
      end
    end
    check(function(a) return loss.sequence_logprobs_hidden(a, frozen, targets, mask, {chunk_rows = 2}) end, {h})
  end)

  it("passes finite-difference checks for hidden and weight", function()
    local h, w, targets, mask = data()
    check(function(a, b) return loss.sequence_logprobs_hidden(a, b, targets, mask, {chunk_rows = 2}) end, {h, w})
    check(function(a, b)
      return loss.sequence_logprobs_hidden(a, b, targets, mask, {average = true, temperature = 1.5})
    end, {h, w})
  end)

  it("never materialise the logits: peak memory stays far below (B, T, V)", function()
    local Bm, Tm, Cm, Vm = 2, 64, 32, 8192
    local h = la.randn(Bm, Tm, Cm):requires_grad()
    local w = (la.randn(Vm, Cm) * 0.1):requires_grad()
    local targets = la.randint(0, Vm, Bm, Tm)
    local logits_bytes = Bm * Tm * Vm * 4
    collectgarbage()
    la.reset_peak_memory()
    local base = la.memory().live_bytes
    local lp = loss.sequence_logprobs_hidden(h, w, targets, nil, {chunk_rows = 16})
    lp:sum():backward()
    local extra = la.memory().peak_bytes - base
    -- scratch: 16 rows of logits (512 KiB) plus the gradients of h and w (1 MiB)
    assert.is_true(extra < logits_bytes / 2,
      string.format("peak grew by %d bytes; the logits alone are %d", extra, logits_bytes))
    -- and the result is still right
    local ref = composed_token(h:matmul(w:t()), targets, la.ones(Bm, Tm)):sum(2)
    assert_close(lp, ref, 1e-3)
  end)

  it("model:sequence_logprobs equals the composed path through the logits", function()
    local model = la.models.gpt{vocab_size = 17, n_positions = 8, n_embd = 8, n_layer = 1, n_head = 2}
    local ids = la.randint(0, 17, 2, 6)
    local targets = la.randint(0, 17, 2, 6)
    local mask = la.tensor({{0, 0, 1, 1, 1, 1}, {0, 1, 1, 1, 0, 0}}, "float32")
    local fused = model:sequence_logprobs(ids, targets, mask)
    fused:sum():backward()
    local g1 = model.wte.weight.grad:clone()
    model:zero_grad()
    local ref = composed_token(model(ids), targets, mask):sum(2)
    ref:sum():backward()
    assert_close(fused, ref, 1e-5)
    assert_close(g1, model.wte.weight.grad, 1e-5, "tied-embedding gradients differ")
    assert_close(model:token_logprobs(ids, targets, mask), composed_token(model(ids), targets, mask), 1e-5)
  end)
end)

describe("entropy", function()
  before_each(function() la.manual_seed(5) end)

  it("equals -sum p log p per token, masked, with the same gradient", function()
    local x = (la.randn(2, 3, 7) * 3):requires_grad()
    local mask = la.tensor({{1, 0, 1}, {1, 1, 0}}, "float32")
    local fused = loss.entropy(x, mask)
    local ref = composed_entropy(x, mask)
    assert_close(fused, ref, 1e-5)
    local g = la.randn(2, 3)
    fused:backward(g)
    local gx = x.grad
    x.grad = nil
    ref:backward(g)
    assert_close(gx, x.grad, 1e-5)
    assert_close(loss.entropy(x, mask, {reduce = "mean"}), ref:sum(2) / mask:sum(2), 1e-5)
  end)

  it("is log V for uniform logits and 0 for a one-hot distribution", function()
    local x = la.tensor({{{0, 0, 0, 0}, {0, -math.huge, -math.huge, -math.huge}}}, "float32")
    local e = loss.entropy(x, nil)
    assert.is_true(math.abs(e[{1, 1}] - math.log(4)) < 1e-6)
    assert.are.equal(0, e[{1, 2}])
  end)

  it("from hidden states equals the logits path, and passes finite differences", function()
    local h, w = la.randn(2, 4, 5):requires_grad(), la.randn(9, 5):requires_grad()
    local mask = la.tensor({{1, 1, 0, 1}, {0, 1, 1, 1}}, "float32")
    local fused = loss.entropy_hidden(h, w, mask, {chunk_rows = 2})
    fused:sum():backward()
    local gh, gw = h.grad, w.grad
    h.grad, w.grad = nil, nil
    local ref = composed_entropy(h:matmul(w:t()), mask)
    ref:sum():backward()
    assert_close(fused, ref, 1e-5)
    assert_close(gh, h.grad, 1e-5)
    assert_close(gw, w.grad, 1e-5)
    check(function(a) return loss.entropy(a, mask, {temperature = 0.8}) end, {la.randn(2, 4, 6):requires_grad()})
    check(function(a, b) return loss.entropy_hidden(a, b, mask, {chunk_rows = 3}) end, {h, w})
  end)
end)

describe("log-prob kernels reject bad input", function()
  local logits, targets = la.randn(2, 3, 5), la.zeros(2, 3, "int64")

  it("names the op, the shapes and the offending value", function()
    fails_with("token_logprobs: targets of shape (2, 4) do not fit logits of shape (2, 3, 5) (expected (2, 3))",
      function() return loss.token_logprobs(logits, la.zeros(2, 4, "int64")) end)
    fails_with("sequence_logprobs: mask of shape (3,) does not fit logits of shape (2, 3, 5)",
      function() return loss.sequence_logprobs(logits, targets, la.ones(3)) end)
    fails_with("token_logprobs: target 5 at position 4 is out of range for a vocabulary of 5",
      function() return loss.token_logprobs(logits, la.tensor({{0, 1, 2}, {5, 0, 0}})) end)
    fails_with("token_logprobs: targets must be int32 or int64 (0-based ids); got float32",
      function() return loss.token_logprobs(logits, la.zeros(2, 3)) end)
    fails_with("token_logprobs: logits must be float32 with at least 2 dims",
      function() return loss.token_logprobs(la.zeros(5), la.zeros(1, "int64")) end)
    fails_with("temperature must be positive and finite",
      function() return loss.token_logprobs(logits, targets, nil, {temperature = 0}) end)
    fails_with("sequence_logprobs_hidden: weight must be float32, bfloat16 or float16 (V, C) with C = 4",
      function() return loss.sequence_logprobs_hidden(la.randn(2, 3, 4), la.randn(7, 3), targets) end)
    fails_with("at position 2 is not finite",
      function() return loss.entropy(logits, la.tensor({{1, 0 / 0, 1}, {1, 1, 1}}, "float32")) end)
    fails_with("reduce must be 'token', 'sum' or 'mean'",
      function() return loss.entropy(logits, nil, {reduce = "max"}) end)
  end)

  it("points at the caller's line", function()
    local ok, err = pcall(function()
      local x = loss.sequence_logprobs(logits, la.zeros(3, "int64"))
      return x
    end)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("logprobs_spec.lua:%d+: sequence_logprobs: targets"), err)
  end)
end)
