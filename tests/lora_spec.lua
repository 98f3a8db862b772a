-- LoRA: the fused op and its gradients, adapters in PEFT's folder format
-- against the float64 references of tests/fixtures/make_lora_fixtures.py,
-- freezing, merge/unmerge, disable, save/load round trips and errors.
local la = require "lualign"
local cjson = require "cjson"
local F = la.nn.functional

local HF = "tests/fixtures/hf"
local LORA = "tests/fixtures/lora"

local function ints(rows) return la.tensor(rows, "int64") end

local function tmpdir() local d = os.tmpname(); os.remove(d); return d end   -- save creates it

local function read_json(path)
  local f = assert(io.open(path))
  local v = cjson.decode(f:read("a"))
  f:close()
  return v
end

local function max_diff(a, b) return (a - b):abs():max():item() end

-- The largest difference between the logits and a reference's rows.
local function logits_error(logits, ref)
  local m = 0
  for b = 1, 2 do
    for t = 1, 7 do
      local row = ref.logits[b][t]
      if row ~= cjson.null then
        local got = logits[b][t]:totable()
        for i = 1, #row do m = math.max(m, math.abs(got[i] - row[i])) end
      end
    end
  end
  return m
end

local function logits_of(model, ref)
  return la.no_grad(function()
    return model(ints(ref.ids), {attention_mask = la.tensor(ref.attention_mask, "float32"),
                                 position_ids = ints(ref.position_ids)})
  end)
end

local function tiny(model_type)
  la.manual_seed(3)
  return la.models.from_config{model_type = model_type or "llama", vocab_size = 40, hidden_size = 16,
    intermediate_size = 24, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
    max_position_embeddings = 32, initializer_range = 0.3}
end

describe("F.lora_linear", function()
  it("equals the base product plus the scaled low-rank update, for every input shape", function()
    la.manual_seed(1)
    local x, w, b = la.randn(2, 3, 6), la.randn(5, 6), la.randn(5)
    local A, B = la.randn(4, 6), la.randn(5, 4)
    local y = F.lora_linear(x, w, b, A, B, 0.75)
    local want = F.linear(x, w, b) + x:matmul(A:t()):matmul(B:t()) * 0.75
    assert.is_true(max_diff(y, want) < 1e-5)
    local xd = la.randn(2, 3, 6)
    local y2 = F.lora_linear(x, w, nil, A, B, 2.0, xd)
    assert.is_true(max_diff(y2, F.linear(x, w) + xd:matmul(A:t()):matmul(B:t()) * 2.0) < 1e-5)
  end)

  it("has the gradients of its composition for x, W, b, A, B and the dropped input", function()
    la.manual_seed(2)
    local function check(fn, inputs) local ok, report = la.gradcheck(fn, inputs); assert(ok, report) end
    local x, w, b = la.randn(3, 6):requires_grad(), la.randn(5, 6):requires_grad(), la.randn(5):requires_grad()
    local A, B = la.randn(2, 6):requires_grad(), la.randn(5, 2):requires_grad()
    check(function(x_, w_, b_, a_, b2) return F.lora_linear(x_, w_, b_, a_, b2, 1.5) end, {x, w, b, A, B})
    local xd = la.randn(3, 6):requires_grad()
    check(function(x_, a_, b2, d_) return F.lora_linear(x_, w, b, a_, b2, 0.5, d_) end, {x, A, B, xd})
    -- a transposed (non-contiguous) input and a 3-d one
    local xt = la.randn(6, 4):requires_grad()
    check(function(x_, a_) return F.lora_linear(x_:t(), w, nil, a_, B, 1.0) end, {xt, A})
  end)

  it("takes a frozen bfloat16 or float16 weight and computes in float32", function()
    la.manual_seed(4)
    local x, w = la.randn(7, 8):requires_grad(), la.randn(6, 8)
    local A, B = la.randn(2, 8):requires_grad(), la.randn(6, 2):requires_grad()
    for _, dt in ipairs({"bfloat16", "float16"}) do
      local wh = w:to(dt)
      local y = F.lora_linear(x, wh, nil, A, B, 1.0)
      local want = F.lora_linear(x, wh:float(), nil, A, B, 1.0)
      assert.is_true(max_diff(y, want) < 1e-5, dt)
      y:sum():backward()
      local gx = x.grad:clone()
      x.grad = nil
      want:sum():backward()
      assert.is_true(max_diff(gx, x.grad) < 1e-5, dt)
      x.grad, A.grad, B.grad = nil, nil, nil
    end
  end)

  it("names the op and the shapes when they do not fit", function()
    local x, w = la.randn(3, 6), la.randn(5, 6)
    assert.has_error(function() F.lora_linear(x, w, nil, la.randn(2, 7), la.randn(5, 2), 1) end,
      "lora_linear: lora_A (2, 7) (r, in) and lora_B (5, 2) (out, r) do not fit weight (5, 6) (out, in)")
    assert.has_error(function() F.lora_linear(x, w, nil, la.randn(2, 6), la.randn(5, 2), 1, la.randn(3, 5)) end,
      "lora_linear: the dropped input has shape (3, 5), the input (3, 6)")
  end)
end)

