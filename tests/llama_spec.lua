-- The Llama-family decoders against the float64 references of
-- tests/fixtures/make_llama_fixtures.py, their kernels' gradients, and
-- Hugging Face folders in and out.
local la = require "lualign"
local cjson = require "cjson"
local F = la.nn.functional

local FIXTURES = "tests/fixtures/hf"
local VARIANTS = {"llama", "llama3", "llama_linear", "mistral", "qwen2", "qwen3"}

local function reference(name)
  local f = assert(io.open(FIXTURES .. "/" .. name .. "/reference.json"))
  local r = cjson.decode(f:read("a"))
  f:close()
  return r
end

local function ints(rows) return la.tensor(rows, "int64") end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  return d
end

local function max_abs_diff(t, list)
  local got = t:reshape(-1):totable()
  assert.are.equal(#list, #got)
  local m = 0
  for i = 1, #list do m = math.max(m, math.abs(got[i] - list[i])) end
  return m
end

local function max_abs(list)
  local m = 0
  for _, v in ipairs(list) do m = math.max(m, math.abs(v)) end
  return m
end

local function check(fn, inputs)
  local ok, report = la.gradcheck(fn, inputs)
  assert(ok, report)
end

describe("Llama-family decoders against the float64 reference", function()
  for _, name in ipairs(VARIANTS) do
    it(name .. ": logits, loss, gradients and greedy decoding", function()
      local r = reference(name)
      local model = la.models.from_pretrained(FIXTURES .. "/" .. name)
      local opts = {attention_mask = la.tensor(r.attention_mask, "float32"), position_ids = ints(r.position_ids)}
      local logits = model(ints(r.ids), opts)
      for b = 1, 2 do
        for t = 1, 7 do
          if r.logits[b][t] ~= cjson.null then
            assert.is_true(max_abs_diff(logits[b][t], r.logits[b][t]) < 1e-4, name .. " row " .. b .. " pos " .. t)
          end
        end
      end
      local loss = model:loss(ints(r.ids), ints(r.targets), opts)
      assert.is_true(math.abs(loss:item() - r.loss) < 1e-5 * math.max(1, r.loss), name .. " loss")
      loss:backward()
      local params = {}
      for _, p in ipairs(model:named_parameters()) do params[p[1]] = p[2] end
      local n = 0
      for pname, g in pairs(r.grads) do
        assert.is_truthy(params[pname], pname)
        assert.is_true(max_abs_diff(params[pname].grad, g) < 1e-5 + 1e-4 * max_abs(g), name .. " grad " .. pname)
        n = n + 1
      end
      assert.is_true(n >= 3)
      -- greedy: both prompts in one left-padded batch, with and without the cache
      for _, use_cache in ipairs({true, false}) do
        local out = model:generate({r.greedy_prompt, r.greedy_prompt2},
          {max_new_tokens = 8, temperature = 0, eos_id = {}, use_cache = use_cache})
        assert.are.same(r.greedy, out.sequences[1])
        assert.are.same(r.greedy2, out.sequences[2])
      end
    end)
  end

  it("adds freshly initialised heads to a loaded model when asked", function()
    local m = la.models.from_pretrained(FIXTURES .. "/qwen2", {value_head = true, reward_head = true})
    local w = m.value_head.weight
    assert.is_true(w:all_finite() and w:abs():max():item() > 0 and w:abs():max():item() < 0.2)
    assert.are.equal(0, m.reward_head.bias:abs():max():item())
    local plain = la.models.from_pretrained(FIXTURES .. "/qwen2")
    local ids = ints({{1, 2, 3}})
    assert.are.equal(0, (m(ids) - plain(ids)):abs():max():item())
  end)

  it("hold norm weights away from 1 and non-zero biases, so a wrong convention shows", function()
    local model = la.models.from_pretrained(FIXTURES .. "/qwen2")
    local norm = model.model.layers[1].input_layernorm.weight
    assert.is_true((norm - 1):abs():max():item() > 0.3)
    assert.is_true(model.model.layers[1].self_attn.q_proj.bias:abs():max():item() > 0.1)
    assert.is_nil(model.model.layers[1].self_attn.o_proj.bias)
  end)
end)

describe("Hugging Face folders", function()
  for _, name in ipairs(VARIANTS) do
    it(name .. ": load, save, load gives identical tensors and logits", function()
      local model = la.models.from_pretrained(FIXTURES .. "/" .. name)
      local dtype = ({llama3 = "bf16", qwen3 = "f16"})[name] or "f32"
      local dir = tmpdir()
      model:save_pretrained(dir, {dtype = dtype, max_shard_size = name == "llama" and 4000 or nil})
      local again = la.models.from_pretrained(dir)
      local a, b = model:state_dict(), again:state_dict()
      for k, t in pairs(a) do assert.are.equal(0, (t - b[k]):abs():max():item(), k) end
      local ids = ints({{1, 2, 3, 4, 5}})
      assert.are.equal(0, (model(ids) - again(ids)):abs():max():item())
      -- the same config, plus what the file now says about itself
      local arch = {llama = "LlamaForCausalLM", llama3 = "LlamaForCausalLM", llama_linear = "LlamaForCausalLM",
                    mistral = "MistralForCausalLM", qwen2 = "Qwen2ForCausalLM", qwen3 = "Qwen3ForCausalLM"}
      assert.are.same({arch[name]}, again.config.architectures)
      assert.are.equal(({f32 = "float32", bf16 = "bfloat16", f16 = "float16"})[dtype], again.config.torch_dtype)
      again.config.architectures, again.config.torch_dtype = model.config.architectures, model.config.torch_dtype
      assert.are.same(model.config, again.config)
      assert.are.same(model.generation_config, again.generation_config)
      if name == "llama" then   -- sharded, with an index naming every tensor
        local index = cjson.decode(assert(io.open(dir .. "/model.safetensors.index.json")):read("a"))
        local files, n = {}, 0
        for tname, file in pairs(index.weight_map) do files[file] = true; n = n + 1; assert.is_truthy(a[tname], tname) end
        assert.is_true(next(files, next(files)) ~= nil)
        assert.are.equal(n, #model:named_parameters())
      end
      os.execute("rm -rf " .. dir)
    end)
  end

  it("writes bf16 that matches PyTorch's file byte for byte, and rounds to nearest even", function()
    local model = la.models.from_pretrained(FIXTURES .. "/llama3")
    local dir = tmpdir()
    model:save_pretrained(dir, {dtype = "bf16"})
    local ours = la.checkpoint.header(dir .. "/model.safetensors")
    assert.are.equal("BF16", ours.tensors["model.norm.weight"].dtype)
    local function bytes(path)
      local f = assert(io.open(path, "rb"))
      local s = f:read("a")
      f:close()
      local n = string.unpack("<I8", s)
      return s:sub(9 + n)
    end
    -- the same tensors in the same order (sorted by name, all two-byte): the same data
    assert.are.equal(bytes(FIXTURES .. "/llama3/model.safetensors"), bytes(dir .. "/model.safetensors"))
    os.execute("rm -rf " .. dir)
    local path = os.tmpname()
    -- 1 + 2^-8 is half way between two bfloat16 values: to even (1); 1 + 3 * 2^-8 up to 1 + 2^-6
    local x = la.tensor({1 + 2 ^ -8, 1 + 3 * 2 ^ -8, -2.5, 3.0e38 * 1.2, 65504, 65520, 2 ^ -25, 3 * 2 ^ -25})
    la.checkpoint.save(path, {x = x}, nil, {dtype = "bf16"})
    local bf = la.checkpoint.load(path).x:totable()
    assert.are.same({1, 1 + 2 ^ -6, -2.5}, {bf[1], bf[2], bf[3]})
    la.checkpoint.save(path, {x = x}, nil, {dtype = "f16"})
    local h = la.checkpoint.load(path).x:totable()
    -- exact in half; 3e38 and 65520 (half way above the largest half, odd) to inf;
    -- 2^-25 half way between 0 and the smallest subnormal: to even (0); 3 * 2^-25 up to 2^-23
    assert.are.same({1 + 2 ^ -8, 1 + 3 * 2 ^ -8, -2.5, math.huge, 65504, math.huge, 0, 2 ^ -23},
      {h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]})
    os.remove(path)
    assert.has_error(function() la.checkpoint.save(path, {x = x}, nil, {dtype = "fp8"}) end,
      "checkpoint.save: dtype 'fp8' is not one lualign writes (f32, bf16, f16)")
  end)

  it("refuses config keys it does not implement, naming key and value", function()
    local base = {model_type = "llama", vocab_size = 16, hidden_size = 8, intermediate_size = 8,
                  num_hidden_layers = 1, num_attention_heads = 2}
    local function with(k, v)
      local c = {}
      for kk, vv in pairs(base) do c[kk] = vv end
      c[k] = v
      return function() la.models.from_config(c) end
    end
    assert.has_error(with("hidden_act", "gelu"),
      'config: hidden_act = "gelu" is not supported by lualign (the MLP is SwiGLU with silu)')
    assert.has_error(with("rope_scaling", {rope_type = "yarn", factor = 4}),
      "config: rope_scaling = { \"factor\": 4.0, \"rope_type\": \"yarn\" } is not supported by lualign "
      .. "(rope_type 'yarn'; lualign implements default, linear and llama3)")
    assert.has_error(with("attention_dropout", 0.1),
      "config: attention_dropout = 0.1 is not supported by lualign (dropout on attention probabilities is not implemented)")
    assert.has_error(with("rope_interleaved", true))
    local ok, err = pcall(with("num_kv_heads", 1))
    assert.is_false(ok)
    assert.is_truthy(err:find("config: key 'num_kv_heads' (= 1) is not one lualign knows for model_type llama", 1, true), err)
    assert.has_error(with("sliding_window", 4))   -- a Mistral key; Llama has none
    assert.has_error(with("num_key_value_heads", 3),
      "config: num_attention_heads (2) must be a multiple of num_key_value_heads (3)")
    local q = {}
    for k, v in pairs(base) do q[k] = v end
    q.model_type, q.use_sliding_window = "qwen2", true
    assert.has_error(function() la.models.from_config(q) end,
      "config: use_sliding_window = true is not supported by lualign (Qwen's per-layer sliding window is not implemented)")
    q.model_type = "gemma"
    assert.has_error(function() la.models.from_config(q) end,
      'config: model_type "gemma" is not one lualign builds (gpt2, llama, mistral, qwen2, qwen3)')
  end)

  it("saves the tokenizer's files with the model", function()
    local src, dst = tmpdir(), tmpdir()
    os.execute("cp -r " .. FIXTURES .. "/qwen2 " .. src)
    local f = assert(io.open(src .. "/tokenizer_config.json", "w"))
    f:write('{"model_max_length": 64}')
    f:close()
    local model = la.models.from_pretrained(src)
    model:save_pretrained(dst, {tokenizer = la.tokenizer.byte()})
    local copied = assert(io.open(dst .. "/tokenizer_config.json")):read("a")
    assert.are.equal('{"model_max_length": 64}', copied)
    local tok = la.tokenizer.load(dst .. "/tokenizer.json")   -- written by tok:save(dir)
    assert.are.same({72, 105}, tok:encode("Hi"))
    os.execute("rm -rf " .. src .. " " .. dst)
  end)

  it("accepts the keys of the small models' config.json files on the Hub", function()
    local hf = require "lualign.models.hf"
    local configs = {
      -- SmolLM2-135M
      [[{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 0,
        "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
        "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false,
        "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
        "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152}]],
      -- Qwen2.5-0.5B-Instruct
      [[{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
        "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}]],
      -- Qwen3-0.6B
      [[{"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
        "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
        "vocab_size": 151936}]],
      -- Llama-3.2-1B
      [[{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
        "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}]],
      -- TinyLlama-1.1B-Chat-v1.0
      [[{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
        "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22,
        "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "transformers_version": "4.35.0", "use_cache": true, "vocab_size": 32000}]],
      -- Mistral-7B-v0.1
      [[{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000}]],
    }
    local head_dims = {64, 64, 128, 64, 64, 128}
    for i, text in ipairs(configs) do
      local cfg = hf.check_config(cjson.decode(text))
      assert.are.equal(head_dims[i], cfg.head_dim)
      assert.are.equal("integer", math.type(cfg.num_hidden_layers))
      assert.are.equal("float", math.type(cfg.rope_theta))
    end
  end)

  it("tells a folder of pytorch_model.bin how to convert it, and names missing tensors", function()
    local dir = tmpdir()
    os.execute("mkdir -p " .. dir .. " && cp " .. FIXTURES .. "/qwen2/config.json " .. dir .. " && touch " .. dir .. "/pytorch_model.bin")
    local ok, err = pcall(la.models.from_pretrained, dir)
    assert.is_false(ok)
    assert.is_truthy(err:find("holds pytorch_model.bin (PyTorch pickle) weights; lualign reads safetensors", 1, true), err)
    local model = la.models.from_pretrained(FIXTURES .. "/qwen2")
    local sd = model:state_dict()
    sd["model.norm.weight"] = nil
    la.checkpoint.save(dir .. "/model.safetensors", sd)
    ok, err = pcall(la.models.from_pretrained, dir)
    assert.is_truthy(err:find("the weights lack 1 tensor(s) the model needs: model.norm.weight", 1, true), err)
    os.execute("rm -rf " .. dir)
  end)

  it("gpt2 folders load as a GPT, and save back", function()
    la.manual_seed(5)
    local g = la.models.from_config{model_type = "gpt2", vocab_size = 30, n_positions = 16, n_embd = 8,
                                    n_layer = 1, n_head = 2}
    assert.are.equal("GPT", getmetatable(g).__name)
    local dir = tmpdir()
    g:save_pretrained(dir)
    local h = la.checkpoint.header(dir .. "/model.safetensors")
    assert.are.same({8, 24}, h.tensors["transformer.h.0.attn.c_attn.weight"].shape)   -- Conv1D: (in, out)
    local again = la.models.from_pretrained(dir)
    local ids = ints({{1, 2, 3}})
    assert.are.equal(0, (g(ids) - again(ids)):abs():max():item())
    os.execute("rm -rf " .. dir)
  end)
end)

describe("Llama-family kernels", function()
  before_each(function() la.manual_seed(7) end)

  it("rotary embedding: gradient, and a rotation that keeps norms", function()
    local tab = F.rope_table({1, 0.3, 0.01}, 10)
    local pos = ints({{0, 3, 9}, {2, 2, 5}})
    check(function(x) return F.rope_(x * 1, pos, tab) end, {la.randn(2, 3, 2, 6):requires_grad()})
    local x = la.randn(2, 3, 2, 6)
    local y = F.rope_(x:clone(), pos, tab)
    assert.is_true(((x * x):sum(-1) - (y * y):sum(-1)):abs():max():item() < 1e-5)
    -- position 0 is the identity
    assert.is_true((y[1][1] - x[1][1]):abs():max():item() < 1e-7)
    assert.has_error(function() F.rope_(la.randn(1, 2, 1, 6), ints({{0, 10}}), tab) end,
      "rope: position 10 (element 2 of the positions) is outside the table's 10 positions")
    assert.has_error(function() F.rope_(la.randn(1, 2, 1, 6):requires_grad(), ints({{0, 1}}), tab) end)
  end)

  it("SwiGLU and SwiGLU into a projection: values and gradients", function()
    local g, u = la.randn(3, 5), la.randn(3, 5)
    assert.is_true((F.swiglu(g, u) - g:silu() * u):abs():max():item() < 1e-6)
    check(function(a, b) return F.swiglu(a, b) end, {la.randn(3, 5):requires_grad(), la.randn(3, 5):requires_grad()})
    -- into a projection, with and without a bias
    local w, b = la.randn(4, 5), la.randn(4)
    assert.is_true((F.swiglu_linear(g, u, w, b) - F.linear(g:silu() * u, w, b)):abs():max():item() < 1e-5)
    check(function(a, c, d, e) return F.swiglu_linear(a, c, d, e) end,
      {la.randn(2, 3, 5):requires_grad(), la.randn(2, 3, 5):requires_grad(), la.randn(4, 5):requires_grad(),
       la.randn(4):requires_grad()})
    check(function(a, c, d) return F.swiglu_linear(a, c, d) end,
      {la.randn(3, 5):requires_grad(), la.randn(3, 5):requires_grad(), la.randn(4, 5):requires_grad()})
    assert.has_error(function() F.swiglu(la.randn(2), la.randn(3)) end,
      "swiglu: gate of shape (2,) and up of shape (3,) must have the same shape")
  end)

  it("grouped-query attention equals attention over repeated heads, gradients included", function()
    local q = la.randn(2, 4, 5, 3):requires_grad()
    local k, v = la.randn(2, 2, 5, 3):requires_grad(), la.randn(2, 2, 5, 3):requires_grad()
    local function repeated(t) return t:unsqueeze(3):expand(2, 2, 2, 5, 3):reshape(2, 4, 5, 3) end
    local mask = la.tensor({{1, 1, 1, 1, 1}, {0, 1, 1, 1, 1}}, "float32")
    local opts = {causal = true, key_mask = mask, window = 3}
    local a = F.attention(q, k, v, opts)
    local b = F.attention(q, repeated(k), repeated(v), opts)
    assert.is_true((a - b):abs():max():item() < 1e-6)
    check(function(x, y, z) return F.attention(x, y, z, opts) end, {q, k, v})
    check(function(x, y, z) return F.attention(x, y, z, {causal = true}) end,
      {la.randn(1, 3, 4, 2):requires_grad(), la.randn(1, 1, 4, 2):requires_grad(), la.randn(1, 1, 4, 2):requires_grad()})
    -- the window: query 4 (0-based) sees keys 2, 3, 4 only
    local vv = la.zeros(1, 1, 5, 1)
    vv[1][1][1][1] = 100
    local y = F.attention(la.zeros(1, 1, 5, 1), la.zeros(1, 1, 5, 1), vv, {causal = true, window = 3})
    assert.are.equal(0, y[1][1][5][1])
    assert.is_true(y[1][1][3][1] > 30)
  end)
end)

describe("Llama-family models in use", function()
  local function tiny(extra)
    local cfg = {model_type = "llama", vocab_size = 260, hidden_size = 16, intermediate_size = 24,
                 num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
                 max_position_embeddings = 64, tie_word_embeddings = false}
    for k, v in pairs(extra or {}) do cfg[k] = v end
    return la.models.from_config(cfg)
  end
  before_each(function() la.manual_seed(3) end)

  it("initialises as Hugging Face does and prints its shape", function()
    local m = tiny({initializer_range = 0.05})
    local w = m.model.layers[1].mlp.up_proj.weight
    assert.is_true(math.abs(math.sqrt((w * w):mean():item()) - 0.05) < 0.01)
    assert.are.equal(1, m.model.norm.weight:mean():item())
    assert.is_truthy(tostring(m):find("LlamaForCausalLM(llama: layers=2, width=16, heads=4/2 kv", 1, true))
  end)

  it("has value and reward heads, and logits-free log-probs with an untied head", function()
    local m = tiny({value_head = true, reward_head = true})
    local ids = ints({{5, 6, 7, 8}, {9, 10, 0, 0}})
    local mask = la.tensor({{1, 1, 1, 1}, {1, 1, 0, 0}}, "float32")
    local h = m:hidden(ids, {attention_mask = mask})
    assert.are.same({2, 4}, m:values(h):shape())
    assert.are.same({2}, m:rewards(h, mask):shape())
    local targets = ints({{6, 7, 8, 1}, {10, 3, 0, 0}})
    local fused = m:sequence_logprobs(ids, targets, mask, {attention_mask = mask})
    local composed = la.loss.sequence_logprobs(m(ids, {attention_mask = mask}), targets, mask)
    assert.is_true((fused - composed):abs():max():item() < 1e-4)
    fused:sum():backward()
    assert.is_truthy(m.lm_head.weight.grad)
  end)

  it("applies the repetition penalty as Hugging Face does", function()
    local m = tiny()
    local prompt = {5, 6, 7}
    local logits = la.no_grad(function() return m(ints({prompt}))[1][3] end):totable()
    for _, id in ipairs(prompt) do
      local x = logits[id + 1]
      logits[id + 1] = x > 0 and x / 3 or x * 3
    end
    local best, best_id = -math.huge, nil
    for i, x in ipairs(logits) do if x > best then best, best_id = x, i - 1 end end
    local out = m:generate({prompt}, {max_new_tokens = 1, temperature = 0, repetition_penalty = 3})
    assert.are.equal(best_id, out.sequences[1][1])
    assert.has_error(function() m:generate({prompt}, {repetition_penalty = 0}) end,
      "generate: repetition_penalty must be a positive number (got 0)")
  end)

  it("stops on any EOS id of a list, and on stop strings", function()
    local m = tiny()
    local tok = la.tokenizer.byte()
    local free = m:generate({{72, 105}}, {max_new_tokens = 12, temperature = 0, eos_id = {}}).sequences[1]
    -- the fourth token as an EOS id among others: generation ends there
    local out = m:generate({{72, 105}}, {max_new_tokens = 12, temperature = 0, eos_id = {259, free[4]}})
    local stop_at = 0
    for i, id in ipairs(free) do if id == free[4] then stop_at = i break end end
    assert.are.equal(stop_at, #out.sequences[1])
    assert.is_true(out.finished[1])
    -- a stop string made of the text of tokens 5 and 6 ends the row at token 6
    local text = tok:decode({free[5], free[6]})
    local s = m:generate({{72, 105}}, {max_new_tokens = 12, temperature = 0, eos_id = {},
                                       stop_strings = {text}, tokenizer = tok})
    local full = tok:decode(free)
    local first = full:find(text, 1, true)
    local n = 0
    while #tok:decode({table.unpack(free, 1, n)}) < first + #text - 1 do n = n + 1 end
    assert.are.equal(n, #s.sequences[1])
    assert.has_error(function() m:generate({{1}}, {stop_strings = {"x"}}) end,
      "generate: stop_strings need opts.tokenizer to turn tokens into text")
  end)

  it("takes its generation defaults from generation_config.json, EOS list included", function()
    local m = la.models.from_pretrained(FIXTURES .. "/llama3")
    assert.are.same({2, 5}, m.generation_config.eos_token_id)
    local r = reference("llama3")
    local free = m:generate({r.greedy_prompt}, {max_new_tokens = 8, eos_id = {}}).sequences[1]
    assert.are.same(r.greedy, free)   -- do_sample false: greedy without being told
    local out = m:generate({r.greedy_prompt}, {max_new_tokens = 8})
    local n = #free
    for i, id in ipairs(free) do if id == 2 or id == 5 then n = i break end end
    assert.are.equal(n, #out.sequences[1])
  end)

  it("trains: a few AdamW steps lower the loss of a Qwen3 model", function()
    local m = la.models.from_pretrained(FIXTURES .. "/qwen3")
    local ids = ints({{3, 4, 5, 6, 7, 8}})
    local targets = ints({{4, 5, 6, 7, 8, 9}})
    local opt = la.optim.AdamW(m, {lr = 1e-2})
    local first
    for _ = 1, 5 do
      local loss = m:loss(ids, targets)
      first = first or loss:item()
      opt:zero_grad()
      loss:backward()
      opt:step()
    end
    assert.is_true(m:loss(ids, targets):item() < first - 0.5)
  end)

  it("checkpoints through recipe.load_model, any architecture", function()
    local recipe = require "lualign.recipe"
    local m = la.models.from_pretrained(FIXTURES .. "/mistral")
    local path = os.tmpname() .. ".safetensors"
    la.checkpoint.save(path, m:state_dict(), {model_config = recipe.json(m.config)})
    local again = recipe.load_model(path)
    local ids = ints({{1, 2, 3, 4, 5}})
    assert.are.equal(0, (m(ids) - again(ids)):abs():max():item())
    assert.are.equal(3, again.config.sliding_window)
    local with_head = recipe.load_model(path, {value_head = true})
    assert.is_truthy(with_head.value_head)
    os.remove(path)
  end)
end)
