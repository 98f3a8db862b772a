--- lualign.dist (la.dist): training across processes and machines, on MPI.
--
--     mpirun -np 4 lualign recipes/sft.lua base=runs/pretrain     -- docs/distributed.md
--
-- Every process (rank) runs the same script.  Started by Open MPI's
-- launcher (mpirun), the ranks form a world of `la.dist.size()` processes;
-- started any other way -- or in a build without Open MPI -- the world is this
-- one process, and every call below is the identity, so a script written for
-- N processes runs unchanged in one, exactly as it would without them.
-- Ranks are numbered from 0, as MPI numbers them; rank 0 is the main one.
--
-- Collectives (every rank must call them, in the same order, with tensors of
-- the same shape and dtype -- checked, and an error on every rank otherwise):
--     la.dist.broadcast(t, root)        root's values into t everywhere
--     la.dist.all_reduce(t, op)         t = sum / mean / max over the ranks, in place
--     la.dist.all_gather(t)             (size, ...) tensor of every rank's t
--     la.dist.barrier()
--
-- Data parallelism: each rank takes a share of every global batch, and the
-- gradients are summed across the ranks during the backward pass:
--     local dp = la.dist.data_parallel(model)      -- rank 0's weights everywhere
--     dp:shard(loader)                             -- this rank's part of each batch
--     local loss, info = model_loss(batch)         -- the mean over this rank's tokens
--     loss = la.dist.global_mean(loss, info.tokens) -- ... rescaled to the global batch's
--     dp:backward(loss)                            -- gradients of the global mean
--     metrics.loss = la.dist.sum(loss:item())

local core = require "lualign.core"
local sys = require "lualign.sys"
local util = require "lualign.util"
local C = core.dist

local dist = {}

-- Calls fn (of core.dist), raising its error at the first line outside
-- lualign, as the functions taken from core.dist directly do.
local function checked(fn, ...)
  local r = table.pack(pcall(fn, ...))
  if not r[1] then util.error((tostring(r[2]):gsub("^[^\n]-:%d+: ", ""))) end
  return table.unpack(r, 2, r.n)
end

--- This process's rank: 0 to size() - 1.
dist.rank = C.rank

--- The number of processes in the job (1 when not launched by MPI).
dist.size = C.size

--- Whether this is rank 0, the one that writes files and prints.
function dist.is_main() return C.rank() == 0 end

--- Whether an MPI launcher started this process (with any number of processes).
function dist.launched() return C.launched() > 0 end

--- Whether this build of lualign can work across processes (compiled with Open MPI).
function dist.built_with_mpi() return C.built_with_mpi() end

--- Joins the world now rather than at the first call that needs it, and
-- returns the rank and the size.  Fails in a build without MPI that an MPI
-- launcher started with several processes.
dist.init = C.init

--- Waits until every rank has called it.
dist.barrier = C.barrier

--- dist.broadcast(t [, root]): copies root's values (root 0 by default) into
-- t on every other rank, in place; returns t.
dist.broadcast = C.broadcast

--- dist.all_reduce(t [, op]): reduces t across the ranks, in place: op "sum"
-- (default), "mean" (float32) or "max".  Returns t.
dist.all_reduce = C.all_reduce

