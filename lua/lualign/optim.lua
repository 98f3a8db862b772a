--- lualign.optim: AdamW and SGD (each one fused C step over all parameters),
-- global gradient-norm clipping, and learning-rate schedules.
--
--     local opt = la.optim.AdamW(model, {lr = 3e-4, weight_decay = 0.1})
--     loss:backward()
--     la.optim.clip_grad_norm(model:parameters(), 1.0)
--     opt:step(); opt:zero_grad()
--
-- Parameters may be given as a module, a list of tensors, a list of {name,
-- tensor} pairs, or a list of groups {params = ..., weight_decay = ...}.
-- Those that do not require gradients (frozen: a LoRA model's base, a
-- reference model) are left out: the optimizer holds no state for them and
-- never changes them.
-- Weight decay applies by default only to tensors of two or more dims (weight
-- matrices and embeddings), not to biases or norm weights.

local core = require "lualign.core"
local util = require "lualign.util"
local K = core.nn

local optim = {}

-- Flattens the accepted forms into {name, tensor, group} entries.
local function collect(params)
  local entries = {}
  local function add(name, t, group)
    if not core.is_tensor(t) then util.error("optimizer: parameter " .. tostring(name) .. " is not a tensor") end
    entries[#entries + 1] = {name = name, tensor = t, group = group}
  end
  local function add_list(list, group)
    if type(list) == "table" and list.named_parameters then list = list:named_parameters() end
    for i, p in ipairs(list) do
      if core.is_tensor(p) then add(tostring(i), p, group) else add(p[1], p[2], group) end
    end
  end
  if type(params) == "table" and params[1] and type(params[1]) == "table" and params[1].params then
    for i, g in ipairs(params) do
      util.check_options("optimizer: parameter group " .. i, g, {"params", "weight_decay"}, "key")
      add_list(g.params, g)
    end
  else
    add_list(params, nil)
  end
  if #entries == 0 then util.error("optimizer: no parameters given") end
  local trainable = {}
  for _, e in ipairs(entries) do
    if e.tensor:needs_grad() then trainable[#trainable + 1] = e end
  end
  if #trainable == 0 then
    util.error(string.format("optimizer: none of the %d parameters requires gradients (all are frozen)", #entries))
  end
  return trainable
end

local function decays_by_default(t) return t:dim() >= 2 end

-- Shared by the optimizers: the parameter lists and per-parameter decay.
local function setup(self, params, opts, default_decay)
  self.entries = collect(params)
  self.params, self.decay = {}, {}
  local filter = opts.decay_filter or function(_, t) return decays_by_default(t) end
  for i, e in ipairs(self.entries) do
    self.params[i] = e.tensor
    local wd = e.group and e.group.weight_decay
    if wd == nil then wd = filter(e.name, e.tensor) and (opts.weight_decay or default_decay) or 0 end
    self.decay[i] = wd
  end
end

--- Drops every parameter's gradient (set to nil, freeing its memory).
local function zero_grad(self)
  for _, p in ipairs(self.params) do p.grad = nil end
end

----------------------------------------------------------------------------
-- AdamW (Loshchilov and Hutter 2019): Adam with decoupled weight decay.

local AdamW = {}
AdamW.__index = AdamW

--- opts: lr (1e-3), betas ({0.9, 0.999}), eps (1e-8), weight_decay (0.01),
-- decay_filter(name, tensor) -> bool.
function optim.AdamW(params, opts)
  opts = util.check_options("AdamW", opts, {"lr", "betas", "eps", "weight_decay", "decay_filter"})
  local self = setmetatable({}, AdamW)
  setup(self, params, opts, 0.01)
  local betas = opts.betas or {0.9, 0.999}
  self.lr, self.beta1, self.beta2, self.eps = opts.lr or 1e-3, betas[1], betas[2], opts.eps or 1e-8
  self.step_count = 0
  self.m, self.v = {}, {}
  return self
end

--- Applies one update from the parameters' .grad (those without one are skipped).
function AdamW:step()
  self.step_count = self.step_count + 1
  for i, p in ipairs(self.params) do
    if not self.m[i] and p:has_grad() then   -- (p.grad would make a handle that outlives zero_grad)
      self.m[i] = core.zeros(p:shape())
      self.v[i] = core.zeros(p:shape())
    end
  end
  K.adamw_step(self.params, self.m, self.v, self.decay,
    {lr = self.lr, beta1 = self.beta1, beta2 = self.beta2, eps = self.eps, step = self.step_count})
end

AdamW.zero_grad = zero_grad

--- The optimizer's state as name -> tensor (moments) plus scalar settings,
-- for checkpoints.
function AdamW:state_dict()
  local tensors = {}
  for i, e in ipairs(self.entries) do
    if self.m[i] then
      tensors["m." .. e.name] = self.m[i]
      tensors["v." .. e.name] = self.v[i]
    end
  end
  return tensors, {step = self.step_count, lr = self.lr}
end

--- Restores what state_dict() returned.
function AdamW:load_state_dict(tensors, scalars)
  for i, e in ipairs(self.entries) do
    local m, v = tensors["m." .. e.name], tensors["v." .. e.name]
    if m and v then self.m[i], self.v[i] = m:clone(), v:clone() end
  end
  self.step_count = tonumber(scalars and scalars.step) or self.step_count
  self.lr = tonumber(scalars and scalars.lr) or self.lr
end

----------------------------------------------------------------------------
-- SGD with momentum.

local SGD = {}
SGD.__index = SGD

--- opts: lr (1e-2), momentum (0), dampening (0), nesterov (false), weight_decay (0).
function optim.SGD(params, opts)
  opts = util.check_options("SGD", opts, {"lr", "momentum", "dampening", "nesterov", "weight_decay", "decay_filter"})
  local self = setmetatable({}, SGD)
  setup(self, params, opts, 0)
  self.lr, self.momentum = opts.lr or 1e-2, opts.momentum or 0
  self.dampening, self.nesterov = opts.dampening or 0, opts.nesterov or false
  self.buffers = {}
  return self
end

function SGD:step()
  if self.momentum ~= 0 then
    for i, p in ipairs(self.params) do
      if not self.buffers[i] and p:has_grad() then self.buffers[i] = core.zeros(p:shape()) end
    end
  end
  K.sgd_step(self.params, self.buffers, self.decay,
    {lr = self.lr, momentum = self.momentum, dampening = self.dampening, nesterov = self.nesterov})
end

SGD.zero_grad = zero_grad

----------------------------------------------------------------------------
-- Clipping and schedules

--- Scales all gradients so their global L2 norm is at most max_norm.
-- Returns the norm before clipping (NaN or inf when a gradient is not finite,
-- in which case nothing is scaled).
function optim.clip_grad_norm(params, max_norm)
  if type(params) == "table" and params.parameters then params = params:parameters() end
  return K.clip_grad_norm(params, max_norm or 0)
end

--- Learning-rate schedules: each returns a function step -> lr (steps from 1).
optim.schedule = {}

--- lr throughout.
function optim.schedule.constant(opts)
  if type(opts) ~= "number" then util.check_options("schedule.constant", opts, {"lr"}) end
  local lr = type(opts) == "number" and opts or opts.lr
  return function() return lr end
end

local function warmup_factor(step, warmup)
  if warmup and warmup > 0 and step <= warmup then return step / warmup end
  return nil
end

--- Linear warmup over `warmup` steps, then linear decay to `final_lr` at `total`.
function optim.schedule.linear(opts)
  util.check_options("schedule.linear", opts, {"lr", "warmup", "total", "final_lr"})
  local lr, warmup, total, final = opts.lr, opts.warmup or 0, opts.total, opts.final_lr or 0
  if not (total and total > 0) then util.error("schedule.linear: total steps required") end
  return function(step)
    local w = warmup_factor(step, warmup)
    if w then return lr * w end
    local t = math.min(1, (step - warmup) / math.max(1, total - warmup))
    return lr + (final - lr) * t
  end
end

--- Linear warmup, then cosine decay from lr to min_lr at `total`.
function optim.schedule.cosine(opts)
  util.check_options("schedule.cosine", opts, {"lr", "warmup", "total", "min_lr"})
  local lr, warmup, total, min_lr = opts.lr, opts.warmup or 0, opts.total, opts.min_lr or 0
  if not (total and total > 0) then util.error("schedule.cosine: total steps required") end
  return function(step)
    local w = warmup_factor(step, warmup)
    if w then return lr * w end
    local t = math.min(1, (step - warmup) / math.max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))
  end
end

return optim
