--- lualign.lora: low-rank adapters (LoRA, Hu et al. 2021) on a model's linear
-- layers, in PEFT's folder format.
--
--     la.lora.apply(model, {r = 16, alpha = 32, dropout = 0.05,
--                           target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"}})
--     local opt = la.optim.AdamW(model:parameters(), {lr = 2e-4})   -- the adapters only
--     ...
--     do local off <close> = la.lora.disable(model)   -- the base model: a free reference
--       ref_logps = model:sequence_logprobs(ids, targets, mask)
--     end
--     la.lora.save(model, "runs/x/adapter")           -- adapter_config.json + adapter_model.safetensors
--     la.lora.load(other, "runs/x/adapter")           -- also folders written by PEFT
--     la.lora.merge(model); model:save_pretrained("runs/x/merged")
--
-- An adapted layer computes x W^T + b + (alpha / r) (dropout(x) A^T) B^T in one
-- fused op (F.lora_linear), A (r, in) and B (out, r), B starting at zero so the
-- adapted model starts as the base model.  apply() freezes every other
-- parameter (no gradients, and no optimizer state: optimizers take only the
-- parameters that require gradients).  Names follow Hugging Face's modules
-- (model.layers.0.self_attn.q_proj); a GPT-2 model's are PEFT's for
-- GPT2LMHeadModel (transformer.h.0.attn.c_attn).  Target selection follows
-- PEFT: a list of names matches a module whose name is one of them or ends
-- with "." .. one of them; a string is a regular expression the whole name
-- must match (PCRE2, Python's syntax for the usual patterns); "all-linear" is
-- every linear layer but the output head.

local core = require "lualign.core"
local nn = require "lualign.nn"
local util = require "lualign.util"
local F = nn.functional

local lora = {}

----------------------------------------------------------------------------
-- The adapted linear layer

local LoraLinear = nn.Linear:extend("LoraLinear")
--- A Linear layer with a LoRA adapter: lora_A (in -> r) and lora_B (r -> out)
-- as sub-modules, so their parameters are named q_proj.lora_A.weight and
-- q_proj.lora_B.weight, PEFT's names.  Made by lora.apply from nn.Linear.
lora.Linear = LoraLinear

function LoraLinear:forward(x)
  if rawget(self, "merged") or rawget(self, "disabled") > 0 then
    return F.linear(x, self.weight, self.bias)
  end
  local xd
  if self.lora_dropout > 0 and self.training then xd = F.dropout(x, self.lora_dropout, true) end
  return F.lora_linear(x, self.weight, self.bias, self.lora_A.weight, self.lora_B.weight, self.scaling, xd)
end

function LoraLinear:extra_repr()
  return string.format("in=%d, out=%d, bias=%s, r=%d, alpha=%g, dropout=%g%s", self.in_features,
    self.out_features, tostring(self.bias ~= nil), self.r, self.lora_alpha, self.lora_dropout,
    rawget(self, "merged") and ", merged" or "")
end

----------------------------------------------------------------------------
-- Names and target selection (PEFT's rules)

local function is_gpt(model) return type(model.config) == "table" and model.config.model_type == nil end

-- The Hugging Face name of a module: GPT-2's trunk lives under "transformer.".
local function hf_name(model, name)
  if is_gpt(model) and name ~= "lm_head" and not name:match("^value_head") and not name:match("^reward_head") then
    return "transformer." .. name
  end
  return name
end

-- PEFT's default targets per model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
local default_targets = {
  gpt2 = {"c_attn"}, llama = {"q_proj", "v_proj"}, mistral = {"q_proj", "v_proj"},
  qwen2 = {"q_proj", "v_proj"}, qwen3 = {"q_proj", "v_proj"},
}

-- Heads that "all-linear" leaves out: the output layer, and lualign's scalar heads.
local output_heads = {lm_head = true, value_head = true, reward_head = true}

local function fullmatch(pattern, s) return (core.regex_fullmatch(pattern, s)) end

-- Whether name matches a PEFT module list (exact, or a "."-suffix) or regex string.
local function matches(spec, name)
  if spec == nil then return false end
  if type(spec) == "string" then return fullmatch(spec, name) end
  for _, t in ipairs(spec) do
    if name == t or name:sub(-(#t + 1)) == "." .. t then return true end
  end
  return false
end

-- The layer index of a module name for layers_to_transform, as PEFT finds it.
local function layer_index(name, pattern)
  local patterns = pattern
  if type(pattern) == "string" then patterns = {pattern} end
  if patterns == nil or #patterns == 0 then
    local ok, idx = core.regex_fullmatch(".*\\.[^.]*\\.(\\d+)\\..*", name)
    return ok and tonumber(idx) or nil
  end
  for _, p in ipairs(patterns) do
    local ok, idx = core.regex_fullmatch(".*\\." .. p .. "\\.(\\d+)\\..*", name)
    if ok then return tonumber(idx) end
  end
  return nil
end

-- The value of a rank_pattern / alpha_pattern entry for a module (PEFT's
-- get_pattern_key: the key k such that the name matches (.*\.)?(k)$), or nil.
-- cjson does not keep a JSON object's order, so two keys matching one name
-- with different values are an error rather than a guess.
local function pattern_value(patterns, name, what)
  if patterns == nil then return nil end
  local found, found_key
  for _, key in ipairs(util.sorted_keys(patterns)) do
    if fullmatch("(.*\\.)?(" .. key .. ")", name) then
      if found ~= nil and patterns[key] ~= found then
        util.error(string.format("lora: %s keys '%s' and '%s' both match %s with different values",
          what, found_key, key, name))
      end
      found, found_key = patterns[key], key
    end
  end
  return found
end

-- Whether module (named name, Hugging Face name key) is targeted by opts.
local function targeted(opts, key, module, model)
  if matches(opts.exclude_modules, key) then return false end
  local t = opts.target_modules
  local hit
  if t == "all-linear" then
    hit = getmetatable(module) == nn.Linear and not output_heads[key] and not output_heads[key:match("[^.]+$")]
  else
    hit = matches(t, key)
  end
  if hit and type(t) == "table" and opts.layers_to_transform ~= nil then
    local idx = layer_index(key, opts.layers_pattern)
    local wanted = opts.layers_to_transform
    if type(wanted) == "number" then wanted = {wanted} end
    hit = false
    for _, w in ipairs(wanted) do if idx == w then hit = true end end
  end
  return hit
end

----------------------------------------------------------------------------
-- apply

local apply_options = {"r", "alpha", "dropout", "target_modules", "exclude_modules", "use_rslora",
                       "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern",
                       "modules_to_save", "init_lora_weights", "trainable"}

local function check_number(where, name, v, lo, hi, integer)
  if type(v) ~= "number" or v ~= v or v < lo or (hi and v >= hi) or (integer and math.tointeger(v) == nil) then
    util.error(string.format("%s: %s must be %s%s (got %s)", where, name, integer and "an integer >= " or "a number >= ",
      tostring(lo), hi and (" and < " .. hi) or "", tostring(v)))
  end
end

local function state_of(model)
  local s = type(model) == "table" and rawget(model, "_lora")
  return s or nil
end

--- Adds LoRA adapters to the linear layers of model that opts selects and
-- freezes everything else.  opts (PEFT's LoraConfig names in brackets):
--   r (8), alpha (8) [lora_alpha], dropout (0) [lora_dropout] on the
--   adapter's input in training mode; target_modules (a list of names or
--   name suffixes, a regex string, or "all-linear"; default PEFT's for the
--   model type: q_proj and v_proj, GPT-2's c_attn); exclude_modules (same
--   forms); use_rslora (scaling alpha / sqrt(r) instead of alpha / r);
--   rank_pattern, alpha_pattern (name pattern -> r or alpha for the modules
--   it matches); layers_to_transform (a layer index or a list) with
--   layers_pattern; modules_to_save (names of modules trained in full and
--   saved with the adapter, e.g. "reward_head"); init_lora_weights (true:
--   A as nn.Linear's default, B zero; "gaussian": A ~ N(0, 1/r); false: B
--   random too, so the adapter is not the identity -- for tests);
--   trainable (true: the adapters require gradients).
-- Returns model and the list of adapted module names.
function lora.apply(model, opts)
  opts = util.check_options("lora.apply", opts, apply_options)
  if type(model) ~= "table" or not model.named_modules then util.error("lora.apply: expected a model (an nn.Module)") end
  if state_of(model) then
    util.error("lora.apply: the model already has LoRA adapters (on " .. #state_of(model).names .. " modules)")
  end
  local r = opts.r or 8
  check_number("lora.apply", "r", r, 1, nil, true)
  r = math.tointeger(r)
  local alpha = opts.alpha or 8
  check_number("lora.apply", "alpha", alpha, -math.huge)
  local dropout = opts.dropout or 0
  check_number("lora.apply", "dropout", dropout, 0, 1)
  local target = opts.target_modules
  if target == nil then
    local kind = is_gpt(model) and "gpt2" or model.config and model.config.model_type
    target = default_targets[kind]
    if not target then util.error("lora.apply: no default target_modules for this model; give target_modules") end
  end
  if type(target) ~= "string" and type(target) ~= "table" then
    util.error("lora.apply: target_modules must be a list of names, a regex string or 'all-linear' (got " .. type(target) .. ")")
  end
  local init = opts.init_lora_weights
  if init == nil then init = true end
  if init ~= true and init ~= false and init ~= "gaussian" then
    util.error("lora.apply: init_lora_weights must be true, false or 'gaussian' (got " .. tostring(init) .. ")")
  end
  local sel = {target_modules = target, exclude_modules = opts.exclude_modules,
               layers_to_transform = opts.layers_to_transform, layers_pattern = opts.layers_pattern}
  local save_set = {}
  for _, m in ipairs(opts.modules_to_save or {}) do save_set[m] = true end

  local chosen, linear_names, named = {}, {}, {}
  for _, entry in ipairs(model:named_modules()) do
    local name, m = entry[1], entry[2]
    local key = hf_name(model, name)
    named[name] = m
    if getmetatable(m) == nn.Linear then linear_names[#linear_names + 1] = key end
    local protected = false
    for s in pairs(save_set) do if key == s or key:sub(-(#s + 1)) == "." .. s or name == s then protected = true end end
    if not protected and targeted(sel, key, m, model) then
      if getmetatable(m) ~= nn.Linear then
        util.error(string.format("lora.apply: target module %s is a %s; lualign adapts Linear layers only",
          key, getmetatable(m).__name or "module"))
      end
      chosen[#chosen + 1] = {name = name, key = key, module = m}
    end
  end
  if #chosen == 0 then
    local suffixes, seen = {}, {}
    for _, n in ipairs(linear_names) do
      local s = n:match("[^.]+$")
      if not seen[s] then seen[s] = true; suffixes[#suffixes + 1] = s end
    end
    table.sort(suffixes)
    local hint = type(target) == "table" and type(target[1]) == "string" and util.closest(target[1], suffixes)
    util.error(string.format("lora.apply: target_modules %s match no linear layer of the model%s (its linear layers: %s)",
      type(target) == "string" and ("'" .. target .. "'") or table.concat(target, ", "),
      hint and (" -- did you mean '" .. hint .. "'?") or "", table.concat(suffixes, ", ")))
  end
  for s in pairs(save_set) do
    if not named[s] then util.error("lora.apply: modules_to_save names '" .. s .. "', which the model does not have") end
  end

  -- Freeze the base, then add the adapters (which require gradients).
  for _, p in ipairs(model:parameters()) do
    p:requires_grad(false)
    p.grad = nil
  end
  local names = {}
  local previous = core.set_grad_enabled(false)
  for _, c in ipairs(chosen) do
    local m = c.module
    local mr = math.tointeger(pattern_value(opts.rank_pattern, c.key, "rank_pattern") or r)
    local ma = pattern_value(opts.alpha_pattern, c.key, "alpha_pattern") or alpha
    check_number("lora.apply", "r of " .. c.key, mr, 1, nil, true)
    setmetatable(m, LoraLinear)
    m.r, m.lora_alpha, m.lora_dropout = mr, ma, dropout
    m.scaling = opts.use_rslora and ma / math.sqrt(mr) or ma / mr
    rawset(m, "merged", false)
    rawset(m, "disabled", 0)
    m.lora_A = nn.Linear(m.in_features, mr, {bias = false})
    m.lora_B = nn.Linear(mr, m.out_features, {bias = false})
    if init == "gaussian" then m.lora_A.weight:copy(core.randn(mr, m.in_features) * (1 / mr)) end
    if init ~= false then m.lora_B.weight:fill(0) end
    local on = opts.trainable ~= false
    m.lora_A.weight:requires_grad(on)
    m.lora_B.weight:requires_grad(on)
    names[#names + 1] = c.name
  end
  core.set_grad_enabled(previous)
  for s in pairs(save_set) do named[s]:requires_grad(true) end

  rawset(model, "_lora", {
    names = names, modules_to_save = opts.modules_to_save or {},
    config = {r = r, lora_alpha = alpha, lora_dropout = dropout, target_modules = target,
              exclude_modules = opts.exclude_modules, use_rslora = opts.use_rslora == true,
              rank_pattern = opts.rank_pattern, alpha_pattern = opts.alpha_pattern,
              layers_to_transform = opts.layers_to_transform, layers_pattern = opts.layers_pattern,
              init_lora_weights = init},
  })
  return model, names
end

-- The adapted modules of a model, erroring when it has none.
local function adapted(model, where)
  local s = state_of(model)
  if not s then util.error(where .. ": the model has no LoRA adapters (lora.apply or lora.load first)") end
  local named, out = {}, {}
  for _, e in ipairs(model:named_modules()) do named[e[1]] = e[2] end
  for i, name in ipairs(s.names) do out[i] = named[name] end
  return out, s, named
end

--- Whether model has LoRA adapters.
function lora.has_adapters(model) return state_of(model) ~= nil end

--- A one-line summary: adapted modules, ranks, trainable and total parameters.
function lora.summary(model)
  local mods, s = adapted(model, "lora.summary")
  local trainable, total = 0, 0
  for _, p in ipairs(model:parameters()) do
    total = total + p:numel()
    if p:needs_grad() then trainable = trainable + p:numel() end
  end
  return string.format("LoRA r=%d alpha=%g on %d modules; %d trainable of %d parameters (%.2f%%)",
    s.config.r, s.config.lora_alpha, #mods, trainable, total, 100 * trainable / math.max(total, 1))
end

----------------------------------------------------------------------------
-- merge, unmerge, disable

-- W += sign * scaling * B A, computed in float32 (a 16-bit weight is rounded once).
local function fold(m, sign)
  local previous = core.set_grad_enabled(false)
  local delta = m.lora_B.weight:matmul(m.lora_A.weight) * (sign * m.scaling)
  m.weight:copy(m.weight:float() + delta)
  core.set_grad_enabled(previous)
end

--- Adds each adapter's update into its base weight (W + (alpha/r) B A), so the
-- model runs as a plain one; save_pretrained then writes the merged model.
-- Adapters already merged are left alone.  Returns model.
function lora.merge(model)
  for _, m in ipairs((adapted(model, "lora.merge"))) do
    if not rawget(m, "merged") then
      fold(m, 1)
      rawset(m, "merged", true)
    end
  end
  return model
end

--- Subtracts merged adapters from their base weights again (exact for float32
-- weights up to rounding; a 16-bit weight keeps the rounding of the merge).
function lora.unmerge(model)
  for _, m in ipairs((adapted(model, "lora.unmerge"))) do
    if rawget(m, "merged") then
      fold(m, -1)
      rawset(m, "merged", false)
    end
  end
  return model
end

--- Whether the adapters are merged into the base weights.
function lora.is_merged(model)
  local mods = adapted(model, "lora.is_merged")
  return rawget(mods[1], "merged") == true
end

--- The state dict of the model as a plain one (what a model without adapters
-- has): each adapted weight with its update (alpha/r) B A folded in -- a new
-- tensor in the weight's dtype, the model itself unchanged -- and no adapter
-- tensors.  Merged adapters are already in their weights.
function lora.merged_state_dict(model)
  local mods, s = adapted(model, "lora.merged_state_dict")
  local sd = model:state_dict()
  local previous = core.set_grad_enabled(false)
  for i, m in ipairs(mods) do
    local name = s.names[i]
    sd[name .. ".lora_A.weight"], sd[name .. ".lora_B.weight"] = nil, nil
    if not rawget(m, "merged") then
      local w = m.weight
      sd[name .. ".weight"] = (w:float() + m.lora_B.weight:matmul(m.lora_A.weight) * m.scaling):to(w:dtype())
    end
  end
  core.set_grad_enabled(previous)
  return sd
end

--- Turns the adapters off until the returned handle is closed: the model
-- computes as its base model (the reference of DPO and the SFT model of PPO's
-- KL, without a second copy in memory).
--     do local off <close> = la.lora.disable(model); ... end
-- Handles nest; handle:close() also ends it (once).
function lora.disable(model)
  local mods = adapted(model, "lora.disable")
  if rawget(mods[1], "merged") then
    util.error("lora.disable: the adapters are merged into the weights; lora.unmerge(model) first")
  end
  for _, m in ipairs(mods) do rawset(m, "disabled", rawget(m, "disabled") + 1) end
  local open = true
  local function close()
    if not open then return end
    open = false
    for _, m in ipairs(mods) do rawset(m, "disabled", rawget(m, "disabled") - 1) end
  end
  return setmetatable({close = close}, {__close = close, __name = "lora.disable handle"})
end

----------------------------------------------------------------------------
-- PEFT folders

local PREFIX = "base_model.model."

-- The adapter's tensors under PEFT's names.
local function adapter_tensors(model)
  local mods, s, named = adapted(model, "lora.save")
  local out = {}
  for i, m in ipairs(mods) do
    local key = PREFIX .. hf_name(model, s.names[i])
    out[key .. ".lora_A.weight"] = m.lora_A.weight
    out[key .. ".lora_B.weight"] = m.lora_B.weight
  end
  for _, name in ipairs(s.modules_to_save) do
    local m = named[name]
    for _, p in ipairs(m:named_parameters()) do out[PREFIX .. hf_name(model, name) .. "." .. p[1]] = p[2] end
  end
  return out
end

-- Drops the nils and empty tables hf.json would misspell ({} is written as []).
local function config_json(model, s)
  local c = s.config
  local cfg = {
    peft_type = "LORA", task_type = "CAUSAL_LM", r = c.r, lora_alpha = c.lora_alpha + 0.0,
    lora_dropout = c.lora_dropout + 0.0, bias = "none", use_rslora = c.use_rslora, use_dora = false,
    fan_in_fan_out = is_gpt(model), inference_mode = true, init_lora_weights = c.init_lora_weights,
    target_modules = c.target_modules, base_model_name_or_path = rawget(model, "source_dir"),
    modules_to_save = #s.modules_to_save > 0 and s.modules_to_save or nil,
  }
  for _, k in ipairs({"exclude_modules", "layers_to_transform", "layers_pattern"}) do cfg[k] = c[k] end
  for _, k in ipairs({"rank_pattern", "alpha_pattern"}) do
    if c[k] and next(c[k]) then cfg[k] = c[k] end
  end
  return cfg
end

--- Writes the adapter as PEFT does: dir/adapter_config.json and
-- dir/adapter_model.safetensors (float32 tensors named
-- base_model.model.<module>.lora_A.weight, .lora_B.weight, and the
-- parameters of modules_to_save).  Returns dir.
function lora.save(model, dir)
  local _, s = adapted(model, "lora.save")
  if type(dir) ~= "string" or dir == "" then util.error("lora.save: expected a folder path") end
  local made, err = require("lualign.sys").mkdir(dir)
  if not made then util.error("lora.save: " .. tostring(err)) end
  local hf = require "lualign.models.hf"
  require("lualign.checkpoint").save(dir .. "/adapter_model.safetensors", adapter_tensors(model), {format = "pt"})
  local f, ferr = io.open(dir .. "/adapter_config.json.tmp", "wb")
  if not f then util.error("lora.save: cannot write " .. dir .. "/adapter_config.json: " .. tostring(ferr)) end
  f:write(hf.json(config_json(model, s)), "\n")
  f:close()
  local ok, rerr = os.rename(dir .. "/adapter_config.json.tmp", dir .. "/adapter_config.json")
  if not ok then util.error("lora.save: " .. tostring(rerr)) end
  return dir
end

-- adapter_config.json keys whose non-default value changes the computation in
-- a way lualign does not implement.
local unsupported_keys = {use_dora = false, lora_bias = false, layer_replication = false,
                          target_parameters = false, trainable_token_indices = false, use_qalora = false,
                          alora_invocation_tokens = false, arrow_config = false}
-- Keys lualign reads, or that describe the file or how the adapter was
-- initialised (no effect on a loaded adapter).
local known_keys = {}
for k in ([[peft_type task_type r lora_alpha lora_dropout bias use_rslora fan_in_fan_out inference_mode
  init_lora_weights target_modules exclude_modules base_model_name_or_path revision modules_to_save
  rank_pattern alpha_pattern layers_to_transform layers_pattern auto_mapping peft_version loftq_config
  eva_config corda_config megatron_config megatron_core runtime_config qalora_group_size
  ensure_weight_tying lora_ga_config]]):gmatch("%S+") do known_keys[k] = true end

local function is_blank(v)
  local cjson = require "cjson"
  return v == nil or v == cjson.null or v == false or v == 0 or (type(v) == "table" and next(v) == nil)
end

-- A JSON value with cjson.null as nil and integral floats as integers.
local function plain(v)
  local cjson = require "cjson"
  if v == cjson.null then return nil end
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = plain(x) end
    return out
  end
  return v
end

--- Reads a PEFT LoRA folder (adapter_config.json, adapter_model.safetensors)
-- into model: adds the adapters the config describes (lora.apply) unless the
-- model has them already, then loads every adapter tensor, each name and
-- shape checked both ways.  opts.trainable (false, as PEFT's
-- is_trainable): whether the loaded adapters require gradients.  Returns model.
function lora.load(model, dir, opts)
  opts = util.check_options("lora.load", opts, {"trainable"})
  if type(dir) ~= "string" then util.error("lora.load: expected a folder path") end
  dir = dir:gsub("/+$", "")
  local hf = require "lualign.models.hf"
  local path = dir .. "/adapter_config.json"
  local raw, err = hf.read_json(path)
  if not raw then util.error("lora.load: " .. path .. ": " .. tostring(err)) end
  if raw.peft_type ~= "LORA" then
    util.error(string.format("lora.load: %s: peft_type is %s; lualign reads LORA adapters", path, tostring(raw.peft_type)))
  end
  for k, v in pairs(raw) do
    if unsupported_keys[k] ~= nil and not is_blank(v) then
      util.error(string.format("lora.load: %s: %s = %s is not implemented in lualign", path, k, tostring(plain(v))))
    elseif unsupported_keys[k] == nil and not known_keys[k] and not is_blank(v) then
      util.error(string.format("lora.load: %s: key '%s' (= %s) is not one lualign knows; it may change the "
        .. "computation, so it is not ignored", path, k, tostring(plain(v))))
    end
  end
  if raw.bias ~= nil and raw.bias ~= "none" then
    util.error(string.format("lora.load: %s: bias = '%s' is not implemented (only 'none')", path, tostring(raw.bias)))
  end
  local c = plain(raw)
  if not state_of(model) then
    lora.apply(model, {r = c.r, alpha = c.lora_alpha, dropout = c.lora_dropout, target_modules = c.target_modules,
      exclude_modules = c.exclude_modules, use_rslora = c.use_rslora, rank_pattern = c.rank_pattern,
      alpha_pattern = c.alpha_pattern, layers_to_transform = c.layers_to_transform,
      layers_pattern = c.layers_pattern, modules_to_save = c.modules_to_save,
      trainable = opts.trainable == true})
  end
  local wpath = dir .. "/adapter_model.safetensors"
  local f = io.open(wpath, "rb")
  if not f then
    if io.open(dir .. "/adapter_model.bin", "rb") then
      util.error("lora.load: " .. dir .. " holds adapter_model.bin (a PyTorch pickle); lualign reads "
        .. "adapter_model.safetensors (PEFT writes it with safe_serialization=True, the default)")
    end
    util.error("lora.load: " .. wpath .. ": no such file")
  end
  f:close()
  local want = adapter_tensors(model)
  local ckpt = require "lualign.checkpoint"
  local names = ckpt.header(wpath).names
  local into, missing, unexpected = {}, {}, {}
  local have = {}
  for _, n in ipairs(names) do
    have[n] = true
    if want[n] then into[n] = want[n] else unexpected[#unexpected + 1] = n end
  end
  for n in pairs(want) do if not have[n] then missing[#missing + 1] = n end end
  table.sort(missing)
  table.sort(unexpected)
  if #unexpected > 0 or #missing > 0 then
    util.error(string.format("lora.load: %s does not fit the model's adapters:%s%s", wpath,
      #missing > 0 and (" missing " .. table.concat(missing, ", ", 1, math.min(#missing, 6)) .. (#missing > 6 and ", ..." or "")) or "",
      #unexpected > 0 and (" unexpected " .. table.concat(unexpected, ", ", 1, math.min(#unexpected, 6)) .. (#unexpected > 6 and ", ..." or "")) or ""))
  end
  ckpt.read_into(wpath, into)
  return model
end

return lora
