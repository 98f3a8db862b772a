local la = require "lualign"
local nn = la.nn
local F = nn.functional

local function check(fn, inputs, opts)
  local ok, report = la.gradcheck(fn, inputs, opts)
  assert(ok, report)
end

local function leaf(...) return la.randn(...):requires_grad() end

local function assert_close(a, b, tol)
  assert(a:allclose(b, tol or 1e-5, tol or 1e-5),
    "tensors differ:\n" .. tostring(a) .. "\n" .. tostring(b))
end

-- Attention written with plain ops: the reference for the fused kernel.
local function reference_attention(q, k, v, causal, key_mask, offset)
  local D = q:size(-1)
  local scores = q:matmul(k:transpose(-2, -1)) / math.sqrt(D)
  local T, S = q:size(3), k:size(3)
  local allowed = la.ones(T, S, "bool")
  if causal then
    local i = la.arange(T):unsqueeze(2) + (offset or 0)
    local j = la.arange(S):unsqueeze(1)
    allowed = j:le(i)
  end
  allowed = allowed:unsqueeze(1):unsqueeze(1)             -- (1, 1, T, S)
  if key_mask then allowed = la.where(key_mask:ne(0):unsqueeze(2):unsqueeze(2), allowed, false) end
  scores = la.where(allowed, scores, -math.huge)
  return scores:softmax(-1):matmul(v)
end

describe("fused kernels match their definitions", function()
  before_each(function() la.manual_seed(21) end)

  it("linear is x W^T + b", function()
    local x, w, b = la.randn(2, 3, 5), la.randn(4, 5), la.randn(4)
    assert_close(F.linear(x, w, b), x:matmul(w:t()) + b)
    assert_close(F.linear(x, w), x:matmul(w:t()))
  end)

  it("layer_norm and rms_norm normalise the last dim", function()
    local x, w, b = la.randn(3, 8) * 3 + 1, la.randn(8), la.randn(8)
    local mean = x:mean(-1, true)
    local var = ((x - mean) ^ 2):mean(-1, true)
    assert_close(F.layer_norm(x, w, b, 1e-5), (x - mean) / (var + 1e-5):sqrt() * w + b, 1e-4)
    local ms = (x * x):mean(-1, true)
    assert_close(F.rms_norm(x, w, 1e-6), x / (ms + 1e-6):sqrt() * w, 1e-4)
  end)

  it("attention equals softmax(q k^T / sqrt(d) + mask) v", function()
    local q, k, v = la.randn(2, 3, 5, 4), la.randn(2, 3, 5, 4), la.randn(2, 3, 5, 4)
    assert_close(F.attention(q, k, v), reference_attention(q, k, v, false), 1e-5)
    assert_close(F.attention(q, k, v, {causal = true}), reference_attention(q, k, v, true), 1e-5)
    local km = la.tensor({{1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}}, "float32")
    assert_close(F.attention(q, k, v, {causal = true, key_mask = km}),
      reference_attention(q, k, v, true, km), 1e-5)
    -- three new queries against seven cached keys
    local q3, k7, v7 = la.randn(2, 3, 3, 4), la.randn(2, 3, 7, 4), la.randn(2, 3, 7, 4)
    assert_close(F.attention(q3, k7, v7, {causal = true, offset = 4}),
      reference_attention(q3, k7, v7, true, nil, 4), 1e-5)
  end)

  it("fused qkv attention equals attention on the split heads", function()
    local B, T, H, D = 2, 6, 3, 4
    local qkv = la.randn(B, T, 3 * H * D)
    local function heads(i) return qkv:narrow(3, i * H * D + 1, H * D):view(B, T, H, D):transpose(2, 3) end
    local expected = reference_attention(heads(0), heads(1), heads(2), true):transpose(2, 3):reshape(B, T, H * D)
    assert_close(F.attention_qkv(qkv, H, {causal = true}), expected, 1e-5)
  end)

  it("segments keep packed sequences apart", function()
    local B, T, H, D = 1, 6, 2, 4
    local qkv = la.randn(B, T, 3 * H * D)
    local seg = la.tensor({{0, 0, 0, 1, 1, 1}})
    local packed = F.attention_qkv(qkv, H, {causal = true, segments = seg})
    local first = F.attention_qkv(qkv:narrow(2, 1, 3):contiguous(), H, {causal = true})
    local second = F.attention_qkv(qkv:narrow(2, 4, 3):contiguous(), H, {causal = true})
    assert_close(packed, la.cat({first, second}, 2), 1e-5)
  end)

  it("cross_entropy is the mean of -log_softmax at the target, skipping ignore_index", function()
    local logits, targets = la.randn(5, 7), la.tensor({0, 6, -100, 3, 3})
    local loss, count = F.cross_entropy(logits, targets)
    assert.are.equal(4, count)
    local lp = logits:log_softmax(-1)
    local expected = -(lp[1][1] + lp[2][7] + lp[4][4] + lp[5][4]) / 4
    assert.is_true(math.abs(loss:item() - expected) < 1e-5)
    local smooth = F.cross_entropy(logits, targets, {label_smoothing = 0.1}):item()
    local uniform = -(lp[1]:mean() + lp[2]:mean() + lp[4]:mean() + lp[5]:mean()):item() / 4
    assert.is_true(math.abs(smooth - (0.9 * expected + 0.1 * uniform)) < 1e-5)
  end)

  it("dropout keeps the expected share, scales survivors and is seeded", function()
    local x = la.ones(100000)
    la.manual_seed(3)
    local y = F.dropout(x, 0.25)
    local kept = y:ne(0):float():mean():item()
    assert.is_true(math.abs(kept - 0.75) < 0.01)
    assert.is_true(math.abs(y:max():item() - 1 / 0.75) < 1e-6)
    la.manual_seed(3)
    assert.is_true(F.dropout(x, 0.25):eq(y):all())
    assert.are.equal(x, F.dropout(x, 0.25, false))
  end)
end)

