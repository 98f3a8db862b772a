-- Gradient accumulation: N micro-batches give the update of one batch of the
-- same examples, for a token-normalised loss (SFT) and a pair-normalised one
-- (DPO), with micro-batches of different token counts.
local la = require "lualign"
local A = la.accumulate

local function max_diff(a, b) return (a - b):abs():max():item() end

local function grads(model)
  local out = {}
  for _, p in ipairs(model:named_parameters()) do
    if p[2].grad then out[p[1]] = p[2].grad:clone() end
  end
  return out
end

-- The largest difference between two gradient sets, relative to the largest gradient.
local function relative_diff(a, b)
  local d, m = 0, 0
  for k, g in pairs(a) do
    d = math.max(d, max_diff(g, b[k]))
    m = math.max(m, g:abs():max():item())
  end
  return d / m
end

local function model()
  la.manual_seed(4)
  return la.models.from_config{model_type = "llama", vocab_size = 32, hidden_size = 16, intermediate_size = 24,
    num_hidden_layers = 2, num_attention_heads = 2, max_position_embeddings = 16, initializer_range = 0.2}
end

describe("accumulate.split", function()
  it("splits rows of tensors, lists and nested tables into near-equal consecutive parts", function()
    local b = {ids = la.arange(10):view(5, 2), examples = {"a", "b", "c", "d", "e"},
               chosen = {ids = la.arange(5)}, beta = 0.1}
    local parts = A.split(b, 2)
    assert.are.equal(2, #parts)
    assert.are.same({{0, 1}, {2, 3}, {4, 5}}, parts[1].ids:totable())
    assert.are.same({"d", "e"}, parts[2].examples)
    assert.are.same({3, 4}, parts[2].chosen.ids:totable())
    assert.are.equal(0.1, parts[2].beta)
    assert.are.equal(b, A.split(b, 1)[1])
    assert.has_error(function() A.split(b, 6) end,
      "accumulate.split: a batch of 5 rows cannot make 6 micro-batches (grad_accum > batch size)")
    assert.has_error(function() A.split({ids = la.zeros(4, 2), mask = la.zeros(3)}, 2) end)
  end)
end)

describe("gradient accumulation", function()
  it("SFT: micro-batches of different token counts give the gradient of the whole batch", function()
    local m = model()
    local ids = la.randint(0, 32, 4, 8)
    -- targets with 7, 2, 5 and 1 counted tokens
    local t = la.randint(0, 32, 4, 8):totable()
    local keep = {7, 2, 5, 1}
    for r = 1, 4 do for c = keep[r] + 1, 8 do t[r][c] = -100 end end
    local batch = {ids = ids, targets = la.tensor(t, "int64")}
    local function loss_fn(mb) return m:loss(mb.ids, mb.targets) end
    m:zero_grad()
    local whole = loss_fn(batch)
    whole:backward()
    local g1 = grads(m)
    for _, n in ipairs({2, 3, 4}) do
      m:zero_grad()
      local r = A.run(A.split(batch, n), A.tokens, loss_fn)
      assert.are.equal(15, r.units)
      assert.is_true(math.abs(r.loss - whole:item()) < 1e-5, "loss with " .. n)
      assert.is_true(relative_diff(g1, grads(m)) < 1e-5, "gradients with " .. n)
    end
    -- the mean of the micro-batches' means is a different gradient
    m:zero_grad()
    for _, mb in ipairs(A.split(batch, 2)) do (loss_fn(mb) * 0.5):backward() end
    assert.is_true(relative_diff(g1, grads(m)) > 0.05)
  end)

  it("DPO: micro-batches give the gradient of the whole batch of pairs, and its metrics", function()
    local m = model()
    local B = 5
    local function side()
      local targets = la.randint(0, 32, B, 6)
      local mask = la.ones(B, 6)
      mask[1][6], mask[3][5], mask[3][6] = 0, 0, 0
      return {ids = la.randint(0, 32, B, 6), targets = targets, loss_mask = mask}
    end
    local batch = {chosen = side(), rejected = side(), ref_chosen = la.randn(B) - 20, ref_rejected = la.randn(B) - 20}
    local function loss_fn(mb)
      local pc = m:sequence_logprobs(mb.chosen.ids, mb.chosen.targets, mb.chosen.loss_mask)
      local pr = m:sequence_logprobs(mb.rejected.ids, mb.rejected.targets, mb.rejected.loss_mask)
      return la.loss.dpo(pc, pr, mb.ref_chosen, mb.ref_rejected, {beta = 0.5})
    end
    m:zero_grad()
    local whole, metrics = loss_fn(batch)
    whole:backward()
    local g1 = grads(m)
    m:zero_grad()
    local r = A.run(A.split(batch, 3), A.pairs, loss_fn)
    assert.are.equal(5, r.units)
    assert.is_true(math.abs(r.loss - whole:item()) < 1e-5)
    assert.is_true(relative_diff(g1, grads(m)) < 1e-5)
    assert.is_true(math.abs(r.metrics["rewards/margins"] - metrics["rewards/margins"]) < 1e-4)
  end)

  it("skips micro-batches without units and refuses a batch without any", function()
    local m = model()
    local t = la.full({2, 4}, -100, "int64")
    t[1][1] = 3
    local batch = {ids = la.randint(0, 32, 2, 4), targets = t}
    local calls = 0
    local r = A.run(A.split(batch, 2), A.tokens, function(mb) calls = calls + 1; return m:loss(mb.ids, mb.targets) end)
    assert.are.equal(1, calls)
    assert.is_true(r.loss == r.loss)
    local none = {ids = la.randint(0, 32, 2, 4), targets = la.full({2, 4}, -100, "int64")}
    assert.has_error(function() A.run({none}, A.tokens, function() end) end,
      "accumulate.run: the accumulated batch has no units (no target tokens or pairs) to learn from")
  end)
end)
