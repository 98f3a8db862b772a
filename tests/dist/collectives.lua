-- la.dist across processes: run under `mpirun -np 2 bin/lualign` by
-- tests/dist_spec.lua.  Every rank runs every test; rank 0 prints, for each,
-- "ok NAME" or "FAIL NAME: rank R: why" (the format of tests/c_tests.lua) and
-- a final "N passed, N failed".
package.path = "tests/?.lua;" .. package.path
local la = require "lualign"
local dist = la.dist
local batch = require "lualign.data.batch"
local fails_with = require("helpers").fails_with

local rank, size = dist.rank(), dist.size()
la.set_num_threads(1)

local results = {}
local function test(name, fn)
  local ok, err = pcall(fn)
  results[#results + 1] = {name = name, ok = ok, why = ok and "" or tostring(err)}
end

local function check(cond, fmt, ...)
  if not cond then error(string.format(fmt, ...), 2) end
end

local function max_diff(a, b) return (a - b):abs():max():item() end

----------------------------------------------------------------------------

test("world", function()
  check(size == 2, "size %d, expected 2", size)
  check(rank == 0 or rank == 1, "rank %s", tostring(rank))
  check(dist.is_main() == (rank == 0), "is_main on rank %d", rank)
  check(dist.launched() and dist.built_with_mpi(), "launched %s, built with MPI %s",
    tostring(dist.launched()), tostring(dist.built_with_mpi()))
end)

test("broadcast", function()
  local t = la.tensor({{1, 2, 3}, {4, 5, 6}}) * (rank + 1)
  dist.broadcast(t, 1)
  check(t:eq(la.tensor({{2, 4, 6}, {8, 10, 12}})):all(), "got %s", tostring(t))
  -- a non-contiguous view is written through to its base
  local base = la.arange(0, 6, 1, "float32"):view(2, 3) + 10 * rank
  dist.broadcast(base:t(), 0)
  check(base:eq(la.arange(0, 6, 1, "float32"):view(2, 3)):all(), "through a view: %s", tostring(base))
end)

test("all_reduce", function()
  local t = la.tensor({1.5, -2, 4}) * (rank + 1)
  dist.all_reduce(t)
  check(t:eq(la.tensor({4.5, -6, 12})):all(), "sum: %s", tostring(t))
  local m = la.tensor({1.5, -2, 4}) * (rank + 1)
  dist.all_reduce(m, "mean")
  check(m:eq(la.tensor({2.25, -3, 6})):all(), "mean: %s", tostring(m))
  local x = la.tensor({rank, 10 - rank})
  dist.all_reduce(x, "max")
  check(x:eq(la.tensor({1, 10})):all() and x:dtype() == "int64", "max: %s", tostring(x))
  local big = la.tensor({2 ^ 53 + rank})      -- int64 sums stay exact
  dist.all_reduce(big)
  check(big:item() == 2 ^ 54 + 1, "int64 sum %d", big:item())
end)

test("all_gather", function()
  local g = dist.all_gather(la.tensor({rank, rank * 10}))
  check(g:eq(la.tensor({{0, 0}, {1, 10}})):all(), "got %s", tostring(g))
  local b = dist.all_gather(la.tensor({rank == 1, true}))
  check(b:dtype() == "bool" and b:eq(la.tensor({{false, true}, {true, true}})):all(), "bools: %s", tostring(b))
end)

test("different_shapes_fail_on_every_rank", function()
  fails_with("all_reduce on rank " .. rank .. " of 2: the ranks passed different tensors: rank 0 has (2,) "
    .. "float32, rank 1 has (3,) float32", function() dist.all_reduce(la.zeros(2 + rank)) end)
  fails_with("broadcast on rank " .. rank .. " of 2: the ranks passed different tensors: rank 0 has (2, 2) "
    .. "float32, rank 1 has (2, 2) int64", function() dist.broadcast(la.zeros(2, 2, rank == 0 and "float32" or "int64")) end)
end)

test("argument_errors", function()
  fails_with("root 2 is not a rank of this world of 2 (ranks are 0 to 1)", function() dist.broadcast(la.zeros(1), 2) end)
  fails_with("unknown reduction 'avg'", function() dist.all_reduce(la.zeros(1), "avg") end)
  fails_with("'mean' needs a float32 tensor", function() dist.all_reduce(la.zeros(1, "int32"), "mean") end)
  local w = la.zeros(2):requires_grad()
  fails_with("all_reduce: cannot modify in place a tensor that requires grad", function() dist.all_reduce(w) end)
end)

test("numbers_and_strings", function()
  check(dist.sum(rank + 0.25) == 1.5, "sum of numbers")
  local s = dist.sum({1, rank})
  check(s[1] == 2 and s[2] == 1, "sum of a list")
  check(dist.max(rank * 7) == 7, "max")
  check(dist.broadcast_string(rank == 1 and "from one\0with a zero" or nil, 1) == "from one\0with a zero",
    "broadcast_string")
  local m = dist.mean_metrics({acc = rank == 0 and 1.0 or 0.0, name = "x"}, rank == 0 and 3 or 1)
  check(m.acc == 0.75 and m.name == "x", "mean_metrics weighted by the shares: %s", tostring(m.acc))
  fails_with("the ranks passed lists of different lengths (from 1 to 2 numbers)",
    function() dist.sum(rank == 0 and {1} or {1, 2}) end)
end)

test("broadcast_state", function()
  local tensors, meta
  if rank == 0 then tensors, meta = {a = la.tensor({{1, 2}}), b = la.tensor({7}, "int32")}, {step = "12"} end
  local t, m = dist.broadcast_state(tensors, meta)
  check(t.a:eq(la.tensor({{1, 2}})):all() and t.b:dtype() == "int32" and t.b:item() == 7, "tensors")
  check(m.step == "12", "metadata")
  local none, nmeta = dist.broadcast_state(nil, nil)
  check(none == nil and nmeta == nil, "nothing to share gives nil everywhere")
end)

----------------------------------------------------------------------------
-- Gradients: a global batch of 4 rows, split 2 + 2, with unequal numbers of
-- target tokens per row, against one process's gradient of the whole batch.

local config = {vocab_size = 32, n_positions = 16, n_embd = 16, n_layer = 2, n_head = 2}
la.manual_seed(11)
local ids = la.randint(0, 32, {4, 8})
local targets = la.randint(0, 32, {4, 8})
for t = 1, 8 do                     -- rows 1 and 2 (rank 0's) keep fewer targets
  if t > 2 then targets:set({1, t}, -100) end
  if t > 5 then targets:set({2, t}, -100) end
end

local function fresh_model()
  la.manual_seed(5)
  return la.models.gpt(config)
end

local function loss_of(model, rows_from, n_rows)
  local logits = model(ids:narrow(1, rows_from, n_rows))
  return la.loss.cross_entropy(logits, targets:narrow(1, rows_from, n_rows))
end

local reference = fresh_model()
loss_of(reference, 1, 4):backward()
local ref_grads = {}
for i, p in ipairs(reference:parameters()) do ref_grads[i] = p.grad end

local function same_as_reference(model, what)
  for i, p in ipairs(model:parameters()) do
    check(p.grad, "%s: parameter %d has no gradient", what, i)
    local scale = ref_grads[i]:abs():max():item() + 1e-3
    local d = max_diff(p.grad, ref_grads[i])
    check(d <= 1e-5 * scale, "%s: parameter %d differs from one process's by %.3g (scale %.3g)", what, i, d, scale)
  end
end

test("gradients_equal_one_process", function()
  local model = fresh_model()
  if rank == 1 then la.no_grad(function() model:parameters()[1]:add_(1) end) end   -- rank 0's must win
  local dp = dist.data_parallel(model, {bucket_mb = 0.004})
  local loss, info = loss_of(model, 2 * rank + 1, 2)
  loss = dist.global_mean(loss, info.tokens)
  dp:backward(loss)
  same_as_reference(model, "data-parallel")
  local st = dp:stats()
  check(st.buckets > 3 and st.steps == 1, "%d buckets, %d steps", st.buckets, st.steps)
  check(st.launched_early >= st.buckets - 1, "only %d of %d buckets were sent during the pass",
    st.launched_early, st.buckets)
end)

test("accumulated_gradients_equal_one_process", function()
  local model = fresh_model()
  local dp = dist.data_parallel(model)
  local micro = {}
  for k = 1, 2 do
    micro[k] = {loss_of(model, 2 * rank + k, 1)}
  end
  local total = dist.sum(micro[1][2].tokens + micro[2][2].tokens)
  for k = 1, 2 do
    dp:backward(dist.global_mean(micro[k][1], micro[k][2].tokens, total), {sync = k == 2})
  end
  same_as_reference(model, "accumulated")
end)

test("empty_share_still_exchanges", function()
  local model = fresh_model()
  local dp = dist.data_parallel(model)
  local loss, n
  if rank == 0 then
    local info
    loss, info = loss_of(model, 1, 4)
    n = info.tokens
  else
    loss, n = nil, 0
  end
  dp:backward(dist.global_mean(loss, n))
  same_as_reference(model, "rank 1 without data")
end)

test("parameters_some_ranks_do_not_reach", function()
  local a, b, c = la.ones(2):requires_grad(), la.ones(3):requires_grad(), la.ones(1):requires_grad()
  local dp = dist.data_parallel({a, b, c}, {bucket_mb = 1e-5})
  local loss = (a * (rank + 1)):sum()
  if rank == 1 then loss = loss + (b * 3):sum() end
  dp:backward(loss)
  check(a.grad:eq(la.ones(2) * 3):all(), "a.grad %s", tostring(a.grad))
  check(b.grad and b.grad:eq(la.ones(3) * 3):all(), "b.grad %s (reached on rank 1 only)", tostring(b.grad))
  check(c.grad == nil, "c.grad %s (reached on no rank)", tostring(c.grad))
end)

test("different_models_fail_on_every_rank", function()
  local p = {la.ones(2):requires_grad()}
  if rank == 1 then p[2] = la.ones(2):requires_grad() end
  fails_with("the ranks' parameter lists differ", function() require("lualign.core").dist.Reducer(p) end)
  fails_with("broadcast_parameters on rank " .. rank .. " of 2: the ranks' models differ (from 1 to 2 tensors)",
    function() dist.data_parallel(p) end)
end)

test("shard_sizes", function()
  local loader = batch.loader({1, 2, 3, 4, 5}, function(list) return {items = list} end,
                                {batch_size = 5, shuffle = false})
  dist.data_parallel({la.ones(1):requires_grad()}):shard(loader)
  local b = loader:epoch(1)()
  local want = rank == 0 and {1, 2} or {3, 4, 5}
  check(#b.items == #want and b.items[1] == want[1], "rank %d got %d items from %s", rank, #b.items,
    tostring(b.items[1]))
end)

----------------------------------------------------------------------------
-- Every rank's results, printed by rank 0.

local lines = {}
for _, r in ipairs(results) do
  lines[#lines + 1] = (r.ok and "1" or "0") .. "\t" .. r.name .. "\t" .. r.why:gsub("[\t\n]", " ")
end
local mine = table.concat(lines, "\n")
local per_rank = {}
for r = 0, size - 1 do
  per_rank[r] = {}
  for line in (dist.broadcast_string(rank == r and mine or nil, r) .. "\n"):gmatch("([^\n]*)\n") do
    local ok, name, why = line:match("^(%d)\t([^\t]*)\t(.*)$")
    if ok then per_rank[r][name] = ok == "1" and true or why end
  end
end
if dist.is_main() then
  local passed, failed = 0, 0
  for _, r in ipairs(results) do
    local why
    for k = 0, size - 1 do
      local got = per_rank[k][r.name]
      if got ~= true and not why then why = string.format("rank %d: %s", k, got or "did not run it") end
    end
    if why then failed = failed + 1; print("FAIL " .. r.name .. ": " .. why)
    else passed = passed + 1; print("ok " .. r.name) end
  end
  print(string.format("%d passed, %d failed", passed, failed))
end