describe("gradients of the fused kernels", function()
  before_each(function() la.manual_seed(22) end)

  it("linear", function()
    check(function(x, w, b) return F.linear(x, w, b) end, {leaf(2, 3, 4), leaf(5, 4), leaf(5)})
    check(function(x, w) return F.linear(x, w) end, {leaf(4, 3):t(), leaf(2, 4)})
  end)

  it("layer_norm and rms_norm", function()
    check(function(x, w, b) return F.layer_norm(x, w, b) end, {leaf(3, 6), leaf(6), leaf(6)})
    check(function(x) return F.layer_norm(x) end, {leaf(2, 2, 5)})
    check(function(x, w) return F.rms_norm(x, w) end, {leaf(3, 6), leaf(6)})
  end)

  it("dropout with a fixed mask", function()
    check(function(x) la.manual_seed(9); return F.dropout(x, 0.3) end, {leaf(4, 5)})
  end)

  it("attention, with masks and a cache offset", function()
    check(function(q, k, v) return F.attention(q, k, v, {causal = true}) end,
      {leaf(1, 2, 4, 3), leaf(1, 2, 4, 3), leaf(1, 2, 4, 3)})
    local km = la.tensor({{1, 1, 0, 1, 1}}, "float32")
    check(function(q, k, v) return F.attention(q, k, v, {causal = true, offset = 2, key_mask = km}) end,
      {leaf(1, 2, 3, 3), leaf(1, 2, 5, 3), leaf(1, 2, 5, 3)})
    check(function(qkv) return F.attention_qkv(qkv, 2, {causal = true}) end, {leaf(2, 4, 12)})
    check(function(qkv) return F.attention_qkv(qkv, 2, {causal = true, segments = la.tensor({{1, 1, 2, 2}})}) end,
      {leaf(1, 4, 12)})
  end)

  it("cross_entropy, with ignored rows and label smoothing", function()
    local t = la.tensor({1, -100, 4, 0})
    check(function(x) return (F.cross_entropy(x, t)) end, {leaf(4, 5)})
    check(function(x) return (F.cross_entropy(x, t, {label_smoothing = 0.2})) end, {leaf(4, 5)})
  end)

  it("cross_entropy writes its gradient over the logits only when nothing else holds them", function()
    la.manual_seed(8)
    local w0, h = la.randn(6, 9), la.randn(4, 6)
    local t = la.tensor({1, -100, 8, 0})
    local function grad_of_w(hold, retain)
      local w = w0:clone():requires_grad()
      local loss, logits, copy
      if hold then
        logits = h:matmul(w)
        copy = logits:clone()
        loss = F.cross_entropy(logits, t)
      else
        local closed <close> = h:matmul(w)
        loss = F.cross_entropy(closed, t)
      end
      loss:backward(retain and {retain_graph = true} or nil)
      if hold then assert_close(logits, copy, 0) end   -- the caller's logits are intact
      return w.grad, loss
    end
    local expected = grad_of_w(true)
    assert_close(grad_of_w(false), expected, 1e-6)    -- the in-place path
    -- a retained graph keeps its logits: a second backward gives the same gradient again
    local g, loss = grad_of_w(false, true)
    assert_close(g, expected, 1e-6)
    loss:backward()
    assert_close(g, expected * 2, 1e-6)
  end)

  it("GPT:loss lets the gradient of the logits reuse their memory", function()
    la.manual_seed(9)
    local model = la.models.gpt{vocab_size = 4096, n_positions = 32, n_embd = 16, n_layer = 1, n_head = 2}
    local ids = la.randint(0, 4096, 8, 33)
    local x, y = ids:narrow(2, 1, 32), ids:narrow(2, 2, 32)
    model:loss(x, y):backward()   -- gradients of the weights now exist; what follows is the step
    collectgarbage("collect")
    local logits_bytes = 8 * 32 * 4096 * 4             -- 4 MiB
    la.reset_peak_memory()
    local before = la.memory().live_bytes
    model:loss(x, y):backward()
    local step_peak = la.memory().peak_bytes - before
    -- without the reuse the logits and their gradient are alive together at the peak
    assert.is_true(step_peak < 2 * logits_bytes, string.format("peak %.2f MiB above the start", step_peak / 2 ^ 20))
  end)
end)

