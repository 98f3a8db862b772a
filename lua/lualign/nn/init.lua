--- lualign.nn: the Module protocol and the standard layers.
--
-- A module is a Lua object whose tensors and sub-modules are registered when
-- they are assigned to its fields, in order, as in PyTorch:
--
--     local Block = nn.Module:extend("Block")
--     function Block:init(d)
--       self.norm = nn.LayerNorm(d)           -- a sub-module
--       self.proj = nn.Linear(d, d)
--       self.scale = la.ones(d):requires_grad()   -- a parameter
--     end
--     function Block:forward(x) return self.proj(self.norm(x)) * self.scale end
--
--     local b = Block(64)
--     b(x)                                -- calls forward
--     b:named_parameters()                -- {{"norm.weight", t}, {"norm.bias", t}, ...}
--
-- A tensor that requires grad when it is assigned is a parameter; any other
-- tensor is a buffer (saved in state_dict, not trained).  Names are dotted
-- paths in registration order; lists of modules (ModuleList, Sequential) name
-- their children 0, 1, 2, ... as PyTorch and Hugging Face checkpoints do.

local core = require "lualign.core"
local F = require "lualign.nn.functional"
local util = require "lualign.util"

local nn = {functional = F, F = F}

----------------------------------------------------------------------------
-- Module

