-- Activation checkpointing: F.checkpoint and model:set_checkpointing give the
-- gradients of the plain computation, replay dropout, keep fewer activations,
-- and refuse what would route gradients wrongly.
local la = require "lualign"
local F = la.nn.functional

local function max_diff(a, b) return (a - b):abs():max():item() end

-- Gradients of every parameter (by name) and the loss after one backward pass.
local function grads_of(model, fn)
  model:zero_grad()
  local loss = fn()
  loss:backward()
  local out = {}
  for _, p in ipairs(model:named_parameters()) do
    if p[2].grad then out[p[1]] = p[2].grad:clone() end
  end
  return out, loss:item()
end

local function same_grads(a, b, tol)
  local n = 0
  for k, g in pairs(a) do
    assert.is_not_nil(b[k], k)
    assert.is_true(max_diff(g, b[k]) <= tol, k .. ": " .. max_diff(g, b[k]))
    n = n + 1
  end
  for k in pairs(b) do assert.is_not_nil(a[k], k) end
  return n
end

describe("F.checkpoint", function()
  it("gives the gradients of the plain call, replays dropout and leaves the generator as the plain call does", function()
    la.manual_seed(1)
    local l1, l2 = la.nn.Linear(8, 16), la.nn.Linear(16, 8)
    local function block(x) return l2(F.dropout(l1(x):gelu(), 0.3, true)) + x end
    local x0 = la.randn(4, 8):requires_grad()
    local function run(ck)
      la.manual_seed(7)
      for _, p in ipairs({l1.weight, l1.bias, l2.weight, l2.bias, x0}) do p.grad = nil end
      local h = x0 * 2
      local y = ck and F.checkpoint(block, h) or block(h)
      y = ck and F.checkpoint(block, y) or block(y)
      local after = la.rand(1):item()
      y:sum():backward()
      return {l1.weight.grad:clone(), l2.bias.grad:clone(), x0.grad:clone(), y:detach()}, after
    end
    local a, after_a = run(false)
    local b, after_b = run(true)
    for i = 1, 4 do assert.are.equal(0, max_diff(a[i], b[i])) end
    assert.are.equal(after_a, after_b)
  end)

  it("records a node even when no argument needs gradients but the function's parameters do", function()
    local lin = la.nn.Linear(4, 4)
    local y = F.checkpoint(function(x) return lin(x) end, la.randn(3, 4))
    y:sum():backward()
    assert.is_not_nil(lin.weight.grad)
    -- under no_grad it is a plain call
    local z = la.no_grad(function() return F.checkpoint(function(x) return lin(x) end, la.randn(3, 4)) end)
    assert.is_false(z:needs_grad())
  end)

  it("runs twice through a retained graph and nests", function()
    local lin = la.nn.Linear(4, 4)
    local x = la.randn(2, 4):requires_grad()
    local y = F.checkpoint(function(h) return F.checkpoint(function(u) return lin(u):tanh() end, h) * 2 end, x)
    y:sum():backward({retain_graph = true})
    local g1 = x.grad:clone()
    y:sum():backward()
    assert.is_true(max_diff(x.grad, g1 * 2) < 1e-6)
    local x2 = x:detach():requires_grad()
    local y2 = lin(x2):tanh() * 2
    y2:sum():backward()
    assert.is_true(max_diff(x2.grad, g1) < 1e-6)
  end)

  it("refuses a captured tensor that carries gradient history, and reports the function's errors", function()
    local a = la.randn(2, 2):requires_grad()
    local h = a * 3
    local y = F.checkpoint(function(z) return z + h end, la.randn(2, 2):requires_grad())
    local ok, err = pcall(function() y:sum():backward() end)
    assert.is_false(ok)
    assert.truthy(err:find("backward of 'checkpoint': .*add: an input carries gradient history from outside " ..
      "the checkpointed function; pass such tensors to the function as arguments"), err)
    local calls = 0
    local y2 = F.checkpoint(function(z)
      calls = calls + 1
      if calls == 2 then error("recomputation failed") end
      return z * 2
    end, la.randn(2):requires_grad())
    ok, err = pcall(function() y2:sum():backward() end)
    assert.is_false(ok)
    assert.truthy(err:find("recomputation failed", 1, true), err)
    assert.has_error(function() F.checkpoint(function() return 1 end) end,
      "checkpoint: the function must return a tensor (got number)")
    -- grad mode and the generator survive the error
    assert.is_true(la.is_grad_enabled())
  end)
end)

describe("model:set_checkpointing", function()
  local function llama(dropout)
    la.manual_seed(21)
    return la.models.from_config{model_type = "llama", vocab_size = 64, hidden_size = 32, intermediate_size = 48,
      num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64,
      initializer_range = 0.2}
  end
  local ids = la.tensor({{1, 5, 9, 2, 33, 7, 12, 60}, {0, 0, 4, 8, 15, 16, 23, 42}}, "int64")
  local targets = la.tensor({{5, 9, 2, 33, 7, 12, 60, 1}, {-100, -100, 8, 15, 16, 23, 42, 3}}, "int64")
  local mask = la.tensor({{1, 1, 1, 1, 1, 1, 1, 1}, {0, 0, 1, 1, 1, 1, 1, 1}}, "float32")

  it("gives the plain model's gradients per block and per two blocks (Llama, and GPT with dropout)", function()
    local model = llama()
    local function loss() return model:loss(ids, targets, {attention_mask = mask}) end
    local plain, l0 = grads_of(model, loss)
    model:set_checkpointing(true)
    local every, l1 = grads_of(model, loss)
    model:set_checkpointing(2)
    local pairs_, l2 = grads_of(model, loss)
    assert.are.equal(l0, l1)
    assert.are.equal(l0, l2)
    assert.is_true(same_grads(plain, every, 0) > 30)
    same_grads(plain, pairs_, 0)

    la.manual_seed(5)
    local gpt = la.models.gpt{vocab_size = 64, n_positions = 16, n_embd = 32, n_layer = 3, n_head = 4, dropout = 0.2}
    local function gloss()
      la.manual_seed(9)
      return gpt:loss(ids, targets, {attention_mask = mask})
    end
    local g0 = grads_of(gpt, gloss)
    gpt:set_checkpointing(true)
    local g1 = grads_of(gpt, gloss)
    same_grads(g0, g1, 0)
  end)

  it("with LoRA on a frozen base, checkpointed adapters get the plain gradients", function()
    local model = llama()
    la.lora.apply(model, {r = 4, alpha = 8, target_modules = "all-linear", init_lora_weights = false})
    local function loss() return model:loss(ids, targets, {attention_mask = mask}) end
    local plain = grads_of(model, loss)
    model:set_checkpointing(true)
    same_grads(plain, grads_of(model, loss), 0)
  end)

  it("keeps fewer activations alive", function()
    la.manual_seed(3)
    local model = la.models.from_config{model_type = "llama", vocab_size = 64, hidden_size = 64,
      intermediate_size = 256, num_hidden_layers = 6, num_attention_heads = 4, max_position_embeddings = 256}
    local big = la.randint(0, 64, 4, 128)
    local function peak()
      collectgarbage()
      la.reset_peak_memory()
      local base = la.memory().live_bytes
      local loss = model:loss(big, big)
      loss:backward()
      model:zero_grad()
      return la.memory().peak_bytes - base
    end
    local plain = peak()
    model:set_checkpointing(true)
    local ckpt = peak()
    assert.is_true(ckpt < 0.6 * plain, string.format("peak %d with checkpointing, %d without", ckpt, plain))
    assert.has_error(function() model:set_checkpointing(-1) end)
  end)
end)
