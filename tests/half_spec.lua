-- 16-bit storage: bfloat16 and float16 tensors for frozen weights.  Products
-- that read such a weight compute in float32 (panels widened inside the
-- product); every other op refuses them by name.
local la = require "lualign"
local F = la.nn.functional

local function max_diff(a, b) return (a - b):abs():max():item() end

describe("bfloat16 and float16 tensors", function()
  it("round to nearest even on the way in and widen exactly on the way out", function()
    -- 1 + 2^-8 lies halfway between two bfloat16 neighbours: ties go to the even one (1);
    -- 1 + 3 * 2^-8 goes up to 1 + 2^-6.  float16 keeps 10 bits: 1 + 2^-11 ties to 1.
    local x = la.tensor({1 + 2 ^ -8, 1 + 3 * 2 ^ -8, -2.5, 1e-3, 65504, 1 + 2 ^ -11})
    local b = x:bfloat16()
    assert.are.equal("bfloat16", b:dtype())
    assert.are.same({1, 1 + 2 ^ -6, -2.5}, {b[1], b[2], b[3]})
    local h = x:half()
    assert.are.equal("float16", h:dtype())
    assert.are.equal(1, h[6])
    assert.are.equal(65504, h[5])
    assert.is_true(math.abs(h[4] - 1e-3) < 1e-6)
    assert.are.same(b:float():totable(), la.tensor(b:totable()):totable())
    assert.are.equal("bfloat16", la.zeros(2, 3, "bf16"):dtype())
    assert.are.same({1, 1}, la.ones(2, "float16"):totable())
    assert.truthy(tostring(b):find("dtype=bfloat16", 1, true))
    assert.truthy(tostring(b):find("-2.5", 1, true))
  end)

  it("are views, copies and conversions; arithmetic refuses them by op and dtype", function()
    local w = la.randn(4, 6):to("bfloat16")
    assert.are.same({6, 4}, w:t():contiguous():shape())
    assert.are.equal(0, max_diff(w:narrow(1, 2, 2):float(), w:float():narrow(1, 2, 2)))
    local c = la.zeros(4, 6, "bfloat16")
    c:copy(w)
    assert.are.equal(0, max_diff(c:float(), w:float()))
    for _, op in ipairs({
      {"add", function() return w + 1 end}, {"sum", function() return w:sum() end},
      {"exp", function() return w:exp() end}, {"mul", function() return w * w end},
      {"max", function() return w:max() end}, {"softmax", function() return w:softmax(2) end},
    }) do
      local ok, err = pcall(op[2])
      assert.is_false(ok, op[1])
      assert.truthy(err:find(op[1] .. ": bfloat16 tensors are storage only", 1, true), err)
    end
    local ok, err = pcall(function() return w:requires_grad() end)
    assert.is_false(ok)
    assert.truthy(err:find("only float32 tensors can require gradients (got bfloat16)", 1, true), err)
    ok, err = pcall(function() return la.randn(2, 6):matmul(w:t()) end)
    assert.is_false(ok)
    assert.truthy(err:find("matmul: needs float32 tensors", 1, true), err)
  end)

  it("linear with a 16-bit weight equals linear with its float32 widening, forward and backward", function()
    la.set_num_threads(2)
    for _, dt in ipairs({"bfloat16", "float16"}) do
      -- sizes that need several 4 MiB panels in both directions on each of two threads
      la.manual_seed(11)
      local x = la.randn(48, 700):requires_grad()
      local w16 = (la.randn(3200, 700) * 0.05):to(dt)
      local w32 = w16:float()
      local b = la.randn(3200)
      local y16, y32 = F.linear(x, w16, b), F.linear(x, w32, b)
      assert.is_true(max_diff(y16, y32) < 1e-4, dt .. " forward")
      local g = la.randn(48, 3200)
      y16:backward(g)
      local gx16 = x.grad:clone()
      x.grad = nil
      y32:backward(g)
      assert.is_true(max_diff(gx16, x.grad) < 1e-4, dt .. " backward")
      x.grad = nil
      -- one row (decoding) and a transposed input
      local x1 = la.randn(1, 700)
      assert.is_true(max_diff(F.linear(x1, w16), F.linear(x1, w32)) < 1e-4)
      local xt = la.randn(700, 5)
      assert.is_true(max_diff(F.linear(xt:t(), w16), F.linear(xt:t(), w32)) < 1e-4)
    end
  end)

  it("serves as the LM head of the log-prob kernels and as an embedding table", function()
    la.manual_seed(12)
    local h = la.randn(2, 5, 16):requires_grad()
    local w16 = la.randn(50, 16):to("bfloat16")
    local targets = la.randint(0, 50, 2, 5)
    local mask = la.ones(2, 5)
    local a = la.loss.sequence_logprobs_hidden(h, w16, targets, mask, {chunk_rows = 3})
    local b = la.loss.sequence_logprobs_hidden(h, w16:float(), targets, mask, {chunk_rows = 3})
    assert.is_true(max_diff(a, b) < 1e-4)
    a:sum():backward()
    local g = h.grad:clone()
    h.grad = nil
    b:sum():backward()
    assert.is_true(max_diff(g, h.grad) < 1e-4)
    local ids = la.tensor({{3, 7}, {49, 0}}, "int64")
    local e = F.embedding(ids, w16)
    assert.are.equal("float32", e:dtype())
    assert.are.equal(0, max_diff(e, F.embedding(ids, w16:float())))
  end)

  it("save and load as BF16/F16 safetensors, and widen or narrow on request", function()
    local path = os.tmpname()
    local w = la.randn(3, 4):to("bfloat16")
    local h = la.randn(2, 2):half()
    la.checkpoint.save(path, {w = w, h = h})
    local hdr = la.checkpoint.header(path)
    assert.are.equal("BF16", hdr.tensors.w.dtype)
    assert.are.equal("F16", hdr.tensors.h.dtype)
    local back = la.checkpoint.load(path)
    assert.are.equal(0, max_diff(back.w, w:float()))
    assert.are.equal(0, max_diff(back.h, h:float()))
    la.checkpoint.save(path, {w = w}, nil, {dtype = "f32"})
    assert.are.equal("F32", la.checkpoint.header(path).tensors.w.dtype)
    assert.are.equal(0, max_diff(la.checkpoint.load(path).w, w:float()))
    la.checkpoint.save(path, {w = w}, nil, {dtype = "f16"})
    assert.are.equal(0, max_diff(la.checkpoint.load(path).w, w:float():half():float()))
    -- read straight into a bfloat16 tensor
    la.checkpoint.save(path, {w = w})
    local into = la.zeros(3, 4, "bfloat16")
    la.checkpoint.read_into(path, {w = into})
    assert.are.equal(0, max_diff(into:float(), w:float()))
    os.remove(path)
  end)

  it("frozen_weights_to stores frozen matrices in 16 bits and keeps the model's function", function()
    la.manual_seed(13)
    local model = la.models.from_config{model_type = "llama", vocab_size = 64, hidden_size = 32,
      intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
      max_position_embeddings = 32, tie_word_embeddings = true, initializer_range = 0.2}
    local ids = la.tensor({{1, 2, 3, 4, 5}}, "int64")
    local before = la.no_grad(function() return model(ids) end)
    model:requires_grad(false):frozen_weights_to("bfloat16")
    assert.are.equal("bfloat16", model.model.embed_tokens.weight:dtype())
    assert.are.equal("float32", model.model.norm.weight:dtype())
    local after = la.no_grad(function() return model(ids) end)
    assert.is_true(max_diff(before, after) < 0.05)
    assert.is_true(max_diff(before, after) > 0)
    -- trainable matrices stay float32
    local m2 = la.models.from_config{model_type = "llama", vocab_size = 64, hidden_size = 32,
      intermediate_size = 48, num_hidden_layers = 1, num_attention_heads = 4, max_position_embeddings = 32}
    m2:frozen_weights_to("bfloat16")
    assert.are.equal("float32", m2.model.embed_tokens.weight:dtype())
    assert.has_error(function() model:frozen_weights_to("int8") end,
      "frozen_weights_to: dtype must be 'bfloat16', 'float16' or 'float32' (got int8)")
  end)
end)