--- The base class of every layer: Module:extend(name) makes a subclass
-- (see the module's documentation for the protocol).
local Module = {__name = "Module"}
Module.__index = Module
nn.Module = Module

-- Records tensors and modules assigned to new fields, keeping their order.
local function track_field(self, key, value)
  rawset(self, key, value)
  if type(key) ~= "string" or key:sub(1, 1) == "_" then return end
  local kind
  if core.is_tensor(value) then
    kind = value:needs_grad() and "param" or "buffer"
  elseif type(value) == "table" and getmetatable(value) and value._is_module then
    kind = "module"
  end
  if kind and not self._kinds[key] then
    self._order[#self._order + 1] = key
    self._kinds[key] = kind
  end
end

--- Makes a subclass.  Cls(...) creates an instance and calls Cls.init(self, ...).
function Module:extend(name)
  local cls = {__name = name or "Module", _is_module = true}
  cls.__index = cls
  cls.__newindex = track_field
  cls.__call = function(self, ...) return self:forward(...) end
  cls.__tostring = Module.__tostring
  return setmetatable(cls, {
    __index = self,
    __call = function(c, ...) return c.new(c, ...) end,
  })
end

function Module.new(cls, ...)
  local self = setmetatable({_order = {}, _kinds = {}, training = true}, cls)
  if cls.init then cls.init(self, ...) end
  return self
end

Module._is_module = true

function Module:forward()
  error(string.format("%s: this module defines no forward()", getmetatable(self).__name), 2)
end

--- Registers a tensor as a buffer (state, not trained) under name.
function Module:buffer(name, t)
  rawset(self, name, t)
  if not self._kinds[name] then self._order[#self._order + 1] = name end
  self._kinds[name] = "buffer"
  return t
end

-- Visits (name, value, kind) of every registered field, recursively.
local function walk(module, prefix, fn, seen)
  for _, key in ipairs(module._order) do
    local value, kind = rawget(module, key), module._kinds[key]
    if value ~= nil then
      local name = prefix .. key
      if kind == "module" then
        if not seen[value] then
          seen[value] = true
          fn(name, value, kind)
          walk(value, name .. ".", fn, seen)
        end
      else
        fn(name, value, kind)
      end
    end
  end
end

--- Ordered list of {name, tensor} for the parameters (each tensor once, under
-- the first name it was registered with: tied weights appear once).
function Module:named_parameters()
  local out, seen = {}, {}
  walk(self, "", function(name, v, kind)
    if kind == "param" and not seen[v] then
      seen[v] = true
      out[#out + 1] = {name, v}
    end
  end, {})
  return out
end

--- Ordered list of the parameter tensors.
function Module:parameters()
  local out = {}
  for i, p in ipairs(self:named_parameters()) do out[i] = p[2] end
  return out
end

--- Ordered list of {name, module} for every sub-module (not self).
function Module:named_modules()
  local out = {}
  walk(self, "", function(name, v, kind)
    if kind == "module" then out[#out + 1] = {name, v} end
  end, {})
  return out
end

--- Number of parameter elements (each tensor counted once).
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

--- name -> tensor for parameters and buffers (tied tensors under every name).
-- The tensors are the module's own (not copies): save them, do not modify them.
function Module:state_dict()
  local sd = {}
  walk(self, "", function(name, v, kind)
    if kind ~= "module" then sd[name] = v end
  end, {})
  return sd
end

--- Copies tensors from sd into the module.  With strict (the default) every
-- name must match both ways; shapes must always match.  Returns the lists of
-- missing and unexpected names.
function Module:load_state_dict(sd, opts)
  opts = util.check_options("load_state_dict", opts, {"strict"})
  local strict = opts.strict ~= false
  local own = self:state_dict()
  local missing, unexpected, problems = {}, {}, {}
  for name, t in pairs(own) do
    local src = sd[name]
    if src == nil then
      missing[#missing + 1] = name
    elseif not core.is_tensor(src) then
      problems[#problems + 1] = string.format("%s: expected a tensor, got %s", name, type(src))
    elseif t:numel() ~= src:numel() or t:shape_str() ~= src:shape_str() then
      problems[#problems + 1] = string.format("%s: shape %s in the checkpoint, %s in the model",
        name, src:shape_str(), t:shape_str())
    end
  end
  for name in pairs(sd) do
    if own[name] == nil then unexpected[#unexpected + 1] = name end
  end
  table.sort(missing)
  table.sort(unexpected)
  table.sort(problems)
  if strict then
    if #missing > 0 then problems[#problems + 1] = "missing: " .. table.concat(missing, ", ") end
    if #unexpected > 0 then problems[#problems + 1] = "unexpected: " .. table.concat(unexpected, ", ") end
  end
  if #problems > 0 then
    error("load_state_dict: " .. table.concat(problems, "; "), 2)
  end
  local previous = core.set_grad_enabled(false)
  local ok, err = pcall(function()
    for name, t in pairs(own) do
      if sd[name] ~= nil and sd[name] ~= t then t:copy(sd[name]) end
    end
  end)
  core.set_grad_enabled(previous)
  if not ok then error(err, 2) end
  return missing, unexpected
end

--- Sets training mode (dropout active) on this module and all sub-modules.
function Module:train(on)
  if on == nil then on = true end
  rawset(self, "training", on)
  for _, m in ipairs(self:named_modules()) do rawset(m[2], "training", on) end
  return self
end

--- Evaluation mode: train(false).
function Module:eval() return self:train(false) end

--- Drops every parameter's gradient.
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

--- Sets requires_grad on every parameter (false: freeze, e.g. a reference model).
function Module:requires_grad(on)
  if on == nil then on = true end
  for _, p in ipairs(self:parameters()) do p:requires_grad(on) end
  return self
end

--- Stores the frozen weight matrices -- parameters of two or more dims
-- (linear and embedding weights) that do not require gradients -- in dtype:
-- "bfloat16" or "float16" halve their memory (products still compute in
-- float32, see docs/memory.md), "float32" widens them back.  Trainable
-- tensors and 1-d ones (norms, biases) stay float32.  Tied weights stay tied
-- (they are read through the module that owns them).  The old tensors are
-- collected as it goes, so the model is never held twice.  Under
-- nn.without_init the new tensors are allocated, not filled (a loader fills
-- them).  Returns self.
function Module:frozen_weights_to(dtype)
  if dtype ~= "bfloat16" and dtype ~= "float16" and dtype ~= "float32" then
    error("frozen_weights_to: dtype must be 'bfloat16', 'float16' or 'float32' (got " .. tostring(dtype) .. ")", 2)
  end
  local modules = {self}
  for _, m in ipairs(self:named_modules()) do modules[#modules + 1] = m[2] end
  local previous = core.set_grad_enabled(false)
  local dropped = 0
  for _, m in ipairs(modules) do
    for _, key in ipairs(m._order) do
      local t = rawget(m, key)
      if m._kinds[key] == "param" and core.is_tensor(t) and t:dim() >= 2 and not t:needs_grad()
          and t:dtype() ~= dtype then
        rawset(m, key, nn.init_skipped() and core.empty(t:shape(), dtype) or t:to(dtype))
        dropped = dropped + t:numel() * (t:dtype() == "float32" and 4 or 2)
        t = nil
        if dropped > 256 << 20 then   -- the old tensors' memory back before it adds up
          collectgarbage()
          core.empty_cache()
          dropped = 0
        end
      end
    end
  end
  core.set_grad_enabled(previous)
  collectgarbage()
  core.empty_cache()
  return self
end

--- Activation checkpointing for the model's transformer blocks (those it runs
-- through nn.run_blocks): true or 1 keeps only each block's input and
-- recomputes the block in the backward pass; k > 1 keeps the input of every
-- k-th block and recomputes k blocks at a time; false or 0 turns it off.
-- It applies while gradients are recorded.  Returns self.
function Module:set_checkpointing(every)
  if every == true then every = 1 elseif every == false or every == nil then every = 0 end
  if math.type(every) ~= "integer" or every < 0 then
    error("set_checkpointing: expected true, false or a number of blocks >= 0 (got " .. tostring(every) .. ")", 2)
  end
  rawset(self, "_checkpoint_every", every)
  return self
end

--- Runs x through blocks (a list) as step(i, block, x) does for each, under
-- model's activation checkpointing (set_checkpointing): one recomputed
-- segment per k blocks when it is on, gradients are recorded and something
-- in the blocks or x requires them; plain calls otherwise.
function nn.run_blocks(model, blocks, x, step)
  local every = rawget(model, "_checkpoint_every") or 0
  local function trains()
    if x:needs_grad() then return true end
    for _, b in ipairs(blocks) do
      for _, p in ipairs(b:parameters()) do if p:needs_grad() then return true end end
    end
    return false
  end
  if every == 0 or not core.is_grad_enabled() or not trains() then
    for i, b in ipairs(blocks) do x = step(i, b, x) end
    return x
  end
  for first = 1, #blocks, every do
    local last = math.min(first + every - 1, #blocks)
    x = F.checkpoint(function(h)
      for i = first, last do h = step(i, blocks[i], h) end
      return h
    end, x)
  end
  return x
end

-- A one-line summary of a module's own settings, shown by tostring.
function Module:extra_repr() return "" end

function Module:__tostring()
  local lines = {getmetatable(self).__name .. "(" .. self:extra_repr()}
  local children = {}
  for _, key in ipairs(self._order) do
    if self._kinds[key] == "module" then children[#children + 1] = key end
  end
  if #children == 0 then return lines[1] .. ")" end
  for _, key in ipairs(children) do
    local s = tostring(rawget(self, key)):gsub("\n", "\n  ")
    lines[#lines + 1] = "  (" .. key .. "): " .. s
  end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

----------------------------------------------------------------------------
-- Containers

--- A list of modules, named 0, 1, 2, ... but indexed from 1 in Lua: list[1] is "0".
local ModuleList = Module:extend("ModuleList")
nn.ModuleList = ModuleList

function ModuleList:init(modules)
  rawset(self, "_list", {})
  for _, m in ipairs(modules or {}) do self:append(m) end
end

--- Adds a module at the end; its name is its 0-based position.
function ModuleList:append(m)
  local i = #self._list
  self._list[i + 1] = m
  track_field(self, tostring(i), m)
  return self
end

function ModuleList:__len() return #self._list end
ModuleList.__index = function(self, k)
  if type(k) == "number" then return rawget(self, "_list")[k] end
  return ModuleList[k]
end

function ModuleList:forward() error("ModuleList has no forward(); iterate over it", 2) end

--- Applies modules in order.
local Sequential = Module:extend("Sequential")
nn.Sequential = Sequential
Sequential.__len = ModuleList.__len
Sequential.__index = function(self, k)
  if type(k) == "number" then return rawget(self, "_list")[k] end
  return Sequential[k]
end
Sequential.append = ModuleList.append

function Sequential:init(...)
  rawset(self, "_list", {})
  for _, m in ipairs({...}) do self:append(m) end
end

function Sequential:forward(x)
  for _, m in ipairs(self._list) do x = m(x) end
  return x
end

----------------------------------------------------------------------------
-- Layers

-- While a loader that overwrites every parameter builds a model, weights
-- are allocated without drawing their random values (see nn.without_init).
local skip_init = false

--- Runs fn(...) with the random initialisation of Linear and Embedding
-- weights (and of models' reset_parameters) skipped: their tensors are
-- allocated but not filled.  For loaders that then overwrite every
-- parameter (la.models.from_pretrained), so that loading does not first draw
-- hundreds of millions of random numbers.  Returns fn's results.
function nn.without_init(fn, ...)
  local previous = skip_init
  skip_init = true
  local results = table.pack(pcall(fn, ...))
  skip_init = previous
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

--- Whether nn.without_init is in force (models' reset_parameters checks it).
function nn.init_skipped() return skip_init end

local function uniform(shape, bound)
  if skip_init then return core.empty(shape) end
  return (core.rand(shape) * (2 * bound) - bound):detach()
end

--- y = x W^T + b with W (out, in), as PyTorch's nn.Linear (same initialisation).
local Linear = Module:extend("Linear")
nn.Linear = Linear

function Linear:init(in_features, out_features, opts)
  opts = util.check_options("Linear", opts, {"bias"})
  local bound = 1 / math.sqrt(in_features)
  self.in_features, self.out_features = in_features, out_features
  self.weight = uniform({out_features, in_features}, bound):requires_grad()
  if opts.bias ~= false then self.bias = uniform({out_features}, bound):requires_grad() end
end

function Linear:forward(x) return F.linear(x, self.weight, self.bias) end

function Linear:extra_repr()
  return string.format("in=%d, out=%d, bias=%s", self.in_features, self.out_features, tostring(self.bias ~= nil))
end

--- Rows of a (num, dim) table picked by 0-based ids.
local Embedding = Module:extend("Embedding")
nn.Embedding = Embedding

function Embedding:init(num, dim)
  self.num, self.dim = num, dim
  self.weight = (skip_init and core.empty(num, dim) or core.randn(num, dim)):requires_grad()
end

function Embedding:forward(ids) return F.embedding(ids, self.weight) end
function Embedding:extra_repr() return string.format("%d, %d", self.num, self.dim) end

--- Layer normalisation over the last dim, with learned weight and bias.
local LayerNorm = Module:extend("LayerNorm")
nn.LayerNorm = LayerNorm

function LayerNorm:init(dim, opts)
  opts = util.check_options("LayerNorm", opts, {"eps", "bias"})
  self.dim, self.eps = dim, opts.eps or 1e-5
  self.weight = core.ones(dim):requires_grad()
  if opts.bias ~= false then self.bias = core.zeros(dim):requires_grad() end
end

function LayerNorm:forward(x) return F.layer_norm(x, self.weight, self.bias, self.eps) end
function LayerNorm:extra_repr() return string.format("%d, eps=%g", self.dim, self.eps) end

--- Root-mean-square normalisation over the last dim, with a learned weight.
local RMSNorm = Module:extend("RMSNorm")
nn.RMSNorm = RMSNorm

function RMSNorm:init(dim, opts)
  opts = util.check_options("RMSNorm", opts, {"eps"})
  self.dim, self.eps = dim, opts.eps or 1e-6
  self.weight = core.ones(dim):requires_grad()
end

function RMSNorm:forward(x) return F.rms_norm(x, self.weight, self.eps) end
function RMSNorm:extra_repr() return string.format("%d, eps=%g", self.dim, self.eps) end

--- Dropout, active only in training mode.
local Dropout = Module:extend("Dropout")
nn.Dropout = Dropout

function Dropout:init(p) self.p = p or 0.5 end
function Dropout:forward(x) return F.dropout(x, self.p, self.training) end
function Dropout:extra_repr() return string.format("p=%g", self.p) end

--- Activations as modules, for Sequential: GELU, ReLU, SiLU, Tanh, Sigmoid.
for name, fn in pairs({GELU = "gelu", ReLU = "relu", SiLU = "silu", Tanh = "tanh", Sigmoid = "sigmoid"}) do
  local cls = Module:extend(name)
  cls.forward = function(_, x) return x[fn](x) end
  nn[name] = cls
end

--- Two linear layers with an activation between: dim -> hidden -> dim.
-- Children are named c_fc and c_proj, as in GPT-2.
local MLP = Module:extend("MLP")
nn.MLP = MLP

function MLP:init(dim, hidden, opts)
  opts = util.check_options("MLP", opts, {"bias", "activation", "dropout"})
  self.c_fc = Linear(dim, hidden, {bias = opts.bias})
  self.c_proj = Linear(hidden, dim, {bias = opts.bias})
  self.activation = opts.activation or "gelu"
  self.dropout = opts.dropout or 0
end

function MLP:forward(x)
  local h = self.c_fc(x)
  h = h[self.activation](h)
  return F.dropout(self.c_proj(h), self.dropout, self.training)
end

--- Causal multi-head self-attention with a fused q, k, v projection (c_attn)
-- and an output projection (c_proj), as in GPT-2.
--   forward(x, opts): x (B, T, C); opts.key_mask (B, T or S), opts.segments
--   (B, T) for packed rows, opts.cache = {k = (B, H, S_max, D), v = ..., len = n}
--   for incremental decoding (keys and values of earlier positions).
local CausalSelfAttention = Module:extend("CausalSelfAttention")
nn.CausalSelfAttention = CausalSelfAttention

function CausalSelfAttention:init(dim, n_head, opts)
  opts = util.check_options("CausalSelfAttention", opts, {"bias", "dropout"})
  if dim % n_head ~= 0 then
    util.error(string.format("CausalSelfAttention: dim (%d) must be a multiple of n_head (%d)", dim, n_head))
  end
  self.dim, self.n_head = dim, n_head
  self.c_attn = Linear(dim, 3 * dim, {bias = opts.bias})
  self.c_proj = Linear(dim, dim, {bias = opts.bias})
  self.dropout = opts.dropout or 0
end

function CausalSelfAttention:forward(x, opts)
  opts = util.check_options("CausalSelfAttention", opts, {"key_mask", "segments", "cache"})
  local qkv = self.c_attn(x)
  local y
  if opts.cache then
    y = self:attend_cached(qkv, opts)
  else
    y = F.attention_qkv(qkv, self.n_head, {causal = true, key_mask = opts.key_mask, segments = opts.segments})
  end
  return F.dropout(self.c_proj(y), self.dropout, self.training)
end

--- Appends this step's keys and values to the cache and attends over all of them.
function CausalSelfAttention:attend_cached(qkv, opts)
  local cache = opts.cache
  local B, T, C3 = table.unpack(qkv:shape())
  local C, H = C3 // 3, self.n_head
  local D = C // H
  local function heads(i) return qkv:narrow(3, i * C + 1, C):view(B, T, H, D):transpose(2, 3) end
  local q, k, v = heads(0), heads(1), heads(2)
  local n = cache.len
  if n + T > cache.k:size(3) then
    util.error(string.format("attention cache holds %d positions; %d more do not fit", cache.k:size(3), n + T - cache.k:size(3)))
  end
  local previous = core.set_grad_enabled(false)
  cache.k:narrow(3, n + 1, T):copy(k)
  cache.v:narrow(3, n + 1, T):copy(v)
  core.set_grad_enabled(previous)
  local keys, values = cache.k:narrow(3, 1, n + T), cache.v:narrow(3, 1, n + T)
  local key_mask = opts.key_mask and opts.key_mask:narrow(2, 1, n + T)
  local y = F.attention(q, keys, values, {causal = true, offset = n, key_mask = key_mask})
  return y:transpose(2, 3):reshape(B, T, C)
end

function CausalSelfAttention:extra_repr() return string.format("dim=%d, heads=%d", self.dim, self.n_head) end

return nn
