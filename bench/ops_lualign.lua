-- bench/ops_lualign.lua -- the lualign side of the engine-ops benchmark.
--
--   lua5.4 bench/ops_lualign.lua SECTION [THREADS]
--
-- SECTION is "tiny", "elementwise" or "matmul".  Prints one line per case,
--
--   result <TAB> section <TAB> case <TAB> value <TAB> unit
--
-- (tiny cases also print "case|cpu", the same figure in CPU time),
-- which bench/ops.lua (the driver) collects.  bench/ops_torch.py measures the
-- same cases under the same names; keep the two in step.  Every value is the
-- median of several timed repeats after a warm-up, so one run is one "round"
-- of the driver's alternation.

local la = require "lualign"

local section = arg[1] or error("usage: ops_lualign.lua tiny|elementwise|matmul [threads]")
local threads = tonumber(arg[2] or "2")
la.set_num_threads(threads)
la.manual_seed(0)

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) // 2] end
  return (xs[n // 2] + xs[n // 2 + 1]) / 2
end

local function report(case, value, unit)
  io.write(string.format("result\t%s\t%s\t%.6g\t%s\n", section, case, value, unit))
  io.flush()
end

------------------------------------------------------------------------------
-- Per-op overhead on tiny tensors.
--
-- Each statement is compiled into a plain numeric for loop (as Python's timeit
-- does on the other side), so the figure is the op as a user writes it plus
-- one loop iteration, with no closure call around it.  Results go into a local
-- that is overwritten each iteration, so every op's result becomes garbage and
-- the cost of collecting it is part of the figure, as refcount freeing is part
-- of PyTorch's.

local TINY = {
  -- name, statement (a, b: (4, 4) float32; v: a (4,) view of a row)
  {"empty loop", "local c = a"},
  {"add", "local c = a + b"},
  {"mul", "local c = a * b"},
  {"exp", "local c = a:exp()"},
  {"sum", "local c = a:sum()"},
  {"matmul 4x4", "local c = a:matmul(b)"},
  {"view", "local c = a:view(16)"},
  {"transpose", "local c = a:t()"},
  {"softmax", "local c = a:softmax(-1)"},
  -- forward (matmul, add, relu, sum) + backward + clearing the two gradients
  {"autograd step", "local y = (x:matmul(w) + bias):relu():sum(); y:backward(); w.grad = nil; bias.grad = nil"},
}

local function compile_loop(stmt)
  local src = "local a, b, x, w, bias = ... ; return function(n) for _ = 1, n do "
              .. stmt .. " end end"
  return assert(load(src, "=tiny"))
end

-- Microseconds per iteration, wall-clock and CPU time (os.clock, the
-- process's CPU time: on a shared machine it leaves out the time the process
-- waited for a core).  The iteration count is grown until one timed run
-- takes at least 50 ms, then the medians of 5 such runs are kept.
local function time_loop(loop)
  local n = 1000
  loop(n)                                    -- warm-up
  while true do
    local t0 = la.clock()
    loop(n)
    if la.clock() - t0 >= 0.05 then break end
    n = n * 2
  end
  local wall, cpu = {}, {}
  for i = 1, 5 do
    local t0, c0 = la.clock(), os.clock()
    loop(n)
    wall[i] = (la.clock() - t0) / n * 1e6
    cpu[i] = (os.clock() - c0) / n * 1e6
  end
  return median(wall), median(cpu)
end

local function bench_tiny()
  local a, b = la.randn(4, 4), la.randn(4, 4)
  local x = la.randn(4, 4)
  local w, bias = la.randn(4, 4):requires_grad(), la.randn(4):requires_grad()
  for _, c in ipairs(TINY) do
    local loop = compile_loop(c[2])(a, b, x, w, bias)
    local wall, cpu = time_loop(loop)
    report(c[1], wall, "us")
    report(c[1] .. "|cpu", cpu, "us")
  end
end

------------------------------------------------------------------------------
-- Elementwise throughput on 16M float32 (64 MiB per tensor).
--
-- Bytes counted are those an ideal kernel must move: each input read once
-- and the output written once (so an add moves 3 x 64 MiB).  Out-of-place
-- ops allocate their result, as user code does; "add_" writes in place.

local N = 16 * 1024 * 1024
local MiB64 = N * 4

local ELEMENTWISE = {
  -- name, bytes moved, the call (a result is freed inside it by <close>, as
  -- PyTorch frees a result whose last reference goes)
  {"add", 3 * MiB64, function(t) local r <close> = t.a + t.b end},
  {"mul", 3 * MiB64, function(t) local r <close> = t.a * t.b end},
  {"exp", 2 * MiB64, function(t) local r <close> = t.a:exp() end},
  {"relu", 2 * MiB64, function(t) local r <close> = t.a:relu() end},
  {"sum", 1 * MiB64, function(t) local r <close> = t.a:sum() end},
  {"softmax rows 4096x4096", 2 * MiB64, function(t) local r <close> = t.m:softmax(-1) end},
  {"add_ in place", 3 * MiB64, function(t) t.c:add_(t.b) end},
}

-- Median seconds of one call over 7 timed calls after 2 warm-up calls.
local function time_call(fn, t)
  local runs = {}
  for i = 1, 9 do
    local t0 = la.clock()
    fn(t)
    if i > 2 then runs[#runs + 1] = la.clock() - t0 end
  end
  return median(runs)
end

local function bench_elementwise()
  local t = {a = la.randn(N), b = la.randn(N), c = la.randn(N)}
  t.m = t.a:view(4096, 4096)
  la.no_grad(function()
    for _, c in ipairs(ELEMENTWISE) do
      local s = time_call(c[3], t)
      report(c[1], c[2] / s / 1e9, "GB/s")
    end
  end)
end

------------------------------------------------------------------------------
-- Matmul GFLOP/s on training-shaped products (M x N x K: A is M x K, B is
-- K x N) and on the attention-shaped batched products.

local MATMUL = {
  -- name, batch, M, N, K
  {"1024x1024x1024", 1, 1024, 1024, 1024},
  {"2048x768x768", 1, 2048, 768, 768},
  {"2048x3072x768", 1, 2048, 3072, 768},
  {"2048x768x3072", 1, 2048, 768, 3072},
  {"2048x8192x384", 1, 2048, 8192, 384},
  {"48x 256x64x256 (scores @ V)", 48, 256, 64, 256},
  {"48x 256x256x64 (Q @ K^T)", 48, 256, 256, 64},
}

-- One product, its result freed inside the call (PyTorch frees its result
-- when the last reference goes, inside its timed call too).
local function product(a, b)
  local r <close> = a:matmul(b)
end

-- Median seconds per product: at least 3 timed calls, and more until 0.5 s
-- of timing have been spent, after one warm-up call.
local function time_matmul(a, b)
  product(a, b)
  local runs, spent = {}, 0
  while #runs < 3 or spent < 0.5 do
    local t0 = la.clock()
    product(a, b)
    local dt = la.clock() - t0
    runs[#runs + 1] = dt
    spent = spent + dt
  end
  return median(runs)
end

local function bench_matmul()
  la.no_grad(function()
    for _, c in ipairs(MATMUL) do
      local name, batch, M, N, K = table.unpack(c)
      local a, b
      if batch == 1 then a, b = la.randn(M, K), la.randn(K, N)
      else a, b = la.randn(batch, M, K), la.randn(batch, K, N) end
      local s = time_matmul(a, b)
      report(name, 2 * batch * M * N * K / s / 1e9, "GFLOP/s")
      a, b = nil, nil
      collectgarbage("collect")
    end
  end)
end

local sections = {tiny = bench_tiny, elementwise = bench_elementwise, matmul = bench_matmul}
local run = sections[section] or error("unknown section " .. section)
run()
