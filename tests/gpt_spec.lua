local la = require "lualign"
local gpt = la.models.gpt

local function tiny(overrides)
  local cfg = {vocab_size = 50, n_positions = 32, n_embd = 16, n_layer = 2, n_head = 2}
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return gpt(cfg)
end

local function ids(rows) return la.tensor(rows, "int64") end

describe("GPT model", function()
  before_each(function() la.manual_seed(31) end)

  it("validates its config", function()
    assert.has_error(function() gpt{vocab_size = 10, n_positions = 8, n_embd = 8, n_layer = 1} end,
      "gpt: config key 'n_head' (attention heads per block) is required")
    assert.has_error(function() tiny({n_heads = 2}) end)
    assert.has_error(function() tiny({n_embd = 15}) end, "gpt: n_embd (15) must be a multiple of n_head (2)")
    assert.has_error(function() tiny({norm = "batchnorm"}) end)
    local ok, err = pcall(function() tiny({n_heads = 2}) end)
    assert.is_truthy(tostring(err):find("gpt_spec.lua:%d+: gpt: unknown config key 'n_heads'"))
  end)

  it("has GPT-2's parameter count and names, with tied or untied heads", function()
    local V, P, d, L = 50, 32, 16, 2
    local per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    local expected = V * d + P * d + L * per_block + 2 * d
    assert.are.equal(expected, tiny():num_parameters())
    assert.are.equal(expected + V * d, tiny({tie_word_embeddings = false}):num_parameters())
    local names = {}
    for _, p in ipairs(tiny():named_parameters()) do names[p[1]] = true end
    for _, n in ipairs({"wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.1.attn.c_attn.weight",
                        "h.1.mlp.c_proj.bias", "ln_f.bias"}) do
      assert.is_true(names[n], n)
    end
    -- RMSNorm has no bias, and bias = false drops the linear biases
    local lean = V * d + P * d + L * (d + 3 * d * d + d * d + d + 4 * d * d + 4 * d * d) + d
    assert.are.equal(lean, tiny({norm = "rmsnorm", bias = false}):num_parameters())
  end)

  it("initialises as GPT-2: small weights, smaller residual projections", function()
    local m = gpt{vocab_size = 100, n_positions = 64, n_embd = 64, n_layer = 8, n_head = 4}
    local function std(t) return math.sqrt((t * t):mean():item()) end
    assert.is_true(math.abs(std(m.wte.weight) - 0.02) < 0.002)
    assert.is_true(math.abs(std(m.h[1].mlp.c_proj.weight) - 0.02 / math.sqrt(16)) < 0.001)
    assert.are.equal(1, m.h[1].ln_1.weight:mean():item())
  end)

  it("maps ids to logits; padding and position ids change nothing for real tokens", function()
    local m = tiny()
    local plain = m(ids({{5, 6, 7}}))
    assert.are.same({1, 3, 50}, plain:shape())
    -- the same sequence left-padded by two, with its positions and a key mask
    local padded = m(ids({{0, 0, 5, 6, 7}}), {
      attention_mask = la.tensor({{0, 0, 1, 1, 1}}, "float32"),
      position_ids = ids({{0, 0, 0, 1, 2}}),
    })
    assert.is_true(padded:narrow(2, 3, 3):allclose(plain, 1e-5, 1e-5))
  end)

  it("keeps packed sequences apart with segment ids", function()
    local m = tiny()
    local a, b = m(ids({{3, 4, 5}})), m(ids({{9, 8}}))
    local packed = m(ids({{3, 4, 5, 9, 8}}), {segments = ids({{0, 0, 0, 1, 1}}),
                                             position_ids = ids({{0, 1, 2, 0, 1}})})
    assert.is_true(packed:narrow(2, 1, 3):allclose(a, 1e-5, 1e-5))
    assert.is_true(packed:narrow(2, 4, 2):allclose(b, 1e-5, 1e-5))
  end)

  it("has value and reward heads on the same trunk", function()
    local m = tiny({value_head = true, reward_head = true})
    local h = m:hidden(ids({{1, 2, 3, 0}, {4, 5, 0, 0}}))
    assert.are.same({2, 4}, m:values(h):shape())
    local mask = la.tensor({{1, 1, 1, 0}, {1, 1, 0, 0}}, "float32")
    local r = m:rewards(h, mask)
    assert.are.same({2}, r:shape())
    local all = m.reward_head(h):squeeze(-1)
    assert.is_true(math.abs(r[1] - all[1][3]) < 1e-6 and math.abs(r[2] - all[2][2]) < 1e-6)
    r:sum():backward()
    assert.is_not_nil(m.reward_head.weight.grad)
    assert.has_error(function() tiny():values(h) end)
  end)

  it("imports Hugging Face GPT-2 names, transposing Conv1D weights", function()
    local src = tiny()
    local hf = {}
    for name, t in pairs(src:state_dict()) do
      local suffix = name:match("^h%.%d+%.(.*)$")
      local conv = suffix == "attn.c_attn.weight" or suffix == "attn.c_proj.weight" or
                   suffix == "mlp.c_fc.weight" or suffix == "mlp.c_proj.weight"
      hf["transformer." .. name] = conv and t:t():contiguous() or t
    end
    hf["transformer.h.0.attn.bias"] = la.ones(1, 1, 32, 32)
    hf["lm_head.weight"] = src.wte.weight
    local mapped, dropped = gpt.from_hf_state_dict(hf, src.config)
    assert.are.same({"lm_head.weight", "transformer.h.0.attn.bias"}, dropped)
    local dst = tiny()
    dst:load_state_dict(mapped)
    local x = ids({{1, 2, 3, 4}})
    assert.is_true(dst(x):allclose(src(x), 1e-6, 1e-6))
    -- the same through a Hugging Face directory: config.json + model.safetensors
    local dir = os.tmpname()
    os.remove(dir)
    assert(require("lualign.sys").mkdir(dir))
    local f = assert(io.open(dir .. "/config.json", "w"))
    f:write('{"model_type": "gpt2", "vocab_size": 50, "n_positions": 32, "n_embd": 16, ' ..
            '"n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-05, "n_inner": null}')
    f:close()
    la.checkpoint.save(dir .. "/model.safetensors", hf)
    local loaded = gpt.from_pretrained(dir)
    os.execute("rm -rf " .. dir)
    assert.is_true(loaded(x):allclose(src(x), 1e-6, 1e-6))
  end)
end)

