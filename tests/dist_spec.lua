-- la.dist: in a world of one (every build), and across two processes under
-- `mpirun --oversubscribe -np 2` when lualign is built with Open MPI:
-- collectives and the gradient reducer (tests/dist/collectives.lua).
local la = require "lualign"
local sys = require "lualign.sys"
local dist = la.dist
local batch = require "lualign.data.batch"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

describe("la.dist in a world of one", function()
  it("is rank 0 of 1, and its collectives are the identity", function()
    assert.are.equal(0, dist.rank())
    assert.are.equal(1, dist.size())
    assert.is_true(dist.is_main())
    local t = la.tensor({1.5, 2})
    assert.are.equal(t, dist.all_reduce(t, "mean"))
    assert.is_true(t:eq(la.tensor({1.5, 2})):all())
    dist.broadcast(t, 0)
    local g = dist.all_gather(t)
    assert.are.same({1, 2}, g:shape())
    assert.are.equal(2.5, dist.sum(2.5))
    assert.are.equal("s", dist.broadcast_string("s"))
    dist.barrier()
  end)

  it("checks its arguments", function()
    assert.has_error(function() dist.broadcast(la.zeros(1), 1) end,
      "root 1 is not a rank of this world of 1 (ranks are 0 to 0)")
    assert.has_error(function() dist.all_reduce(la.zeros(1), "min") end,
      "unknown reduction 'min' (expected 'sum', 'mean' or 'max')")
    assert.has_error(function() dist.all_reduce(la.zeros(1, "bool")) end,
      "all_reduce: bool tensors cannot be reduced (convert to int32 first)")
    assert.has_error(function() dist.data_parallel({la.ones(1)}) end,
      "data_parallel: the model has no parameter that requires grad")
    assert.has_error(function() dist.data_parallel({la.ones(1):requires_grad()}, {bucket = 1}) end)
  end)

  it("data_parallel is plain training: loss and gradients untouched", function()
    la.manual_seed(3)
    local w = la.randn(4, 2):requires_grad()
    local dp = dist.data_parallel({w})
    assert.is_nil(dp:stats())
    local loss = la.randn(3, 4):matmul(w):square():mean()
    assert.are.equal(loss, dist.global_mean(loss, 6))
    local expected = la.no_grad(function() return w:clone() end)
    dp:backward(loss)
    assert.is_truthy(w.grad)
    assert.is_true(w:eq(expected):all())
    assert.are.same({a = 1, b = "x"}, dist.mean_metrics({a = 1, b = "x"}, 3))
  end)

  it("global_mean rescales a share's mean to the global batch's", function()
    local loss = la.tensor(2.0)
    assert.are.equal(0.5, dist.global_mean(loss, 2, 8):item())
    local empty = dist.global_mean(loss, 0, 8)
    assert.are.equal(0, empty:item())
    assert.is_false(empty:needs_grad())
  end)
end)

describe("Loader:shard", function()
  local function ids_of(loader, epoch)
    local out = {}
    for b in loader:epoch(epoch) do out[#out + 1] = b.items end
    return out
  end
  local function make() return batch.loader({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, function(list)
    return {items = list} end, {batch_size = 5, seed = 4, drop_last = true}) end

  it("splits every batch into contiguous shares whose union is one process's batch", function()
    local whole = ids_of(make(), 2)
    for _, size in ipairs({2, 3}) do
      local shares = {}
      for r = 0, size - 1 do shares[r] = ids_of(make():shard(r, size), 2) end
      for k, items in ipairs(whole) do
        local joined = {}
        for r = 0, size - 1 do
          assert.is_true(#shares[r][k] >= 1)
          for _, x in ipairs(shares[r][k]) do joined[#joined + 1] = x end
        end
        assert.are.same(items, joined)
      end
    end
  end)

  it("refuses shares with nothing in them and bad ranks", function()
    local loader = batch.loader({1, 2, 3}, function(list) return {items = list} end, {batch_size = 3})
    loader:shard(3, 4)
    assert.has_error(function() loader:epoch(1)() end, "loader: batch 1 of epoch 1 has 3 unit(s), fewer "
      .. "than the 4 processes sharing it; use batches of at least 4 (or drop_last = true)")
    assert.has_error(function() loader:shard(2, 2) end,
      "shard: rank must be 0 to size - 1 and size at least 1 (got rank 2 of 2)")
  end)
end)

----------------------------------------------------------------------------
-- Across two processes

local mpirun = io.popen("command -v mpirun 2>/dev/null"):read("l")
local with_mpi = dist.built_with_mpi() and mpirun ~= nil

-- Open MPI refuses to run as root unless told; two ranks on two cores (or
-- fewer) need --oversubscribe; each rank computes on one thread.
local function launch(np, args)
  return string.format("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 %s --oversubscribe "
    .. "--bind-to none -x OMP_NUM_THREADS=1 -np %d bin/lualign %s", mpirun or "mpirun", np, args)
end

if not with_mpi then
  describe("la.dist across processes", function()
    pending("lualign is built without Open MPI (install libopenmpi-dev and openmpi-bin, then make test)")
  end)
  return
end

require("c_tests")(_ENV, "la.dist across 2 processes (mpirun -np 2)", "tests/dist/collectives.lua",
  launch(2, "tests/dist/collectives.lua"))
