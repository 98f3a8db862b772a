-- Each kind of misuse raises a Lua error that names the op and the shapes or
-- values involved, pointing at the caller's line; none can crash the process.
local la = require "lualign"

local h = require "helpers"
local fails_with = h.fails_with

describe("error messages", function()
  local a, b = la.zeros(2, 3), la.zeros(4)

  it("shape mismatches name the op and both shapes", function()
    fails_with("add: shapes (2, 3) and (4,) cannot be broadcast together (dimension 2: 3 vs 4)",
      function() return a + b end)
    fails_with("matmul: shapes (2, 3) and (4,) do not match", function() return a:matmul(b) end)
    fails_with("matmul: shapes (2, 3) and (2, 3) do not match (inner sizes 3 and 2)",
      function() return a:matmul(a) end)
    fails_with("cat: tensor 2 has shape (2, 2), which does not match (2, 3) outside dimension 1",
      function() return la.cat({a, la.zeros(2, 2)}) end)
    fails_with("view: shape (4, 2) has 8 elements but the tensor of shape (2, 3) has 6",
      function() return a:view(4, 2) end)
    fails_with("copy: source of shape (4,) does not broadcast to the destination's shape (2, 3)",
      function() return a:copy(b) end)
    fails_with("expand: cannot expand shape (2, 3) to (4, 3)", function() return a:expand(4, 3) end)
    fails_with("backward: gradient has shape (4,) but the tensor has shape (2, 3)", function()
      local x = la.zeros(2, 3):requires_grad()
      local y = x * 2
      y:backward(b)
    end)
  end)

  it("errors point at the calling line", function()
    local err = fails_with("add:", function() return a + b end)
    assert.is_truthy(err:find("errors_spec.lua:%d+: add:"))
  end)

  it("bad dtypes", function()
    fails_with("matmul: needs float32 tensors (got int64 and float32)",
      function() return la.tensor({{1}}):matmul(la.ones(1, 1)) end)
    fails_with("unknown dtype 'float64' (use float32, int32, int64, bool, bfloat16 or float16)",
      function() return la.zeros(2, "float64") end)
    fails_with("gather: the index must be an int32 or int64 tensor (got float32)",
      function() return a:gather(2, la.zeros(2, 1)) end)
    fails_with("add_: the result would be float32, which cannot be stored in place in a int64 tensor",
      function() return la.tensor({1}):add_(la.ones(1)) end)
  end)

  it("dims and positions out of range", function()
    fails_with("sum: dimension 3 out of range for a 2-d tensor (use 1..2 or -2..-1)",
      function() return a:sum(3) end)
    fails_with("transpose: dimension 0 out of range for a 2-d tensor", function() return a:transpose(0, 1) end)
    fails_with("select: position 3 is out of range for dimension 1 of size 2",
      function() return a:select(1, 3) end)
    fails_with("narrow: positions 3..4 are out of range for dimension 2 of a tensor of shape (2, 3)",
      function() return a:narrow(2, 3, 2) end)
    fails_with("index: position 5 is out of range for dimension 1 of size 4", function() return b[5] end)
    fails_with("unsqueeze: dimension 4 out of range for a 2-d tensor (use 1..3 or -3..-1)",
      function() return a:unsqueeze(4) end)
  end)

  it("indices stored in tensors out of range", function()
    fails_with("index_select: index 4 (element 2 of the index) is out of range for dimension 1 of size 4; indices in tensors are 0-based",
      function() return la.zeros(4, 2):index_select(1, la.tensor({0, 4})) end)
    fails_with("gather: index -1 (element 1 of the index) is out of range",
      function() return a:gather(2, la.tensor({{-1}, {0}})) end)
  end)

  it("wrong argument types", function()
    fails_with("bad argument #1 to 'add' (lualign.Tensor expected, got string)",
      function() return la.add("x", 1) end)
    fails_with("add: expected tensors or numbers (got lualign.Tensor and string)",
      function() return a:add("x") end)
    fails_with("cat: element 2 of the list is a number, not a tensor",
      function() return la.cat({a, 1}) end)
    fails_with("tensor: ragged nested table (a list of 1 where 2 were expected at depth 2)",
      function() return la.tensor({{1, 2}, {3}}) end)
    fails_with("tensor: elements must be numbers or booleans (found a string at depth 2)",
      function() return la.tensor({{1, "x"}}) end)
    fails_with("zeros: invalid size -3", function() return la.zeros(-3) end)
    fails_with("zeros: size -1 of dimension 2 is negative", function() return la.zeros(2, -1) end)
    fails_with("tensors have no settable field 'foo'", function() a.foo = 1 end)
  end)

  it("backward without a gradient on a non-scalar, or without a graph", function()
    fails_with("backward: the gradient can be implied only for a one-element tensor; this one has shape (2, 3)",
      function() (la.zeros(2, 3):requires_grad() * 2):backward() end)
    fails_with("backward: the tensor does not require grad and has no grad_fn",
      function() la.zeros(1):backward() end)
  end)

  it("using a closed tensor", function()
    local t = la.zeros(2)
    do local c <close> = t end
    fails_with("the tensor was closed", function() return t + 1 end)
    assert.are.equal("lualign.Tensor (closed)", tostring(t))
  end)
end)

describe("robustness", function()
  it("survives every method called with unusual arguments", function()
    local samples = {
      false, 0, 1, -1, 2.5, 1e18, -1e18, math.huge, 0 / 0, "x", "float32", {}, {1, 2}, {0},
      true, la.zeros(2, 3), la.ones(3):int(), la.zeros(0), la.tensor(1.0),
    }
    local n_calls = 0
    for name, method in pairs(la.Tensor) do
      if name ~= "apply" then
        for _, x in ipairs(samples) do
          local t = la.randn(2, 3)
          pcall(method, t, x)
          for _, y in ipairs({1, -1, 0, "x", la.zeros(3)}) do
            pcall(method, t, x, y)
            pcall(method, la.tensor({1, 2}), x, y)
            n_calls = n_calls + 2
          end
        end
      end
    end
    assert.is_true(n_calls > 1000)
  end)

  it("survives module functions called with unusual arguments", function()
    local samples = {0, -1, 2.5, 1e12, "x", {}, {1, 2}, {{1}, {2, 3}}, true, la.zeros(2, 3)}
    for _, name in ipairs({"tensor", "zeros", "ones", "full", "empty", "arange", "randint",
                           "rand", "randn", "cat", "stack", "where", "eye"}) do
      for _, x in ipairs(samples) do
        for _, y in ipairs(samples) do
          pcall(la[name], x, y)
          pcall(la[name], x, y, 1)
        end
      end
    end
  end)
end)
