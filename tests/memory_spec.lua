-- Tensor memory lives outside Lua's heap; lualign paces the collector by the
-- bytes of live tensors so that loops never need collectgarbage().
local la = require "lualign"

local function rss_bytes()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("n", "n")
  f:close()
  return resident * 4096
end

local MiB = 1024 * 1024

-- One step of a small training-like loop on ~1 MB tensors: every op makes a
-- new 1 MiB tensor, and the backward pass makes as many again.
local function step(x, w)
  local h = (x * w):relu()
  local loss = (h * h):mean()
  loss:backward()
  la.no_grad(function() w:add_(w.grad, -0.01) end)
  w.grad = nil
  return loss
end

describe("memory", function()
  it("stays flat over 5,000 forward/backward steps without collectgarbage()", function()
    la.manual_seed(0)
    local x = la.randn(256, 1024)                 -- 1 MiB
    local w = la.randn(256, 1024):requires_grad()
    for _ = 1, 300 do step(x, w) end              -- warm up: allocator and collector settle
    local start, peak = rss_bytes(), 0
    for i = 1, 5000 do
      step(x, w)
      if i % 100 == 0 then peak = math.max(peak, rss_bytes()) end
    end
    local growth = rss_bytes() - start
    -- Each step makes ~7 MiB of tensors: 5,000 steps would be ~35 GiB if nothing
    -- were freed.  The pacing lets dead tensors reach at most its 64 MiB floor
    -- above what is alive before a full collection.
    assert.is_true(growth < 96 * MiB, string.format("RSS grew by %.1f MiB", growth / MiB))
    assert.is_true(peak - start < 128 * MiB, string.format("RSS peaked %.1f MiB above the start", (peak - start) / MiB))
    assert.is_true(la.memory().collections > 0)
  end)

  it("is the pacing that keeps it flat: with the collector stopped, memory grows", function()
    local x = la.randn(256, 1024)
    local w = la.randn(256, 1024):requires_grad()
    collectgarbage("collect")
    local before = la.memory().live_bytes
    collectgarbage("stop")
    for _ = 1, 100 do step(x, w) end
    local grown = la.memory().live_bytes - before
    collectgarbage("restart")
    collectgarbage("collect")
    assert.is_true(grown > 400 * MiB, string.format("only %.1f MiB accumulated", grown / MiB))
    assert.is_true(la.memory().live_bytes - before < 8 * MiB)
  end)

  it("frees a tensor at the end of its scope with <close>", function()
    collectgarbage("collect")
    local before = la.memory().live_bytes
    do
      local big <close> = la.zeros(1024, 1024)   -- 4 MiB
      assert.are.equal(before + 4 * MiB, la.memory().live_bytes)
    end
    assert.are.equal(before, la.memory().live_bytes)
  end)

  it("releases activations during backward", function()
    collectgarbage("collect")
    local x = la.randn(512, 512):requires_grad()
    local y = x:exp():tanh():sigmoid():sum()   -- each op saves a 1 MiB tensor
    local before = la.memory().live_bytes
    y:backward()
    -- Intermediates are unreachable from Lua; backward dropped the graph's references.
    collectgarbage("collect")
    assert.is_true(la.memory().live_bytes <= before)
  end)

  it("frees a large step's activations at the end of its backward pass", function()
    -- ~160 MiB of activations per step, more than the pacing's 64 MiB floor:
    -- left to the threshold they would outlive the step that made them.
    la.manual_seed(1)
    local x = la.randn(2048, 4096):requires_grad()   -- 32 MiB
    local function forward()   -- like model:loss: the intermediates die with the call
      local a = x:exp()
      local b = a:tanh()
      local c = b:sigmoid()
      return (c * a):mean()
    end
    local function big_step()
      forward():backward()
      x.grad = nil
    end
    big_step()
    local base = la.memory().live_bytes
    for i = 1, 4 do
      big_step()
      local extra = la.memory().live_bytes - base
      assert.is_true(extra < 16 * MiB, string.format("step %d left %.1f MiB alive", i, extra / MiB))
    end
  end)

  it("collects and retries when an allocation would pass the limit", function()
    collectgarbage("collect")
    local live = la.memory().live_bytes
    la.set_memory_limit(live + 48 * MiB)
    local retries = la.memory().oom_retries
    local ok, err = pcall(function()
      for _ = 1, 40 do
        local t = la.zeros(10 * MiB // 4)    -- 10 MiB each, dropped at once
        assert(t:numel() > 0)
      end
    end)
    local ok2, err2 = pcall(la.zeros, 64 * MiB // 4)
    la.set_memory_limit(nil)
    assert(ok, err)
    assert.is_true(la.memory().oom_retries > retries)
    assert.is_false(ok2)
    assert.is_truthy(tostring(err2):find("out of memory: cannot allocate 64.00 MiB for a tensor", 1, true))
  end)

  it("reports live and peak bytes", function()
    local m = la.memory()
    for _, k in ipairs({"live_bytes", "peak_bytes", "allocations", "gc_threshold", "collections"}) do
      assert.are.equal("number", type(m[k]))
    end
    assert.is_true(m.peak_bytes >= m.live_bytes)
  end)
end)
