local la = require "lualign"

local function close(expected, t, tol)
  tol = tol or 1e-5
  local got = la.is_tensor(t) and t:totable() or t
  local function cmp(e, g, path)
    if type(e) == "table" then
      assert.are.equal(#e, #g, "length at " .. path)
      for i = 1, #e do cmp(e[i], g[i], path .. "[" .. i .. "]") end
    else
      assert(math.abs(e - g) <= tol * (1 + math.abs(e)),
        string.format("at %s: expected %.7g, got %.7g", path, e, g))
    end
  end
  cmp(expected, got, "")
end

-- Naive matrix product on Lua tables, the reference for BLAS.
local function naive_matmul(a, b)
  local c = {}
  for i = 1, #a do
    c[i] = {}
    for j = 1, #b[1] do
      local s = 0
      for k = 1, #b do s = s + a[i][k] * b[k][j] end
      c[i][j] = s
    end
  end
  return c
end

describe("elementwise arithmetic", function()
  local a = la.tensor({{1, 2, 3}, {4, 5, 6}}, "float32")
  local b = la.tensor({10, 20, 30}, "float32")

  it("broadcasts like NumPy, as methods and as operators", function()
    close({{11, 22, 33}, {14, 25, 36}}, a + b)
    close({{11, 22, 33}, {14, 25, 36}}, a:add(b))
    close({{-9, -18, -27}, {-6, -15, -24}}, a - b)
    close({{10, 40, 90}, {40, 100, 180}}, a * b)
    close({{0.1, 0.1, 0.1}, {0.4, 0.25, 0.2}}, a / b)
    close({{-1, -2, -3}, {-4, -5, -6}}, -a)
    local col = la.tensor({{1}, {2}}, "float32")
    close({{11, 21, 31}, {12, 22, 32}}, col + b)   -- (2,1) + (3,) -> (2,3)
  end)

  it("takes numbers on either side", function()
    close({{2, 3, 4}, {5, 6, 7}}, a + 1)
    close({{0, -1, -2}, {-3, -4, -5}}, 1 - a)
    close({{2, 1, 2 / 3}, {0.5, 0.4, 1 / 3}}, 2 / a)
    close({{1, 4, 9}, {16, 25, 36}}, a ^ 2)
    close({{2, 4, 8}, {16, 32, 64}}, 2 ^ a)
  end)

  it("promotes integers: int + int stays int, int / int is float, int + float is float", function()
    local i = la.tensor({7, -7})
    assert.are.equal("int64", (i + 1):dtype())
    assert.are.same({8, -6}, (i + 1):totable())
    assert.are.equal("float32", (i / 2):dtype())
    close({3.5, -3.5}, i / 2)
    assert.are.same({3, -4}, (i // 2):totable())   -- floor division
    assert.are.same({1, 1}, (i % 2):totable())     -- floor modulo, sign of the divisor
    assert.are.equal("float32", (i + 0.5):dtype())
    assert.are.equal("float32", (i + la.ones(2)):dtype())
  end)

  it("unary math", function()
    local x = la.tensor({-2, -0.5, 0.5, 2}, "float32")
    local function map(f)
      local r = {}
      for k, v in ipairs(x:totable()) do r[k] = f(v) end
      return r
    end
    local function sigmoid(v) return 1 / (1 + math.exp(-v)) end
    close(map(math.exp), x:exp())
    close(map(math.abs), x:abs())
    close(map(function(v) return math.log(math.abs(v)) end), x:abs():log())
    close(map(function(v) return math.sqrt(math.abs(v)) end), x:abs():sqrt())
    close(map(function(v) return (math.exp(v) - math.exp(-v)) / (math.exp(v) + math.exp(-v)) end), x:tanh())
    close(map(sigmoid), x:sigmoid())
    close(map(function(v) return math.max(v, 0) end), x:relu())
    close(map(function(v) return v * sigmoid(v) end), x:silu())
    local c = math.sqrt(2 / math.pi)
    local function tanh(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end
    close(map(function(v) return 0.5 * v * (1 + tanh(c * (v + 0.044715 * v ^ 3))) end), x:gelu())
    close({-2, -0.5, 0.5, 1}, x:clamp(nil, 1))
    close({-1, -0.5, 0.5, 1}, x:clamp(-1, 1))
    close({0, 0, 0.5, 2}, x:maximum(la.zeros(4)))
    close({-2, -0.5, 0, 0}, x:minimum(0))
    close(map(function(v) return math.log(1 + math.exp(v)) end), x:softplus())
  end)

  it("comparisons give bool tensors and where selects", function()
    local x = la.tensor({1, 2, 3}, "float32")
    assert.are.same({false, true, true}, x:gt(1):totable())
    assert.are.same({true, true, false}, x:le(2):totable())
    assert.are.same({false, true, false}, x:eq(la.tensor({0, 2, 0})):totable())
    assert.are.same({true, false, true}, x:ne(2):totable())
    assert.are.equal("bool", x:lt(2):dtype())
    close({1, -1, 3}, la.where(x:ne(2), x, -1))
    close({0, 2, 0}, x:masked_fill(x:ne(2), 0))
    assert.has_error(function() return x < x end,
      "compare: Lua's < and <= must return booleans, so they cannot compare tensors; use a:lt(b), a:le(b), a:gt(b) or a:ge(b)")
  end)

  it("propagates NaN through maximum and max like PyTorch", function()
    local x = la.tensor({1, 0 / 0, 3})
    assert.is_true(x:max():item() ~= x:max():item())
  end)

  it("in-place forms modify and return the tensor", function()
    local x = la.ones(3)
    x:add_(la.tensor({1, 2, 3}, "float32"), 2):mul_(2)
    close({6, 10, 14}, x)
    x:sub_(1):div_(la.full({3}, 2))
    close({2.5, 4.5, 6.5}, x)
  end)
end)

describe("reductions", function()
  local x = la.tensor({{1, 5, 3}, {4, 2, 6}}, "float32")

  it("sum and mean over everything and along a dim, with keepdim", function()
    close(21, x:sum():item())
    close({5, 7, 9}, x:sum(1))
    close({9, 12}, x:sum(2))
    close({9, 12}, x:sum(-1))
    assert.are.same({2, 1}, x:sum(2, true):shape())
    close(3.5, x:mean():item())
    close({3, 4}, x:mean(2))
    assert.are.equal("int64", la.tensor({1, 2, 3}):sum():dtype())
    assert.are.equal(6, la.tensor({1, 2, 3}):sum():item())
  end)

  it("sums a million float32 ones exactly (double accumulation)", function()
    assert.are.equal(1000001, la.ones(1000001):sum():item())
    assert.are.equal(1000001, la.ones(1000001, 1):sum(1):item())
  end)

  it("read a number as a dimension in every reduction, integral floats included", function()
    -- a dim read from JSON (a float) or computed with / names the same dimension
    local v, i = x:max(2.0)
    close({5, 6}, v)
    assert.are.same({1, 2}, i:totable())
    close({1, 2, 3}, (x:min(1.0)))
    close(x:sum(2):totable(), x:sum(4 / 2))
    close(x:softmax(1):totable(), x:softmax(1.0))
    -- the elementwise forms have their own names (a tensor argument to max stays elementwise)
    close({{3, 5, 3}, {4, 3, 6}}, x:maximum(3.0))
    close(x:maximum(la.full({2, 3}, 2)):totable(), x:max(la.full({2, 3}, 2)))
    assert.has_error(function() x:max(2.5) end,
      "max: a dimension must be an integer (got 2.5); the elementwise maximum with a number is t:maximum(x)")
    assert.has_error(function() x:sum(1.5) end, "sum: a dimension must be an integer (got 1.5)")
    assert.has_error(function() x:softmax(0.5) end, "softmax: a dimension must be an integer (got 0.5)")
  end)

  it("max and min with indices; argmax", function()
    close(6, x:max():item())
    close(1, x:min():item())
    local v, i = x:max(2)
    close({5, 6}, v)
    assert.are.same({1, 2}, i:totable())
    local v2, i2 = x:min(1, true)
    close({{1, 2, 3}}, v2)
    assert.are.same({{0, 1, 0}}, i2:totable())
    assert.are.same({1, 2}, x:argmax(2):totable())
    assert.are.same({0, 1, 0}, x:argmin(1):totable())
  end)

  it("logsumexp, softmax and log_softmax are stable for large inputs", function()
    local big = la.tensor({{1000, 1000}, {-1000, 0}}, "float32")
    close({1000 + math.log(2), math.log(1 + math.exp(-1000))}, big:logsumexp(2), 1e-6)
    close({{0.5, 0.5}, {0, 1}}, big:softmax(2))
    close({{-math.log(2), -math.log(2)}, {-1000, 0}}, big:log_softmax(2))
    local y = la.tensor({{1, 2}, {3, 4}}, "float32"):softmax(1)
    local e = 1 / (1 + math.exp(2))
    close({{e, e}, {1 - e, 1 - e}}, y)
    close(math.log(math.exp(1) + math.exp(2) + math.exp(3)), la.tensor({1, 2, 3}, "float32"):logsumexp():item())
  end)
end)

describe("matmul", function()
  it("matches a naive product for 2-d, batched 3-d, broadcast batch and vectors", function()
    la.manual_seed(3)
    local a, b = la.randn(5, 7), la.randn(7, 4)
    close(naive_matmul(a:totable(), b:totable()), a:matmul(b), 1e-5)
    local A, B = la.randn(3, 5, 7), la.randn(3, 7, 4)
    local C = A:matmul(B)
    assert.are.same({3, 5, 4}, C:shape())
    for i = 1, 3 do close(naive_matmul(A[i]:totable(), B[i]:totable()), C[i], 1e-5) end
    local D = A:matmul(b)   -- (3,5,7) x (7,4): one folded GEMM
    for i = 1, 3 do close(naive_matmul(A[i]:totable(), b:totable()), D[i], 1e-5) end
    local E = la.randn(2, 1, 5, 7):matmul(la.randn(3, 7, 2))
    assert.are.same({2, 3, 5, 2}, E:shape())
    local v = la.randn(7)
    assert.are.same({5}, a:matmul(v):shape())
    assert.are.same({4}, v:matmul(b):shape())
    assert.are.same({}, v:matmul(v):shape())
    close((v * v):sum():item(), v:matmul(v):item(), 1e-5)
  end)

  it("uses transposed and sliced views without copying wrongly", function()
    la.manual_seed(4)
    local a, b = la.randn(6, 5), la.randn(4, 6)
    local at, bt = a:t(), b:t()   -- (5,6) and (6,4), column-major views
    close(naive_matmul(at:totable(), bt:totable()), at:matmul(bt), 1e-5)
    local s = la.randn(8, 10):narrow(2, 3, 6)   -- row stride 10, 6 columns
    close(naive_matmul(s:totable(), bt:totable()), s:matmul(bt), 1e-5)
    local e = la.randn(1, 6):expand(3, 6)       -- stride 0 rows must be copied first
    close(naive_matmul(e:totable(), bt:totable()), e:matmul(bt), 1e-5)
  end)

  it("computes one-row and one-column products (matrix-vector) in every layout", function()
    -- large enough to leave the small-product loop and to be split across threads
    la.manual_seed(6)
    local K, N = 96, 700
    local function check(a, b)
      local got = a:matmul(b)
      close(naive_matmul(a:totable(), b:totable()), got, 1e-4)
      local ga, gb = a:clone():requires_grad(), b:clone():requires_grad()
      ga:matmul(gb):sum():backward()   -- dA = 1 B^T, dB = A^T 1: products with one column/row
      close(naive_matmul(la.ones(a:size(1), b:size(2)):totable(), b:t():totable()), ga.grad, 1e-4)
      close(naive_matmul(a:t():totable(), la.ones(a:size(1), b:size(2)):totable()), gb.grad, 1e-4)
    end
    local row, rowt = la.randn(1, K), la.randn(K, 1):t()
    local strided_row = la.randn(3, K):t():narrow(2, 2, 1):t()   -- (1, K) with element stride 3
    local w, wt = la.randn(K, N), la.randn(N, K):t()             -- row-major and Linear's W^T
    for _, a in ipairs({row, rowt, strided_row}) do
      check(a, w); check(a, wt)
    end
    local col, colt = la.randn(K, 1), la.randn(1, K):t()
    local m, mt = la.randn(N, K), la.randn(K, N):t()
    for _, b in ipairs({col, colt}) do
      check(m, b); check(mt, b)
    end
    check(la.randn(1, 2 * K), la.randn(2 * K, 1))                 -- a dot product
  end)

  it("gives the same result on one thread and on several", function()
    la.manual_seed(5)
    local a, b = la.randn(300, 200), la.randn(200, 100)
    local n = la.get_num_threads()
    la.set_num_threads(1)
    local one = a:matmul(b)
    local batched1 = la.randn(16, 64, 32):matmul(la.randn(16, 32, 64))
    la.set_num_threads(2)
    local two = a:matmul(b)
    la.set_num_threads(n)
    assert.is_true(one:allclose(two, 1e-5, 1e-5))
    assert.are.same({16, 64, 64}, batched1:shape())
  end)
end)
