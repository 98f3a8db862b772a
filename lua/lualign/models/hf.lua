--- lualign.models.hf: Hugging Face model folders -- config.json checked key by
-- key, tensor names, loading (single or sharded safetensors, F32/F16/BF16),
-- saving (config.json, generation_config.json, safetensors in the dtype
-- asked for, sharded with an index above a size, the tokenizer's files).
--
--     local model = hf.from_pretrained("SmolLM2-135M")       -- la.models.from_pretrained
--     model:save_pretrained("out", {dtype = "bf16"})
--
-- Supported model_type values: llama, mistral, qwen2, qwen3 (the decoder of
-- lualign.models.llama) and gpt2 (lualign.models.gpt).  A config key that
-- would change the computation and is not implemented is an error naming the
-- key and its value; keys that only describe the file (architectures,
-- torch_dtype, token ids, ...) are kept and written back.

local cjson = require "cjson"
local core = require "lualign.core"
local util = require "lualign.util"
local checkpoint = require "lualign.checkpoint"

local hf = {}

local null = cjson.null

----------------------------------------------------------------------------
-- JSON

--- Reads a JSON file; errors name the file.
function hf.read_json(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local ok, value = pcall(cjson.decode, text)
  if not ok then util.error(path .. ": not valid JSON: " .. tostring(value)) end
  return value
end

-- The shortest decimal that reads back as the same double, with ".0" on
-- integral values so that Python reads a float.
local function json_float(v)
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  local s
  for digits = 15, 17 do
    s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then break end
  end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local function is_list(v)
  if next(v) == nil then return false end   -- {} : Hugging Face's files hold empty objects, not lists
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end

--- A JSON text for a Lua value: keys sorted, two-space indentation as
-- Hugging Face writes its files, Lua integers as integers and floats with a
-- fraction or exponent (so 1.0 stays a float and 576 an integer), cjson.null
-- as null; an empty table as {}.
function hf.json(v, indent)
  indent = indent or ""
  local t = type(v)
  if v == null or v == nil then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return json_float(v)
  end
  if t == "string" then return (cjson.encode(v)) end
  if t ~= "table" then util.error("json: cannot write a " .. t) end
  if next(v) == nil then return "{}" end
  local inner = indent .. "  "
  local parts = {}
  if is_list(v) then
    for i, x in ipairs(v) do parts[i] = inner .. hf.json(x, inner) end
    return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
  end
  for i, k in ipairs(util.sorted_keys(v)) do
    parts[i] = inner .. cjson.encode(tostring(k)) .. ": " .. hf.json(v[k], inner)
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local function write_text(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then util.error("save_pretrained: cannot write " .. path .. ": " .. tostring(err)) end
  f:write(text)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then util.error("save_pretrained: cannot write " .. path .. ": " .. tostring(rerr)) end
end

----------------------------------------------------------------------------
-- Config checks

-- Keys that describe the file, the tokenizer or a training run, and never
-- the computation of the forward pass: kept and written back, otherwise unused.
local descriptive = {}
for k in ([[architectures model_type torch_dtype dtype transformers_version _name_or_path use_cache
  bos_token_id eos_token_id pad_token_id sep_token_id initializer_range pretraining_tp is_llama_config
  transformers.js_config tokenizer_class output_attentions output_hidden_states return_dict
  torchscript id2label label2id problem_type task_specific_params finetuning_task
  _attn_implementation_autoset unsloth_fixed unsloth_version auto_map
  max_window_layers value_head reward_head]]):gmatch("%S+") do descriptive[k] = true end

-- Keys whose values are floats (others that hold integral numbers are read as integers).
local float_keys = {rms_norm_eps = true, rope_theta = true, initializer_range = true,
                    attention_dropout = true, factor = true, low_freq_factor = true,
                    high_freq_factor = true, layer_norm_epsilon = true, partial_rotary_factor = true,
                    attn_pdrop = true, embd_pdrop = true, resid_pdrop = true,
                    summary_first_dropout = true, temperature = true, top_p = true,
                    repetition_penalty = true, length_penalty = true}

--- A copy of a decoded JSON value (a config) with integral numbers as Lua
-- integers, except under keys that hold floats (rms_norm_eps, rope_theta,
-- ...), which stay floats: cjson reads every number as a float.
local function integers(v, key)
  if type(v) == "number" then
    if not float_keys[key] and math.type(v) == "float" then return math.tointeger(v) or v end
    if float_keys[key] then return v + 0.0 end
    return v
  end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = integers(x, type(k) == "string" and k or key) end
    return out
  end
  return v
end
hf.integers = integers

local function shown(v)
  if v == null then return "null" end
  if type(v) == "table" then return hf.json(v):gsub("%s+", " ") end
  if type(v) == "string" then return '"' .. v .. '"' end
  return tostring(v)
end

local function unsupported(key, value, why)
  util.error(string.format("config: %s = %s is not supported by lualign (%s)", key, shown(value), why))
end

-- The Llama family: every key it reads, with Hugging Face's default.
local REQUIRED, NONE = {}, {}
local family_defaults = {
  vocab_size = REQUIRED, hidden_size = REQUIRED, intermediate_size = REQUIRED,
  num_hidden_layers = REQUIRED, num_attention_heads = REQUIRED,
  num_key_value_heads = NONE, head_dim = NONE, hidden_act = "silu",
  max_position_embeddings = NONE, rms_norm_eps = 1e-6, rope_theta = 10000.0, rope_scaling = NONE,
  tie_word_embeddings = false, attention_bias = false, attention_dropout = 0.0, mlp_bias = false,
  sliding_window = NONE, use_sliding_window = NONE, layer_types = NONE,
  rope_interleaved = NONE, partial_rotary_factor = NONE,
  initializer_range = 0.02, value_head = false, reward_head = false,
}
local max_positions_default = {llama = 2048, mistral = 131072, qwen2 = 32768, qwen3 = 32768}
-- Keys each family's config class has (the others would be ignored by
-- Hugging Face too, so they are refused here rather than guessed at).
local family_keys = {
  llama = {attention_bias = true, mlp_bias = true, head_dim = true, rope_scaling = true},
  mistral = {sliding_window = true, head_dim = true, rope_scaling = true},
  qwen2 = {sliding_window = true, use_sliding_window = true, rope_scaling = true, layer_types = true,
           head_dim = true},
  qwen3 = {sliding_window = true, use_sliding_window = true, rope_scaling = true, layer_types = true,
           head_dim = true, attention_bias = true},
}
-- Keys only some families have.
local family_only = {}
for _, keys in pairs(family_keys) do for k in pairs(keys) do family_only[k] = true end end
hf.model_types = {"gpt2", "llama", "mistral", "qwen2", "qwen3"}
local architectures = {llama = "LlamaForCausalLM", mistral = "MistralForCausalLM",
                       qwen2 = "Qwen2ForCausalLM", qwen3 = "Qwen3ForCausalLM", gpt2 = "GPT2LMHeadModel"}

local rope_keys = {
  default = {},
  linear = {factor = true},
  llama3 = {factor = true, low_freq_factor = true, high_freq_factor = true,
            original_max_position_embeddings = true},
}

local function check_rope_scaling(s)
  if type(s) ~= "table" then unsupported("rope_scaling", s, "expected an object or null") end
  local kind = s.rope_type or s.type or "default"
  local keys = rope_keys[kind]
  if not keys then
    unsupported("rope_scaling", s, "rope_type '" .. tostring(kind) .. "'; lualign implements default, linear and llama3")
  end
  local out = {rope_type = kind}
  for k, v in pairs(s) do
    if k ~= "rope_type" and k ~= "type" then
      if not keys[k] then unsupported("rope_scaling." .. k, v, "not a key of rope_type " .. kind) end
      if type(v) ~= "number" then unsupported("rope_scaling." .. k, v, "expected a number") end
      out[k] = v
    end
  end
  for k in pairs(keys) do
    if out[k] == nil then util.error("config: rope_scaling of rope_type " .. kind .. " needs the key '" .. k .. "'") end
  end
  if kind == "default" then return nil end
  if kind == "llama3" and not (out.high_freq_factor > out.low_freq_factor) then
    unsupported("rope_scaling", s, "high_freq_factor must exceed low_freq_factor")
  end
  return out
end

local function positive_int(cfg, k)
  local v = math.tointeger(cfg[k])
  if not v or v < 1 then util.error(string.format("config: %s must be a positive integer (got %s)", k, shown(cfg[k]))) end
  cfg[k] = v
end

--- Checks a Llama-family config (a table with config.json's keys and a
-- model_type of llama, mistral, qwen2 or qwen3) and returns it normalised:
-- defaults filled in as Hugging Face's config classes have them, head_dim
-- and num_key_value_heads made explicit, integers as Lua integers, nulls as
-- absent.  Keys that change the computation and that lualign does not
-- implement are errors naming the key and the value.
function hf.check_config(raw)
  if type(raw) ~= "table" then util.error("config: expected a table with config.json's keys") end
  local kind = raw.model_type
  if not family_keys[kind] then
    util.error(string.format("config: model_type %s is not one lualign builds (%s)", shown(kind),
      table.concat(hf.model_types, ", ")))
  end
  local cfg = {}
  for k, v in pairs(integers(raw)) do
    if v ~= null then cfg[k] = v end
  end
  for k, v in pairs(cfg) do
    local known = descriptive[k] or (family_defaults[k] ~= nil and (not family_only[k] or family_keys[kind][k]))
    if not known then
      local hint = util.closest(k, util.sorted_keys(family_defaults))
      util.error(string.format("config: key '%s' (= %s) is not one lualign knows for model_type %s%s; "
        .. "it may change the computation, so it is not ignored", k, shown(v), kind,
        hint and (" -- did you mean '" .. hint .. "'?") or ""))
    end
  end
  for k, v in pairs(family_defaults) do
    if cfg[k] == nil and (not family_only[k] or family_keys[kind][k]) then
      if v == REQUIRED then util.error(string.format("config: key '%s' is required for model_type %s", k, kind)) end
      if v ~= NONE then cfg[k] = v end
    end
  end
  for _, k in ipairs({"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) do
    positive_int(cfg, k)
  end
  cfg.num_key_value_heads = cfg.num_key_value_heads or (kind == "mistral" and 8 or cfg.num_attention_heads)
  positive_int(cfg, "num_key_value_heads")
  if cfg.num_attention_heads % cfg.num_key_value_heads ~= 0 then
    util.error(string.format("config: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
      cfg.num_attention_heads, cfg.num_key_value_heads))
  end
  if not cfg.head_dim then
    if cfg.hidden_size % cfg.num_attention_heads ~= 0 then
      util.error(string.format("config: hidden_size (%d) must be a multiple of num_attention_heads (%d) "
        .. "when head_dim is not given", cfg.hidden_size, cfg.num_attention_heads))
    end
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
  end
  positive_int(cfg, "head_dim")
  if cfg.head_dim % 2 ~= 0 then unsupported("head_dim", cfg.head_dim, "rotary embeddings need an even head_dim") end
  cfg.max_position_embeddings = cfg.max_position_embeddings or max_positions_default[kind]
  positive_int(cfg, "max_position_embeddings")
  if cfg.hidden_act ~= "silu" then unsupported("hidden_act", cfg.hidden_act, "the MLP is SwiGLU with silu") end
  if cfg.attention_dropout ~= 0 then
    unsupported("attention_dropout", cfg.attention_dropout, "dropout on attention probabilities is not implemented")
  end
  if cfg.rope_interleaved then unsupported("rope_interleaved", true, "rotary embeddings use the rotate-half layout") end
  if cfg.partial_rotary_factor and cfg.partial_rotary_factor ~= 1 then
    unsupported("partial_rotary_factor", cfg.partial_rotary_factor, "the rotation covers the whole head")
  end
  if not (type(cfg.rms_norm_eps) == "number" and cfg.rms_norm_eps > 0) then
    unsupported("rms_norm_eps", cfg.rms_norm_eps, "expected a positive number")
  end
  if not (type(cfg.rope_theta) == "number" and cfg.rope_theta > 0) then
    unsupported("rope_theta", cfg.rope_theta, "expected a positive number")
  end
  cfg.rope_scaling = cfg.rope_scaling and check_rope_scaling(cfg.rope_scaling) or nil
  for _, k in ipairs({"tie_word_embeddings", "attention_bias", "mlp_bias", "value_head", "reward_head"}) do
    if cfg[k] ~= nil and type(cfg[k]) ~= "boolean" then unsupported(k, cfg[k], "expected true or false") end
  end
  if kind == "qwen2" or kind == "qwen3" then
    -- The window applies only when use_sliding_window is set.
    if cfg.use_sliding_window then
      unsupported("use_sliding_window", true, "Qwen's per-layer sliding window is not implemented")
    end
    if cfg.layer_types then
      for i, t in ipairs(cfg.layer_types) do
        if t ~= "full_attention" then unsupported("layer_types[" .. i .. "]", t, "only full_attention layers") end
      end
    end
  elseif kind == "mistral" and cfg.sliding_window then
    positive_int(cfg, "sliding_window")
  end
  return cfg
end

--- A GPT config (lualign.models.gpt's keys) from a Hugging Face GPT-2
-- config.json table.  Keys that would change the computation are checked;
-- dropout probabilities are training settings and are not applied (pass
-- {dropout = p} to train with dropout).
function hf.gpt2_config(raw)
  local cfg = {}
  local c = {}
  for k, v in pairs(integers(raw)) do if v ~= null then c[k] = v end end
  for _, k in ipairs({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon",
                      "tie_word_embeddings", "value_head", "reward_head", "dropout"}) do
    cfg[k] = c[k]
  end
  if c.n_inner then cfg.mlp_ratio = c.n_inner / c.n_embd end
  local act = c.activation_function or "gelu_new"
  if act ~= "gelu_new" and act ~= "gelu_pytorch_tanh" then
    unsupported("activation_function", act, "GPT-2's MLP uses the tanh form of GELU (gelu_new)")
  end
  if c.scale_attn_weights == false then unsupported("scale_attn_weights", false, "attention is always scaled") end
  if c.scale_attn_by_inverse_layer_idx then unsupported("scale_attn_by_inverse_layer_idx", true, "not implemented") end
  if c.add_cross_attention then unsupported("add_cross_attention", true, "decoder-only models") end
  return cfg
end

----------------------------------------------------------------------------
-- Folders

-- The set of file names in a folder.
local function listing(dir)
  local names, err = require("lualign.sys").listdir(dir)
  if not names then util.error("from_pretrained: " .. tostring(err)) end
  local set = {}
  for _, n in ipairs(names) do set[n] = true end
  return set
end

-- file -> list of tensor names in the file, for a folder's weights.
local function weight_files(dir)
  local here = listing(dir)
  local single = dir .. "/model.safetensors"
  if here["model.safetensors"] then return {[single] = checkpoint.header(single).names} end
  local index_path = dir .. "/model.safetensors.index.json"
  if here["model.safetensors.index.json"] then
    local index = hf.read_json(index_path)
    if type(index) ~= "table" or type(index.weight_map) ~= "table" then
      util.error(index_path .. ": has no weight_map object")
    end
    local files = {}
    for name, file in pairs(index.weight_map) do
      if type(file) ~= "string" or file:find("/", 1, true) then
        util.error(string.format("%s: the weight_map entry for '%s' is not a file name", index_path, name))
      end
      local path = dir .. "/" .. file
      files[path] = files[path] or {}
      table.insert(files[path], name)
    end
    return files
  end
  if here["pytorch_model.bin"] or here["pytorch_model.bin.index.json"] then
    util.error(dir .. ": holds pytorch_model.bin (PyTorch pickle) weights; lualign reads safetensors. "
      .. "Convert them once with Python: model = AutoModelForCausalLM.from_pretrained(dir); "
      .. "model.save_pretrained(dir, safe_serialization=True)")
  end
  util.error(dir .. ": no model.safetensors or model.safetensors.index.json")
end

-- Hugging Face name -> {tensor to read into} for a model, and the names a
-- folder may hold without the model having them.
local gpt_conv1d = {["attn.c_attn.weight"] = true, ["attn.c_proj.weight"] = true,
                    ["mlp.c_fc.weight"] = true, ["mlp.c_proj.weight"] = true}

local function is_gpt(model) return model.config.model_type == nil end

-- The class of a sequence-classification folder ("LlamaForSequenceClassification",
-- ...): a reward model, its one-label head `score` (no bias) on the trunk.
local function classifier_of(architectures)
  local a = type(architectures) == "table" and architectures[1] or nil
  return type(a) == "string" and a:match("ForSequenceClassification$") and a or nil
end

-- The model's tensors under their Hugging Face names (GPT's Conv1D weights as
-- transposed views), without the value and reward heads and LoRA adapters;
-- with `score`, the reward head's weight as score.weight and no LM head (a
-- sequence-classification folder's tensors).
local function hf_tensors(model, score)
  local out = {}
  for name, t in pairs(model:state_dict()) do
    if score and name == "reward_head.weight" then
      out["score.weight"] = t
    elseif score and name == "lm_head.weight" then   -- luacheck: ignore (a classifier has no LM head)
    elseif not name:match("^value_head%.") and not name:match("^reward_head%.") and not name:match("%.lora_[AB]%.weight$") then
      if is_gpt(model) then
        local suffix = name:match("^h%.%d+%.(.*)$")
        if name ~= "lm_head.weight" then
          out["transformer." .. name] = (suffix and gpt_conv1d[suffix]) and t:t() or t
        else
          out[name] = t
        end
      else
        out[name] = t
      end
    end
  end
  return out
end

-- Names a checkpoint may hold that carry nothing to load: rotary frequency
-- buffers, GPT-2's causal-mask buffers, a tied head saved anyway.
local function skippable(name, model)
  if name:match("rotary_emb%.inv_freq$") or name:match("%.attn%.bias$") or name:match("%.attn%.masked_bias$") then
    return true
  end
  if name == "score.weight" and rawget(model, "_score_head") then return true end   -- no reward head asked for
  return name == "lm_head.weight" and model.lm_head == nil
end

--- Reads a folder's weights into the model, one file at a time, each tensor
-- straight into its parameter: the weights are never held twice.
function hf.load_weights(model, dir)
  local targets = hf_tensors(model, rawget(model, "_score_head"))
  local files = weight_files(dir)
  local seen = {}
  local paths = util.sorted_keys(files)
  for _, path in ipairs(paths) do
    local into = {}
    for _, name in ipairs(files[path]) do
      local key = name
      if is_gpt(model) and not name:match("^transformer%.") and name ~= "lm_head.weight" and name ~= "score.weight" then
        key = "transformer." .. name
      end
      if targets[key] then
        into[name] = targets[key]
        seen[key] = true
      elseif not skippable(name, model) then
        util.error(string.format("%s: tensor '%s' has no place in this %s model (is the config.json right?)",
          path, name, model.config.model_type or "gpt2"))
      end
    end
    local ok, err = pcall(checkpoint.read_into, path, into)
    if not ok then util.error((tostring(err):gsub("^[^:]*:%d+: ", ""))) end   -- at the user's line
  end
  local missing = {}
  for name in pairs(targets) do if not seen[name] then missing[#missing + 1] = name end end
  table.sort(missing)
  if #missing > 0 then
    util.error(string.format("%s: the weights lack %d tensor(s) the model needs: %s", dir, #missing,
      table.concat(missing, ", ", 1, math.min(#missing, 8)) .. (#missing > 8 and ", ..." or "")))
  end
end

-- Fresh value and reward heads: weights N(0, initializer_range), bias 0 (a
-- reward head read from a folder's `score` keeps its weight).
local function init_heads(model)
  local std = model.config.initializer_range or 0.02
  local previous = core.set_grad_enabled(false)
  for _, name in ipairs({"value_head", "reward_head"}) do
    local head = rawget(model, name)
    if head then
      if not (name == "reward_head" and rawget(model, "_score_head")) then
        head.weight:copy(core.randn(head.weight:shape()) * std)
      end
      head.bias:fill(0)
    end
  end
  -- A sequence-classification folder has no LM head: an untied one is zeros.
  local lm_head = rawget(model, "_score_head") and rawget(model, "lm_head")
  if lm_head then lm_head.weight:fill(0) end
  core.set_grad_enabled(previous)
end

local generation_defaults_from_config = {"bos_token_id", "eos_token_id", "pad_token_id"}

--- A model for a Hugging Face folder (config.json, generation_config.json,
-- model.safetensors or sharded files with model.safetensors.index.json).
-- opts: overrides of config keys (value_head = true, reward_head = true, or
-- dropout for GPT-2), and weights_dtype ("bfloat16" or "float16": a frozen
-- model whose weight matrices are read straight into 16-bit tensors -- the
-- base for LoRA, a reward or reference model).  Returns a model of lualign.models.llama, or a GPT for
-- gpt2 folders; model.generation_config holds generation_config.json (or
-- the token ids of config.json when there is none) and model.source_dir the folder.
function hf.from_pretrained(dir, opts)
  if type(dir) ~= "string" then util.error("from_pretrained: expected a folder path (got " .. type(dir) .. ")") end
  dir = dir:gsub("/+$", "")
  local raw, err = hf.read_json(dir .. "/config.json")
  if not raw then util.error("from_pretrained: " .. dir .. "/config.json: " .. tostring(err)) end
  local weights_dtype
  local classifier = classifier_of(raw.architectures)
  if classifier then
    -- a reward model: one label, read by the reward head (score has no bias)
    local labels = type(raw.id2label) == "table" and util.sorted_keys(raw.id2label) or {}
    local n = raw.num_labels or (#labels > 0 and #labels) or 2
    if n ~= 1 then
      util.error(string.format("from_pretrained: %s/config.json: %s with %d labels; a reward model has one",
        dir, classifier, n))
    end
    raw.num_labels, raw.reward_head = nil, true
  end
  for k, v in pairs(opts or {}) do
    if k == "weights_dtype" then weights_dtype = v else raw[k] = v end
  end
  -- Built without drawing random weights: every parameter is read from the
  -- folder (or its absence is an error), except scalar heads asked for in
  -- opts, initialised afterwards.  With weights_dtype (bfloat16, float16)
  -- the model is frozen and its weight matrices are read into 16-bit tensors
  -- (lualign.lora.apply then adds trainable adapters): never float32 whole.
  local model = require("lualign.nn").without_init(function()
    local m = hf.from_config(raw)
    if weights_dtype and weights_dtype ~= "float32" then m:requires_grad(false):frozen_weights_to(weights_dtype) end
    return m
  end)
  if classifier then rawset(model, "_score_head", true) end   -- (reward_head = false leaves score unread)
  hf.load_weights(model, dir)
  init_heads(model)
  local gen = hf.read_json(dir .. "/generation_config.json")
  if not gen then
    gen = {}
    for _, k in ipairs(generation_defaults_from_config) do
      if raw[k] ~= nil and raw[k] ~= null then gen[k] = raw[k] end
    end
  end
  rawset(model, "generation_config", integers(gen))
  rawset(model, "source_dir", dir)
  return model
end

--- A freshly initialised model from a table with config.json's keys (any
-- supported model_type; gpt2 folders' keys for GPT-2).
function hf.from_config(raw)
  if type(raw) ~= "table" then util.error("from_config: expected a table with config.json's keys") end
  if raw.model_type == "gpt2" then
    return require("lualign.models.gpt")(hf.gpt2_config(raw))
  end
  return require("lualign.models.llama")(raw)
end

local tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                         "chat_template.jinja", "chat_template.json"}
--- The names of the files that make a Hugging Face folder's tokenizer.
hf.tokenizer_files = tokenizer_files

local function copy_file(src, dst)
  local f = io.open(src, "rb")
  if not f then return false end
  local data = f:read("a")
  f:close()
  write_text(dst, data)
  return true
end

--- Copies the tokenizer files of a Hugging Face folder (tokenizer.json,
-- tokenizer_config.json with its chat template, special_tokens_map.json,
-- vocab.json, merges.txt, ...) that exist in `src` to `dst`; returns the
-- list of the names copied.
function hf.copy_tokenizer_files(src, dst)
  local copied = {}
  for _, f in ipairs(tokenizer_files) do
    if copy_file(src .. "/" .. f, dst .. "/" .. f) then copied[#copied + 1] = f end
  end
  return copied
end

-- config.json's table for a model.
local function config_json(model, torch_dtype, reward_model)
  local c = {}
  if is_gpt(model) then
    local g = model.config
    if g.norm ~= "layernorm" or g.bias ~= true then
      util.error("save_pretrained: this GPT has norm = " .. g.norm .. " and bias = " .. tostring(g.bias)
        .. "; Hugging Face's GPT-2 has LayerNorm and biases")
    end
    c = {model_type = "gpt2", vocab_size = g.vocab_size, n_positions = g.n_positions, n_ctx = g.n_positions,
         n_embd = g.n_embd, n_layer = g.n_layer, n_head = g.n_head,
         n_inner = math.tointeger(g.mlp_ratio * g.n_embd) or util.error("save_pretrained: mlp_ratio * n_embd is not an integer"),
         layer_norm_epsilon = g.layer_norm_epsilon + 0.0, activation_function = "gelu_new",
         tie_word_embeddings = g.tie_word_embeddings, attn_pdrop = 0.0, embd_pdrop = 0.0, resid_pdrop = 0.0}
  else
    for k, v in pairs(model.config) do c[k] = v end
    c.value_head, c.reward_head = nil, nil
  end
  c.architectures = {architectures[c.model_type]}
  if reward_model then
    c.architectures = {(architectures[c.model_type]:gsub("ForCausalLM$", ""):gsub("LMHeadModel$", ""))
                       .. "ForSequenceClassification"}
    c.id2label, c.label2id = {["0"] = "LABEL_0"}, {LABEL_0 = 0}
  else
    c.id2label, c.label2id = nil, nil
  end
  c.torch_dtype = torch_dtype
  return c
end

local dtype_names = {F32 = "float32", BF16 = "bfloat16", F16 = "float16"}

-- "5GB", "500MB", "2GiB" or a number of bytes.
local function shard_bytes(v)
  if v == nil then return 5 * 1000 ^ 3 end
  if type(v) == "number" and v > 0 then return v end
  local n, unit = tostring(v):upper():match("^%s*([%d%.]+)%s*([KMG]?I?B)%s*$")
  local scale = {B = 1, KB = 1e3, MB = 1e6, GB = 1e9, KIB = 1024, MIB = 1024 ^ 2, GIB = 1024 ^ 3}
  if not n or not scale[unit] then
    util.error("save_pretrained: max_shard_size must be a number of bytes or a size like '2GB' (got " .. tostring(v) .. ")")
  end
  return tonumber(n) * scale[unit]
end

--- Writes the model as a Hugging Face folder: config.json,
-- generation_config.json, model.safetensors (or model-0000i-of-0000n.safetensors
-- with model.safetensors.index.json when the weights pass max_shard_size) with
-- Hugging Face's tensor names, and the tokenizer's files: those of the
-- folder the model was loaded from, and tok:save(dir) when opts.tokenizer is
-- given.  opts: dtype ("f32" default, "bf16", "f16"), max_shard_size (bytes
-- or "5GB", the default), tokenizer.  Value and reward heads are not written
-- (Hugging Face's causal-LM classes have no place for them), unless
-- opts.reward_model: then the folder is a sequence-classification one
-- (LlamaForSequenceClassification, GPT2ForSequenceClassification, ...: one
-- label), the reward head's weight its bias-free `score`, and no LM head.
function hf.save_pretrained(model, dir, opts)
  opts = util.check_options("save_pretrained", opts, {"dtype", "max_shard_size", "tokenizer", "reward_model"})
  if opts.reward_model and not rawget(model, "reward_head") then
    util.error("save_pretrained: reward_model = true, but the model has no reward head")
  end
  if type(dir) ~= "string" or dir == "" then util.error("save_pretrained: expected a folder path") end
  if rawget(model, "_lora") and not require("lualign.lora").is_merged(model) then
    util.error("save_pretrained: the model has LoRA adapters that are not merged; la.lora.merge(model) "
      .. "writes the merged model, la.lora.save(model, dir) the adapter alone")
  end
  local float_type = checkpoint.float_type("save_pretrained", {dtype = opts.dtype or "f32"})
  local limit = shard_bytes(opts.max_shard_size)
  local made, merr = require("lualign.sys").mkdir(dir)
  if not made then util.error("save_pretrained: " .. tostring(merr)) end
  local tensors = hf_tensors(model, opts.reward_model)
  local names = util.sorted_keys(tensors)
  local elem = float_type == "F32" and 4 or 2
  -- Shards in name order, a new one when the next tensor would pass the limit.
  local shards, sizes, total = {{}}, {0}, 0
  for _, name in ipairs(names) do
    local bytes = tensors[name]:numel() * elem
    if sizes[#sizes] > 0 and sizes[#sizes] + bytes > limit then
      shards[#shards + 1], sizes[#sizes + 1] = {}, 0
    end
    shards[#shards][name] = tensors[name]
    sizes[#sizes] = sizes[#sizes] + bytes
    total = total + bytes
  end
  local meta = {format = "pt"}
  local stale = {dir .. "/model.safetensors", dir .. "/model.safetensors.index.json"}
  if #shards == 1 then
    os.remove(dir .. "/model.safetensors.index.json")
    checkpoint.save(dir .. "/model.safetensors", shards[1], meta, {dtype = opts.dtype or "f32"})
  else
    local map = {}
    for i, shard in ipairs(shards) do
      local file = string.format("model-%05d-of-%05d.safetensors", i, #shards)
      checkpoint.save(dir .. "/" .. file, shard, meta, {dtype = opts.dtype or "f32"})
      for name in pairs(shard) do map[name] = file end
    end
    os.remove(stale[1])
    write_text(dir .. "/model.safetensors.index.json",
      hf.json({metadata = {total_size = math.tointeger(total) or total}, weight_map = map}) .. "\n")
  end
  write_text(dir .. "/config.json", hf.json(config_json(model, dtype_names[float_type], opts.reward_model)) .. "\n")
  local gen = rawget(model, "generation_config")
  if not gen then
    gen = {}
    for _, k in ipairs(generation_defaults_from_config) do
      local v = model.config[k]
      if v ~= nil and v ~= null then gen[k] = v end
    end
  end
  write_text(dir .. "/generation_config.json", hf.json(gen) .. "\n")
  local src = rawget(model, "source_dir")
  if src and src ~= dir then hf.copy_tokenizer_files(src, dir) end
  if opts.tokenizer then opts.tokenizer:save(dir) end
  return dir
end

return hf
