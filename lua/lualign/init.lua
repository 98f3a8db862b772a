--- lualign: tensors, autograd and training recipes for aligning small language models.
--
--     local la = require "lualign"
--     local w = la.randn(8, 3):requires_grad()
--     local loss = la.randn(4, 8):matmul(w):relu():sum()
--     loss:backward()
--     print(w.grad)
--
-- Positions and dimensions given as Lua numbers are 1-based (-1 is the last);
-- values stored inside tensors that name entries (token ids, targets, indices)
-- are 0-based.  The engine is the C module `lualign.core`; this file adds the
-- parts written in Lua and loads the submodules (nn, optim, loss, ...) on first use.

-- OpenMP's worker threads wait for work by spinning unless told otherwise;
-- on a machine shared with other programs that spinning steals the cores the
-- work needs (a GPT step ran 3-5x slower under load).  libgomp reads the
-- policy once, when the engine loads, so it is set here, first, unless the
-- user chose one.
require("lualign.sys").setenv_default("OMP_WAIT_POLICY", "PASSIVE")

local core = require "lualign.core"

local la = {}
for name, fn in pairs(core) do
  if type(fn) == "function" then la[name] = fn end
end
la.Tensor = core.Tensor

la.float32, la.int32, la.int64, la.bool = "float32", "int32", "int64", "bool"
la.float, la.int, la.long = "float32", "int32", "int64"
la.bfloat16, la.float16, la.half = "bfloat16", "float16", "float16"

la.version = "0.1.0"

local Tensor = core.Tensor

--- Tensor printing, like PyTorch: values (elided when large), shape and dtype.
core.metatable.__tostring = require("lualign.printing").format

----------------------------------------------------------------------------
-- Gradient mode

local function restore_grad_mode(guard)
  core.set_grad_enabled(guard.previous)
end

local guard_mt = {__close = restore_grad_mode, __name = "lualign.GradGuard"}

local function with_grad_mode(enabled, fn, ...)
  if fn == nil then
    -- local _ <close> = la.no_grad(): restores the mode when the scope ends
    return setmetatable({previous = core.set_grad_enabled(enabled)}, guard_mt)
  end
  if type(fn) ~= "function" then
    error("expected a function, or no argument for the to-be-closed form", 3)
  end
  local previous = core.set_grad_enabled(enabled)
  local results = table.pack(pcall(fn, ...))
  core.set_grad_enabled(previous)
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

--- Runs fn(...) without recording gradients and returns its results; with no
-- argument, returns a guard for `local _ <close> = la.no_grad()`.
function la.no_grad(fn, ...) return with_grad_mode(false, fn, ...) end

--- The opposite of no_grad, for re-enabling recording inside it.
function la.enable_grad(fn, ...) return with_grad_mode(true, fn, ...) end

----------------------------------------------------------------------------
-- Anomaly detection

local function restore_anomaly_mode(guard)
  core.set_anomaly_enabled(guard.previous)
end

local anomaly_mt = {__close = restore_anomaly_mode, __name = "lualign.AnomalyGuard"}

--- Anomaly mode: every op that records gradients checks its output, and
-- backward() checks every gradient it computes; the first NaN or inf raises an
-- error naming the op and the shapes ("detect_anomaly: 'log' produced NaN (1 of
-- 3 values) in its output of shape (3,); its input has shape (3,)").
--   la.detect_anomaly(true | false)  switches it, returning the previous setting;
--   la.detect_anomaly(fn, ...)       runs fn(...) with it on and returns fn's results;
--   local _ <close> = la.detect_anomaly()   on until the end of the scope.
-- It costs a pass over each op's output, so it is for finding a bug, not for
-- every run.
function la.detect_anomaly(arg, ...)
  if arg == nil then
    return setmetatable({previous = core.set_anomaly_enabled(true)}, anomaly_mt)
  end
  if type(arg) == "boolean" then return core.set_anomaly_enabled(arg) end
  if type(arg) ~= "function" then
    error("detect_anomaly: expected true/false, a function, or no argument for the to-be-closed form", 2)
  end
  local previous = core.set_anomaly_enabled(true)
  local results = table.pack(pcall(arg, ...))
  core.set_anomaly_enabled(previous)
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

----------------------------------------------------------------------------
-- Constructors shaped like another tensor

function la.zeros_like(t, dtype) return core.zeros(t:shape(), dtype or t:dtype()) end
function la.ones_like(t, dtype) return core.ones(t:shape(), dtype or t:dtype()) end
function la.empty_like(t, dtype) return core.empty(t:shape(), dtype or t:dtype()) end
function la.full_like(t, value, dtype) return core.full(t:shape(), value, dtype or t:dtype()) end
function la.rand_like(t) return core.rand(t:shape()) end
function la.randn_like(t) return core.randn(t:shape()) end

--- Identity matrix of size n (or n x m).
function la.eye(n, m, dtype)
  if type(m) == "string" then m, dtype = nil, m end
  m = m or n
  local t = core.zeros(n, m, dtype)
  for i = 1, math.min(n, m) do t:set({i, i}, 1) end
  return t
end

----------------------------------------------------------------------------
-- Tensor methods written in Lua

--- The shape as a string, "(2, 3)".
function Tensor.shape_str(t)
  local s = t:shape()
  if #s == 1 then return "(" .. s[1] .. ",)" end
  return "(" .. table.concat(s, ", ") .. ")"
end

--- Applies fn to t and returns the result, for chaining: t:apply(f):sum().
function Tensor.apply(t, fn, ...) return fn(t, ...) end

--- Whether every element of two tensors is within atol + rtol * |b|.
function Tensor.allclose(a, b, rtol, atol)
  rtol, atol = rtol or 1e-5, atol or 1e-8
  return la.no_grad(function()
    local diff = (a - b):abs()
    local bound = b:abs() * rtol + atol
    return diff:le(bound):all()
  end)
end

--- True when every element is non-zero.
function Tensor.all(t) return t:bool():long():sum():item() == t:numel() end

--- True when some element is non-zero.
function Tensor.any(t) return t:bool():long():sum():item() > 0 end

-- Functional forms: la.exp(t), la.matmul(a, b), la.sum(t, 1), ...
for name, fn in pairs(Tensor) do
  if la[name] == nil then la[name] = fn end
end

----------------------------------------------------------------------------
-- Submodules, loaded on first use: la.nn, la.optim, la.loss, ...

local submodules = {
  gradcheck = "lualign.gradcheck", nn = "lualign.nn", optim = "lualign.optim",
  loss = "lualign.loss", data = "lualign.data", tokenizer = "lualign.tokenizer",
  checkpoint = "lualign.checkpoint", models = "lualign.models", plot = "lualign.plot",
  recipe = "lualign.recipe", lora = "lualign.lora", accumulate = "lualign.accumulate",
  dist = "lualign.dist",
}
-- (lualign.log, the training log, is reached with require: la.log is the logarithm.)

local function submodule_present(modname)
  return package.searchpath(modname, package.path) ~= nil
end

setmetatable(la, {
  __index = function(t, key)
    local modname = submodules[key]
    if not modname or not submodule_present(modname) then return nil end
    local mod = require(modname)
    rawset(t, key, mod)
    return mod
  end,
  -- The names __index can load, for the REPL's tab completion.
  __complete = function()
    local names = {}
    for key, modname in pairs(submodules) do
      if submodule_present(modname) then names[#names + 1] = key end
    end
    return names
  end,
})

return la