--- dist.all_gather(t): every rank's t, stacked in a new tensor of shape
-- (size, t's shape...).
dist.all_gather = C.all_gather

--- The sum over the ranks of a number, or of each number of a list (in
-- double precision): counts, losses and metrics for the log.
function dist.sum(x)
  if C.size() == 1 then return x end
  if type(x) == "table" then return checked(C.all_reduce_numbers, x, "sum") end
  return checked(C.all_reduce_numbers, {x}, "sum")[1]
end

--- The maximum over the ranks of a number.
function dist.max(x)
  if C.size() == 1 then return x end
  return checked(C.all_reduce_numbers, {x}, "max")[1]
end

--- Root's string (root 0 by default) on every rank; the others pass nil.
function dist.broadcast_string(s, root)
  if C.size() == 1 then return s end
  return checked(C.broadcast_string, s, root or 0)
end

--- The contiguous share first, last (1-based, inclusive; empty when last <
-- first) of n items that rank takes among size ranks (this rank of this
-- world by default): rank r takes items r n / size + 1 .. (r + 1) n / size,
-- rounded down, so the shares differ in size by at most one.
function dist.share(n, rank, size)
  rank, size = rank or C.rank(), size or C.size()
  return rank * n // size + 1, (rank + 1) * n // size
end

----------------------------------------------------------------------------
-- Losses and metrics of a global batch split across the ranks

--- The loss of this rank's share of a global batch, rescaled so that the
-- ranks' gradients sum to the gradient of the global batch's mean: `loss` is
-- the mean over this rank's `n` items (target tokens, pairs), and the result
-- is loss * n / total, where total is the number of items in the whole global
-- batch -- the sum of n over the ranks, computed when not given (pass it when
-- a step accumulates several micro-batches: the total of all of them, so the
-- accumulated gradient is that of the mean over the accumulated batch).
-- In a world of one with total = n, `loss` itself is returned.  A rank whose
-- share holds no item gets a zero loss that needs no gradient: its
-- dp:backward only joins the exchange of gradients.
function dist.global_mean(loss, n, total)
  total = total or dist.sum(n)
  if total == n then return loss end
  if n == 0 then return core.zeros({}) end
  return loss * (n / total)
end

--- Averages metrics (name -> number, each a mean over this rank's `n`
-- items) over the global batch: each weighted by its rank's n.  Returns a new
-- table; names whose values are not numbers are kept from this rank.  Every
-- rank must pass the same names.
function dist.mean_metrics(metrics, n)
  if C.size() == 1 then return metrics end
  local names = {}
  for k, v in pairs(metrics) do if type(v) == "number" then names[#names + 1] = k end end
  table.sort(names)
  local values = {n}
  for i, k in ipairs(names) do values[i + 1] = metrics[k] * n end
  local sums = checked(C.all_reduce_numbers, values, "sum")
  local out = {}
  for k, v in pairs(metrics) do out[k] = v end
  for i, k in ipairs(names) do out[k] = sums[1] > 0 and sums[i + 1] / sums[1] or 0 / 0 end
  return out
end

----------------------------------------------------------------------------
-- State that rank 0 alone reads (checkpoints), shared with the others

--- Tensors (name -> tensor) and a table of metadata that only root has
-- (rank 0 by default; the others pass nil, nil), made the same on every
-- rank: root sends their names, dtypes, shapes and the metadata, then each
-- tensor.  `tensors` may be nil on root too ("nothing to share"): then every
-- rank gets nil.  The metadata must be JSON-able.
function dist.broadcast_state(tensors, meta, root)
  root = root or 0
  if C.size() == 1 then return tensors, meta end
  local cjson = require "cjson"
  local header
  if C.rank() == root then
    local names = {}
    for name in pairs(tensors or {}) do names[#names + 1] = name end
    table.sort(names)
    local list = {}
    for i, name in ipairs(names) do
      list[i] = {name = name, dtype = tensors[name]:dtype(), shape = tensors[name]:shape()}
    end
    header = cjson.encode({present = tensors ~= nil, tensors = list, meta = meta or {}})
  end
  local h = cjson.decode(checked(C.broadcast_string, header, root))
  if not h.present then return nil, nil end
  local out = {}
  for _, d in ipairs(h.tensors) do
    local t
    if C.rank() == root then
      t = tensors[d.name]
    else
      local shape = {}
      for i, s in ipairs(d.shape) do shape[i] = math.tointeger(s) end
      t = core.empty(shape, d.dtype)
    end
    checked(C.broadcast, t, root)
    out[d.name] = t
  end
  if C.rank() == root then return tensors, meta end
  return out, h.meta
end

----------------------------------------------------------------------------
-- Data-parallel training

local DataParallel = {}
DataParallel.__index = DataParallel

--- Copies root's (rank 0's by default) weights and buffers of model (a
-- module, or a list of tensors) to every other rank: what
-- la.dist.data_parallel does first, for a model that is not trained (a
-- frozen reference).  Every rank must pass the same model.
function dist.broadcast_parameters(model, root)
  if C.size() == 1 then return model end
  local state = type(model.state_dict) == "function" and model:state_dict() or model
  local names = {}
  for name in pairs(state) do names[#names + 1] = name end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  local counts = checked(C.all_reduce_numbers, {#names, -#names}, "max")
  if counts[1] ~= -counts[2] then
    util.error(string.format("broadcast_parameters on rank %d of %d: the ranks' models differ (from %d to %d tensors)",
      C.rank(), C.size(), -counts[2], counts[1]))
  end
  require("lualign").no_grad(function()
    for _, name in ipairs(names) do checked(C.broadcast, state[name], root or 0) end
  end)
  return model
end

local function trained_parameters(model)
  local list = type(model.parameters) == "function" and model:parameters() or model
  local out = {}
  for _, p in ipairs(list) do if p:needs_grad() then out[#out + 1] = p end end
  return out
end

--- Makes model (a module, or a list of parameter tensors) data-parallel:
-- rank 0's weights (and buffers) are copied to every rank now, and
-- dp:backward sums the gradients across the ranks in buckets of about
-- opts.bucket_mb MiB (default 4) while the backward pass runs.
-- opts.op = "mean" averages them instead (for losses that are each rank's
-- plain mean over equal shares; la.dist.global_mean makes the sum right in
-- general).  In a world of one, nothing is copied and dp:backward is
-- loss:backward().
function dist.data_parallel(model, opts)
  opts = opts or {}
  require("lualign.util").check_options("data_parallel", opts, {"bucket_mb", "op"})
  local self = setmetatable({model = model, params = trained_parameters(model)}, DataParallel)
  if #self.params == 0 then error("data_parallel: the model has no parameter that requires grad", 2) end
  if C.size() > 1 then
    dist.broadcast_parameters(type(model.state_dict) == "function" and model or self.params)
    local mb = opts.bucket_mb or 4
    self.reducer = checked(C.Reducer, self.params, {bucket_bytes = math.max(4, math.floor(mb * 1048576)),
                                                    op = opts.op or "sum"})
  end
  return self
end

--- Gives this rank its share of every batch of loader (in place; returns
-- loader): the number and order of batches stay those of one process, and
-- each batch's examples (or packed rows) are split into size contiguous
-- parts, rank r taking part r.
function DataParallel:shard(loader)
  if C.size() > 1 then loader:shard(C.rank(), C.size()) end
  return loader
end

--- loss:backward(), with the gradients summed across the ranks (through
-- the buckets, overlapping the pass).  opts.sync = false leaves them local:
-- for the micro-batches of an accumulated step but the last, whose
-- dp:backward sends the accumulated sums.  A loss that needs no gradient (a
-- rank with an empty share, see global_mean) still joins the exchange.
function DataParallel:backward(loss, opts)
  local sync = not (opts and opts.sync == false)
  if not self.reducer or not sync then
    if loss:needs_grad() or not self.reducer then loss:backward() end
    return
  end
  if loss:needs_grad() then checked(self.reducer.backward, self.reducer, loss)
  else checked(self.reducer.sync, self.reducer) end
end

--- The exchange's counters: params, buckets, bytes_per_step, steps,
-- launched_early (buckets sent before their pass ended), pass_seconds,
-- hook_seconds, wait_seconds (after the pass, for the sums to arrive).
-- Nil in a world of one.
function DataParallel:stats()
  return self.reducer and self.reducer:stats() or nil
end

--- For a script that does not split its work across processes: started
-- with several, rank 0 says so on stderr -- each rank runs all of the work
-- (with the same seed, to the same results; rank 0 alone writes files), so
-- more processes bring no speed-up.
function dist.warn_replicated(what)
  if C.size() > 1 and C.rank() == 0 then
    io.stderr:write(string.format("%s: does not split its work across processes: each of the %d ranks "
      .. "runs all of it (no speed-up; run it in one process)\n", what, C.size()))
  end
end

----------------------------------------------------------------------------
-- Files: only rank 0 writes a run's folder

local private_dirs = {}

--- A new empty folder private to this process, $TMPDIR/lualign-XXXXXX-rankR/name
-- (/tmp without TMPDIR), removed by dist.finalize(): where ranks other than 0
-- write the files of a run folder, so that a recipe reading back what it
-- wrote behaves alike on every rank while only rank 0 writes the real folder.
function dist.private_dir(name)
  local base = (os.getenv("TMPDIR") or "") ~= "" and os.getenv("TMPDIR") or "/tmp"
  for _ = 1, 100 do
    local token = os.tmpname()       -- a fresh random name, made as a file
    os.remove(token)
    local dir = string.format("%s/lualign-%s-rank%d", base, token:match("([^/_]+)$"), C.rank())
    if not sys.listdir(dir) then
      local ok, err = sys.mkdir(dir .. "/" .. name)
      if not ok then error(err, 2) end
      private_dirs[#private_dirs + 1] = dir
      return dir .. "/" .. name
    end
  end
  error("private_dir: no free name for a folder in " .. base, 2)
end

local function remove_tree(path)
  if os.remove(path) then return end
  for _, name in ipairs(sys.listdir(path) or {}) do remove_tree(path .. "/" .. name) end
  os.remove(path)
end

--- Leaves the world (after removing this process's private folders).  The
-- `lualign` command calls it at the end of a script; afterwards no
-- collective may be called.
function dist.finalize()
  for i = #private_dirs, 1, -1 do
    remove_tree(private_dirs[i])
    private_dirs[i] = nil
  end
  C.finalize()
end

--- Ends every process of the job with exit status `code` (after removing
-- this process's private folders; those of the ranks it kills may stay in
-- $TMPDIR): what the `lualign` command does when a script fails on one rank,
-- so that the others do not wait for it forever.  Returns only in a world
-- of one.
function dist.abort(code)
  for i = #private_dirs, 1, -1 do remove_tree(private_dirs[i]) end
  C.abort(code or 1)
end

return dist