describe("lora.apply", function()
  it("adapts the named layers, freezes the rest, and starts as the base model", function()
    local model = tiny()
    local ids = ints({{1, 2, 3, 4}})
    local before = la.no_grad(function() return model(ids) end)
    local _, names = la.lora.apply(model, {r = 4, alpha = 8, target_modules = {"q_proj", "v_proj"}})
    assert.are.equal(4, #names)
    assert.are.equal("model.layers.0.self_attn.q_proj", names[1])
    local trainable = {}
    for _, p in ipairs(model:named_parameters()) do
      if p[2]:needs_grad() then trainable[#trainable + 1] = p[1] end
    end
    assert.are.equal(8, #trainable)
    for _, n in ipairs(trainable) do assert.truthy(n:match("%.lora_[AB]%.weight$"), n) end
    assert.are.equal(2.0, model.model.layers[1].self_attn.q_proj.scaling)
    local after = la.no_grad(function() return model(ids) end)
    assert.are.equal(0, max_diff(before, after))
    -- the optimizer keeps state for the adapters only
    local opt = la.optim.AdamW(model:parameters(), {lr = 1e-2})
    assert.are.equal(8, #opt.params)
    model:loss(ids, ints({{2, 3, 4, 5}})):backward()
    for _, p in ipairs(model:named_parameters()) do
      if not p[1]:match("lora_") then assert.is_nil(p[2].grad, p[1]) end
    end
    assert.is_not_nil(model.model.layers[1].self_attn.q_proj.lora_B.weight.grad)
    opt:step()
    local tensors = opt:state_dict()
    local n = 0
    for _ in pairs(tensors) do n = n + 1 end
    assert.are.equal(16, n)
  end)

  it("selects modules as PEFT does: suffixes, regexes, all-linear, layers, exclusions, patterns", function()
    local function adapted(opts)
      local m = tiny()
      local _, names = la.lora.apply(m, opts)
      return names, m
    end
    assert.are.equal(2, #adapted{target_modules = {"self_attn.q_proj"}})
    assert.are.equal(2, #adapted{target_modules = ".*layers\\.1\\..*_proj", exclude_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"}})
    assert.are.equal(14, #adapted{target_modules = "all-linear"})
    local names = adapted{target_modules = {"q_proj", "down_proj"}, layers_to_transform = {1}}
    assert.are.same({"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}, names)
    local _, m = adapted{target_modules = {"q_proj", "v_proj"}, r = 4, alpha = 4, use_rslora = true,
                        rank_pattern = {["layers.0.self_attn.v_proj"] = 2}, alpha_pattern = {v_proj = 6}}
    local v0, v1, q0 = m.model.layers[1].self_attn.v_proj, m.model.layers[2].self_attn.v_proj, m.model.layers[1].self_attn.q_proj
    assert.are.equal(2, v0.r)
    assert.are.equal(4, v1.r)
    assert.is_true(math.abs(v0.scaling - 6 / math.sqrt(2)) < 1e-12)
    assert.is_true(math.abs(q0.scaling - 4 / 2) < 1e-12)
    -- GPT-2 models use PEFT's names for GPT2LMHeadModel and its default target c_attn
    local g = la.models.gpt{vocab_size = 20, n_positions = 8, n_embd = 8, n_layer = 2, n_head = 2}
    local _, gnames = la.lora.apply(g, {})
    assert.are.same({"h.0.attn.c_attn", "h.1.attn.c_attn"}, gnames)
  end)

  it("refuses what it cannot do, naming what is wrong", function()
    assert.has_error(function() la.lora.apply(tiny(), {target_modules = {"q_prj"}}) end,
      "lora.apply: target_modules q_prj match no linear layer of the model -- did you mean 'q_proj'? " ..
      "(its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj)")
    assert.has_error(function() la.lora.apply(tiny(), {target_modules = {"mlp"}}) end,
      "lora.apply: target module model.layers.0.mlp is a LlamaMLP; lualign adapts Linear layers only")
    assert.has_error(function() la.lora.apply(tiny(), {rank = 4}) end)
    local m = tiny()
    la.lora.apply(m, {})
    assert.has_error(function() la.lora.apply(m, {}) end, "lora.apply: the model already has LoRA adapters (on 4 modules)")
    assert.has_error(function() la.lora.apply(tiny(), {r = 0}) end)
  end)
end)

describe("PEFT adapter folders", function()
  for _, name in ipairs({"qwen2_lora", "llama_lora"}) do
    it(name .. ": loads as PEFT computes it, saves back, merges and disables", function()
      local dir = LORA .. "/" .. name
      local ref = read_json(dir .. "/reference.json")
      local cfg = read_json(dir .. "/adapter_config.json")
      local base_dir = cfg.base_model_name_or_path
      local base_ref = read_json(base_dir .. "/reference.json")
      local model = la.models.from_pretrained(base_dir):eval()   -- the config's dropout is for training
      la.lora.load(model, dir)
      local mods = {}
      for _, e in ipairs(model:named_modules()) do
        if getmetatable(e[2]) == la.lora.Linear then mods[#mods + 1] = e[1] end
      end
      table.sort(mods)
      assert.are.same(ref.modules, mods)
      local adapted = logits_of(model, ref)
      assert.is_true(logits_error(adapted, ref) < 1e-4, name .. " adapted logits")
      -- loaded as PEFT loads for inference: nothing requires gradients
      for _, p in ipairs(model:parameters()) do assert.is_false(p:needs_grad()) end

      -- disabled: the base model's logits
      do
        local off <close> = la.lora.disable(model)
        assert.is_true(logits_error(logits_of(model, ref), base_ref) < 1e-4, name .. " disabled")
      end
      assert.are.equal(0, max_diff(logits_of(model, ref), adapted))

      -- saved and read back into a fresh model: the same adapter, byte for byte in the tensors
      local out = tmpdir()
      la.lora.save(model, out)
      local a = la.checkpoint.load(dir .. "/adapter_model.safetensors")
      local b = la.checkpoint.load(out .. "/adapter_model.safetensors")
      for k, t in pairs(a) do assert.are.equal(0, max_diff(t, b[k]), k) end
      for k in pairs(b) do assert.is_not_nil(a[k], k) end
      local saved = read_json(out .. "/adapter_config.json")
      assert.are.equal("LORA", saved.peft_type)
      assert.are.equal(cfg.r, saved.r)
      assert.are.equal(cfg.lora_alpha, saved.lora_alpha)
      local fresh = la.models.from_pretrained(base_dir):eval()
      la.lora.load(fresh, out, {trainable = true})
      assert.are.equal(0, max_diff(logits_of(fresh, ref), adapted))
      assert.is_true(fresh.model.layers[1]:parameters()[1]:needs_grad() == false)

      -- merged: the same function as a plain model, and save_pretrained writes it
      la.lora.merge(model)
      assert.is_true(logits_error(logits_of(model, ref), ref) < 1e-4, name .. " merged")
      assert.has_error(function() la.lora.disable(model) end,
        "lora.disable: the adapters are merged into the weights; lora.unmerge(model) first")
      local merged_dir = tmpdir()
      model:save_pretrained(merged_dir)
      local plain = la.models.from_pretrained(merged_dir)
      assert.is_true(logits_error(logits_of(plain, ref), ref) < 1e-4, name .. " merged and reloaded")
      la.lora.unmerge(model)
      assert.is_true(max_diff(logits_of(model, ref), adapted) < 1e-5)
      os.execute("rm -rf '" .. out .. "' '" .. merged_dir .. "'")
    end)
  end

  it("reads a folder written by hand with PEFT's names, and checks it both ways", function()
    local dir = tmpdir()
    os.execute("mkdir -p '" .. dir .. "'")
    local f = assert(io.open(dir .. "/adapter_config.json", "w"))
    f:write([[{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["o_proj"],
      "bias": "none", "lora_dropout": 0.0, "use_dora": false, "task_type": "CAUSAL_LM",
      "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": null}]])
    f:close()
    la.manual_seed(5)
    local A0, B0 = la.randn(2, 16), la.randn(16, 2)
    local A1, B1 = la.randn(2, 16), la.randn(16, 2)
    la.checkpoint.save(dir .. "/adapter_model.safetensors", {
      ["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"] = A0,
      ["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"] = B0,
      ["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"] = A1,
      ["base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"] = B1,
    }, {format = "pt"})
    local model = tiny()
    local plain = tiny()
    la.lora.load(model, dir)
    local o = model.model.layers[2].self_attn.o_proj
    assert.are.equal(0, max_diff(o.lora_B.weight, B1))
    -- the same as folding 2 * B A into the base weights by hand
    la.no_grad(function()
      local w0, w1 = plain.model.layers[1].self_attn.o_proj.weight, plain.model.layers[2].self_attn.o_proj.weight
      w0:copy(w0 + B0:matmul(A0) * 2)
      w1:copy(w1 + B1:matmul(A1) * 2)
    end)
    local ids = ints({{5, 9, 1, 30, 2}})
    assert.is_true(la.no_grad(function() return max_diff(model(ids), plain(ids)) end) < 1e-5)
    -- a missing tensor, an extra one, an unsupported config key
    la.checkpoint.save(dir .. "/adapter_model.safetensors", {
      ["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"] = A0,
      ["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"] = B0,
      ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = B0,
    }, {format = "pt"})
    local ok, err = pcall(la.lora.load, tiny(), dir)
    assert.is_false(ok)
    assert.truthy(err:find("does not fit the model's adapters: missing base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight", 1, true), err)
    assert.truthy(err:find("unexpected base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", 1, true), err)
    f = assert(io.open(dir .. "/adapter_config.json", "w"))
    f:write([[{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["o_proj"], "use_dora": true}]])
    f:close()
    ok, err = pcall(la.lora.load, tiny(), dir)
    assert.is_false(ok)
    assert.truthy(err:find("use_dora = true is not implemented in lualign", 1, true), err)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("save_pretrained refuses a model whose adapters are not merged", function()
    local m = tiny()
    la.lora.apply(m, {})
    local ok, err = pcall(m.save_pretrained, m, tmpdir())
    assert.is_false(ok)
    assert.truthy(err:find("LoRA adapters that are not merged", 1, true), err)
  end)
end)

describe("training with adapters", function()
  it("learns with the base frozen in bfloat16, and the disabled model stays the base", function()
    local model = tiny("qwen2")
    local ids, targets = ints({{1, 5, 9, 13, 17, 21}}), ints({{5, 9, 13, 17, 21, 25}})
    local base_logits = la.no_grad(function() return model(ids) end)
    la.lora.apply(model, {r = 4, alpha = 8, target_modules = "all-linear", dropout = 0.1})
    model:frozen_weights_to("bfloat16")
    assert.are.equal("bfloat16", model.model.layers[1].mlp.down_proj.weight:dtype())
    assert.are.equal("bfloat16", model.model.embed_tokens.weight:dtype())
    assert.are.equal("float32", model.model.layers[1].mlp.down_proj.lora_A.weight:dtype())
    assert.are.equal("float32", model.model.norm.weight:dtype())
    local opt = la.optim.AdamW(model:parameters(), {lr = 3e-2, weight_decay = 0})
    local first, last
    for _ = 1, 40 do
      local loss = model:loss(ids, targets)
      opt:zero_grad()
      loss:backward()
      opt:step()
      first = first or loss:item()
      last = loss:item()
    end
    assert.is_true(last < first * 0.4, string.format("loss %.3f -> %.3f", first, last))
    model:eval()
    local off <close> = la.lora.disable(model)
    -- the base in bfloat16: within bfloat16's rounding of the float32 base
    assert.is_true(la.no_grad(function() return max_diff(model(ids), base_logits) end) < 0.05)
  end)
end)