describe("the Module protocol", function()
  local Block = nn.Module:extend("Block")
  function Block:init(d)
    self.norm = nn.LayerNorm(d)
    self.proj = nn.Linear(d, d)
    self.scale = la.ones(d):requires_grad()
    self.running = la.zeros(d)                 -- a buffer
  end
  function Block:forward(x) return self.proj(self.norm(x)) * self.scale end

  it("registers parameters in order with dotted names", function()
    local b = Block(4)
    local names = {}
    for i, p in ipairs(b:named_parameters()) do names[i] = p[1] end
    assert.are.same({"norm.weight", "norm.bias", "proj.weight", "proj.bias", "scale"}, names)
    assert.are.equal(4 + 4 + 16 + 4 + 4, b:num_parameters())
    assert.are.same({2, 4}, b(la.randn(2, 4)):shape())
    assert.is_not_nil(b:state_dict().running)
    assert.is_nil(b:state_dict().missing)
  end)

  it("lists tied tensors once, and names lists 0, 1, ...", function()
    local seq = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    assert.are.same("0.weight", seq:named_parameters()[1][1])
    assert.are.same("2.bias", seq:named_parameters()[4][1])
    assert.are.equal(2, #seq:named_modules()[3] and 2)
    local shared = nn.Linear(2, 2)
    local list = nn.ModuleList({shared, shared})
    assert.are.equal(2, #list:parameters())
  end)

  it("round-trips state_dict and checks shapes and names strictly", function()
    local a, b = Block(4), Block(4)
    b:load_state_dict(a:state_dict())
    assert.is_true(a.proj.weight:allclose(b.proj.weight))
    assert.is_false(a.proj.weight == b.proj.weight)   -- copied, not shared
    local bad = a:state_dict()
    bad["proj.weight"] = la.zeros(3, 4)
    assert.has_error(function() b:load_state_dict(bad) end,
      "load_state_dict: proj.weight: shape (3, 4) in the checkpoint, (4, 4) in the model")
    local partial = {["scale"] = la.ones(4)}
    assert.has_error(function() b:load_state_dict(partial) end)
    local missing = b:load_state_dict(partial, {strict = false})
    assert.are.equal(5, #missing)
  end)

  it("switches train/eval and freezes parameters", function()
    local b = Block(4)
    b:eval()
    assert.is_false(b.norm.training)
    b:train()
    assert.is_true(b.proj.training)
    b:requires_grad(false)
    assert.is_false(b.proj.weight:needs_grad())
    assert.is_false(b(la.randn(1, 4)):needs_grad())
  end)

  it("zero_grad drops the gradients", function()
    local l = nn.Linear(3, 2)
    l(la.randn(4, 3)):sum():backward()
    assert.is_not_nil(l.weight.grad)
    l:zero_grad()
    assert.is_nil(l.weight.grad)
  end)
end)
