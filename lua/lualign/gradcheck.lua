--- Finite-difference check of autograd's gradients.
--
--     local ok, report = la.gradcheck(function(a, b) return (a * b):sum(1) end, {a, b})
--     assert(ok, report)
--
-- The output is reduced to one number s = sum_k w_k f_k with fixed pseudo-random
-- weights w, summed in Lua's double precision.  For each element x_i of each input
-- that requires grad, the central difference
--     (s(x_i + h) - s(x_i - h)) / (x_i+ - x_i-)
-- (divided by the step actually stored in float32, not the nominal 2h) is compared
-- with the analytic gradient of s, which is backward(w) read from x.grad.
--
-- Tolerance, per element: |numeric - analytic| <= atol + rtol * |analytic| + noise,
-- where noise = 8 * 2^-24 * sum_k |w_k f_k| / (x_i+ - x_i-) bounds the effect of float32
-- rounding in the outputs (a few ulps each, amplified by dividing by the step), and
-- rtol (1e-2) covers the O(h^2) truncation error of central differences at h = 1e-2
-- for functions whose third derivative is of order one.  A wrong gradient (a
-- missing factor, a wrong sign, a broadcast summed the wrong way) misses by far more.

local core = require "lualign.core"
local util = require "lualign.util"

-- Weights in [-1, -0.25] U [0.25, 1], from a fixed LCG so that checking never
-- disturbs the user's random stream and never lets a weight hide an error.
local function weights(n)
  local w, state = {}, 12345
  for i = 1, n do
    state = (state * 1103515245 + 12345) % 2147483648
    local u = state / 2147483648
    w[i] = (u < 0.5 and -1 or 1) * (0.25 + 1.5 * math.abs(u - 0.5))
  end
  return w
end

local function flat_values(t)
  return t:reshape(-1):totable()
end

-- Iterates over every index of a shape, as lists of 1-based positions.
local function positions(shape)
  local pos, done = {}, false
  for d = 1, #shape do
    pos[d] = 1
    if shape[d] == 0 then done = true end
  end
  local first = true
  return function()
    if done then return nil end
    if first then first = false; return pos end
    for d = #shape, 1, -1 do
      if pos[d] < shape[d] then pos[d] = pos[d] + 1; return pos end
      pos[d] = 1
    end
    done = true
    return nil
  end
end

--- Checks the gradients of fn at inputs (a list; tensors among them that
-- require grad are checked).  Returns true, or false and a report naming the
-- input, the position and both values.
local function gradcheck(fn, inputs, opts)
  opts = util.check_options("gradcheck", opts, {"eps", "rtol", "atol", "n"})
  local h, rtol, atol = opts.eps or 1e-2, opts.rtol or 1e-2, opts.atol or 1e-4
  local n_inputs = opts.n or #inputs
  local function call() return fn(table.unpack(inputs, 1, n_inputs)) end

  for i = 1, n_inputs do
    if core.is_tensor(inputs[i]) then inputs[i].grad = nil end
  end
  local out = call()
  assert(core.is_tensor(out), "gradcheck: the function must return a tensor")
  local w = weights(out:numel())
  local wt = core.tensor(#w > 0 and w or {}, "float32"):reshape(out:shape())
  out:backward(wt)

  local function projection()
    local previous = core.set_grad_enabled(false)
    local ok, values = pcall(function() return flat_values(call()) end)
    core.set_grad_enabled(previous)
    if not ok then error(values, 0) end
    local s, mag = 0.0, 0.0
    for k, v in ipairs(values) do
      s = s + w[k] * v
      mag = mag + math.abs(w[k] * v)
    end
    return s, mag
  end

  local worst, failures = 0, {}
  for i = 1, n_inputs do
    local x = inputs[i]
    if core.is_tensor(x) and x:needs_grad() and x:is_leaf() then
      local g = x.grad
      local previous = core.set_grad_enabled(false)
      local ok, err = pcall(function()
        for pos in positions(x:shape()) do
          local x0 = x:get(pos)
          x:set(pos, x0 + h)
          local xp = x:get(pos)
          local sp, mp = projection()
          x:set(pos, x0 - h)
          local xm = x:get(pos)
          local sm, mm = projection()
          x:set(pos, x0)
          local numeric = (sp - sm) / (xp - xm)
          local analytic = g and g:get(pos) or 0.0
          local noise = 8 * 2 ^ -24 * math.max(mp, mm) / (xp - xm)
          local err = math.abs(numeric - analytic)
          local tol = atol + rtol * math.abs(analytic) + noise
          worst = math.max(worst, err / tol)
          if err > tol and #failures < 5 then
            failures[#failures + 1] = string.format(
              "input %d at {%s}: numeric %.6g, analytic %.6g (|diff| %.3g > tolerance %.3g)",
              i, table.concat(pos, ", "), numeric, analytic, err, tol)
          end
        end
      end)
      core.set_grad_enabled(previous)
      if not ok then error(err, 0) end
    end
  end
  if #failures > 0 then
    return false, "gradcheck failed:\n  " .. table.concat(failures, "\n  ")
  end
  return true, string.format("gradcheck passed (worst error %.2f of tolerance)", worst)
end

return gradcheck