describe("generation", function()
  before_each(function() la.manual_seed(32) end)

  it("gives the same greedy tokens with and without the KV cache", function()
    local m = tiny()
    local a = m:generate({{1, 2, 3}}, {max_new_tokens = 20, temperature = 0})
    local b = m:generate({{1, 2, 3}}, {max_new_tokens = 20, temperature = 0, use_cache = false})
    assert.are.same(b.sequences, a.sequences)
    assert.are.equal(20, #a.sequences[1])
  end)

  it("decodes a batch of prompts of different lengths as it would one by one", function()
    local m = tiny()
    local prompts = {{1, 2, 3, 4, 5}, {7}, {9, 9}}
    local batch = m:generate(prompts, {max_new_tokens = 8, temperature = 0})
    for i, p in ipairs(prompts) do
      local single = m:generate({p}, {max_new_tokens = 8, temperature = 0})
      assert.are.same(single.sequences[1], batch.sequences[i])
    end
  end)

  it("returns the log-probabilities of the chosen tokens", function()
    local m = tiny()
    local out = m:generate({{4, 5}}, {max_new_tokens = 5, temperature = 1, return_logprobs = true})
    local full = {4, 5}
    for _, t in ipairs(out.sequences[1]) do full[#full + 1] = t end
    local lp = m(ids({full})):log_softmax(-1)
    for i, t in ipairs(out.sequences[1]) do
      local expected = lp[1][2 + i - 1][t + 1]
      assert.is_true(math.abs(out.logprobs[1][i] - expected) < 1e-4, i)
    end
  end)

  it("stops a row at EOS and pads it", function()
    local m = tiny()
    local free = m:generate({{1, 2}, {3}}, {max_new_tokens = 6, temperature = 0})
    local eos = free.sequences[1][3]           -- a token row 1 produces
    local first = 1
    while free.sequences[1][first] ~= eos do first = first + 1 end
    local out = m:generate({{1, 2}, {3}}, {max_new_tokens = 6, temperature = 0, eos_id = eos, pad_id = 0})
    assert.is_true(out.finished[1])
    assert.are.equal(first, out.lengths[1])
    assert.are.equal(eos, out.sequences[1][first])
    assert.are.equal(first, #out.sequences[1])
    if out.lengths[1] < 6 then assert.are.equal(0, out.tokens[1][out.lengths[1] + 1]) end
  end)

  it("returns prompt and response as one left-padded batch that scores what was sampled", function()
    local m = tiny()
    local free = m:generate({{1, 2, 3}, {4}}, {max_new_tokens = 6, temperature = 0})
    local eos = free.sequences[2][2]            -- row 2 stops after two tokens
    local out = m:generate({{1, 2, 3}, {4}}, {max_new_tokens = 6, temperature = 1, eos_id = eos,
                                             return_logprobs = true})
    local b, P, N = out.batch, out.prompt_length, out.tokens:size(2)
    assert.are.same({P, N}, {b.prompt_length, b.response_length})
    assert.are.same({2, P + N}, b.ids:shape())
    assert.are.same({2, N}, b.response_mask:shape())
    for r = 1, 2 do
      local n_prompt = r == 1 and 3 or 1
      for t = 1, P + N do
        local real = (t > P - n_prompt and t <= P) or (t > P and t - P <= out.lengths[r])
        assert.are.equal(real and 1 or 0, b.attention_mask[r][t], r .. "," .. t)
        if t > P and real then assert.are.equal(out.sequences[r][t - P], b.ids[r][t]) end
      end
      -- positions count real tokens from 0 at the prompt's first one
      assert.are.equal(0, b.position_ids[r][P - n_prompt + 1])
      assert.are.equal(n_prompt, b.position_ids[r][P + 1])
      for t = 1, N do assert.are.equal(t <= out.lengths[r] and 1 or 0, b.response_mask[r][t]) end
    end
    -- the response's log-prob from one forward pass over the batch is the sum of
    -- the log-probs the sampler reported, token by token
    local lp = m:sequence_logprobs(b.ids, b.targets, b.target_mask,
      {attention_mask = b.attention_mask, position_ids = b.position_ids})
    for r = 1, 2 do
      local sum = 0
      for t = 1, out.lengths[r] do sum = sum + out.logprobs[r][t] end
      assert.is_true(math.abs(lp[r] - sum) < 1e-4, r)
    end
    assert.are.equal(out.lengths[2], b.target_mask[2]:sum():item())
  end)

  it("samples reproducibly from the seed; top_k = 1 is greedy", function()
    local m = tiny()
    la.manual_seed(5)
    local a = m:generate({{1}}, {max_new_tokens = 10, temperature = 1.5, top_p = 0.9})
    la.manual_seed(5)
    local b = m:generate({{1}}, {max_new_tokens = 10, temperature = 1.5, top_p = 0.9})
    assert.are.same(a.sequences, b.sequences)
    local greedy = m:generate({{1}}, {max_new_tokens = 10, temperature = 0})
    local k1 = m:generate({{1}}, {max_new_tokens = 10, temperature = 2, top_k = 1})
    assert.are.same(greedy.sequences, k1.sequences)
  end)

  it("refuses prompts that do not fit the context", function()
    assert.has_error(function() tiny():generate({{1, 2, 3}}, {max_new_tokens = 30}) end,
      "generate: prompt (3) + max_new_tokens (30) exceeds the model's 32 positions")
  end)
end)

describe("learning", function()
  -- A byte-level model memorises one sentence.  If the mean next-token loss
  -- over N positions is below ln(2) / N, every position's loss is below ln 2,
  -- so every correct byte has probability above 1/2 and is the argmax: greedy
  -- decoding from the first byte must then reproduce the whole text.
  it("memorises a short text and reproduces it greedily", function()
    la.manual_seed(7)
    local text = "the quick brown fox jumps over the lazy dog, then naps."
    local bytes = {text:byte(1, -1)}
    local N = #bytes - 1
    local x, y = {}, {}
    for i = 1, N do x[i], y[i] = bytes[i], bytes[i + 1] end
    local xs, ys = ids({x}), ids({y})
    local m = gpt{vocab_size = 256, n_positions = 64, n_embd = 64, n_layer = 2, n_head = 4}
    local opt = la.optim.AdamW(m, {lr = 3e-3, weight_decay = 0})
    local threshold, loss = math.log(2) / N, math.huge
    for _ = 1, 600 do
      local l = m:loss(xs, ys)
      opt:zero_grad()
      l:backward()
      opt:step()
      loss = l:item()
      if loss < threshold then break end
    end
    assert.is_true(loss < threshold, string.format("loss %.5f did not reach %.5f", loss, threshold))
    local out = m:generate({{bytes[1]}}, {max_new_tokens = N, temperature = 0})
    assert.are.equal(text, string.char(bytes[1], table.unpack(out.sequences[1])))
  end)
end)
