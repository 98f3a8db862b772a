-- Every C function of the binding, called with arguments of every wrong kind,
-- raises Lua errors (or works) without crashing and without leaking tensors:
-- after the calls and a full collection, the bytes of live tensors are what
-- they were before.  A binding function that makes or retains a tensor and
-- then raises a Lua error (a longjmp past its release) shows up here as
-- growth, with or without a sanitizer; under `make sanitize` LeakSanitizer
-- sees the lost headers too.
local la = require "lualign"
local core = require "lualign.core"

local function live()
  collectgarbage("collect")
  collectgarbage("collect")
  return la.memory().live_bytes
end

-- Arguments of every kind, tensors among them large enough that one leaked
-- reference is seen (64 KiB each).
local function samples()
  return {
    nil, false, true, 0, 1, -1, 2.5, 1e18, 0 / 0, "x", "float32", {}, {1, 2}, {la.zeros(2)},
    la.zeros(128, 128), la.ones(128, 128):long(), la.ones(128, 128):gt(0), la.zeros(0), la.tensor(1.0),
    la.randn(4, 8, 16, 32), la.tensor({0, 1, 2}),
  }
end

-- Calls fn with each sample in each of the first `arity` positions, the
-- others filled with `fill`, and with pseudo-random combinations; positions
-- listed in `keep` always get their `fill` (a path, so that nothing is
-- written outside a temporary folder).
local function hammer(fn, arity, fill, keep)
  local s = samples()
  local n = 21
  keep = keep or {}
  for pos = 1, arity do
    for i = 1, keep[pos] and 0 or n do
      local args = {}
      for k = 1, arity do args[k] = fill[k] end
      args[pos] = s[i]
      pcall(fn, table.unpack(args, 1, arity))
    end
  end
  local state = 12345
  for _ = 1, 60 do
    local args = {}
    for k = 1, arity do
      state = (state * 1103515245 + 12345) % 2147483648
      args[k] = s[state % n + 1]
      if keep[k] then args[k] = fill[k] end
    end
    pcall(fn, table.unpack(args, 1, arity))
  end
end

describe("the binding under wrong arguments", function()
  local x4 = function() return la.randn(2, 4, 3, 8) end

  it("core functions leak no tensor", function()
    local before = live()
    for _, name in ipairs({"tensor", "zeros", "ones", "full", "empty", "arange", "randint", "rand", "randn",
                           "cat", "stack", "where", "is_tensor"}) do
      hammer(core[name], 4, {la.zeros(2, 3), la.ones(2, 3), la.zeros(2, 3), 1})
    end
    assert.are.equal(before, live())
  end)

  it("la.where with a bad operand leaks nothing (it once kept the tensors made before the error)", function()
    local before = live()
    local cond, a = la.ones(256, 256):gt(0), la.ones(256, 256)
    for _ = 1, 10 do
      assert.is_false(pcall(la.where, cond, a, "x"))
      assert.is_false(pcall(la.where, cond, 2.5, {}))
      assert.is_false(pcall(a.masked_fill, a, cond, {}))
    end
    cond, a = nil, nil
    assert.are.equal(before, live())
  end)

  it("tensor methods leak no tensor", function()
    local before = live()
    for name, method in pairs(la.Tensor) do
      if type(method) == "function" and name ~= "apply" then
        hammer(function(...) return method(la.randn(3, 4), ...) end, 3, {1, la.zeros(3, 4), 1})
      end
    end
    assert.are.equal(before, live())
  end)

  it("fused kernels and loss functions leak no tensor", function()
    local before = live()
    for name, fn in pairs(core.nn) do
      if name ~= "sample" or true then
        hammer(fn, 6, {x4(), la.randn(8, 8), la.randn(8), {}, 1, {}})
      end
    end
    assert.are.equal(before, live())
  end)

  it("tokenizer functions leak nothing and never crash", function()
    local before = live()
    local tok = la.tokenizer.byte()
    for _, fn in pairs(core.bpe) do
      if fn ~= core.bpe.free then hammer(fn, 3, {tok._bpe, "hello", true}) end
    end
    assert.are.equal("hi", tok:decode(tok:encode("hi")))
    assert.are.equal(before, live())
  end)

  it("safetensors functions leak nothing", function()
    local before = live()
    local path = os.tmpname()
    for _, fn in pairs(core._safetensors) do
      hammer(fn, 3, {path, {w = la.ones(2)}, {}}, {true})
    end
    os.remove(path)
    assert.are.equal(before, live())
  end)
end)
