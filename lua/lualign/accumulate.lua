--- lualign.accumulate: gradient accumulation over micro-batches with the
-- normalisation of the whole accumulated batch.
--
--     local micro = la.accumulate.split(batch, 4)            -- 4 micro-batches
--     local result = la.accumulate.run(micro, la.accumulate.tokens, function(mb)
--       return la.loss.cross_entropy(model(mb.ids), mb.targets)   -- mean over mb's tokens
--     end)
--     opt:step()          -- result.loss: the accumulated batch's loss
--
-- A loss that is a mean over units (target tokens, pairs) of a batch is, for
-- the accumulated batch, the sum of every unit's loss divided by the number of
-- units in the whole accumulated batch -- not the mean of the micro-batches'
-- means, which weighs a unit of a short micro-batch more than one of a long
-- one and so gives a different gradient whenever micro-batches hold different
-- numbers of tokens.  So each micro-batch's mean loss is backpropagated with
-- the weight count / total, where total counts the units of every
-- micro-batch; the summed gradients are then exactly those of one batch of
-- the same examples.  accumulate.total is the one place that count is formed.

local util = require "lualign.util"

local A = {}

-- Rows [lo, hi] (1-based) of every value of a batch: tensors along their first
-- dim, lists of per-row items, nested tables (batch.chosen) recursively.
local function rows_of(value, lo, hi, n, core, where)
  if core.is_tensor(value) then
    if value:dim() == 0 or value:size(1) ~= n then
      util.error(string.format("%s: tensor '%s' has shape %s; every tensor of a batch needs its rows (%d) first",
        "accumulate.split", where, value:shape_str(), n))
    end
    return value:narrow(1, lo, hi - lo + 1)
  elseif type(value) == "table" and getmetatable(value) == nil then
    if #value == n and n > 0 then return table.move(value, lo, hi, 1, {}) end
    local out = {}
    for k, v in pairs(value) do out[k] = rows_of(v, lo, hi, n, core, where .. "." .. tostring(k)) end
    return out
  end
  return value
end

-- The number of rows of a batch: the first dim of its first tensor (searched
-- in key order, nested tables included).
local function batch_rows(batch, core)
  for _, k in ipairs(util.sorted_keys(batch)) do
    local v = batch[k]
    if core.is_tensor(v) and v:dim() > 0 then return v:size(1) end
    if type(v) == "table" and getmetatable(v) == nil and #v == 0 then
      local n = batch_rows(v, core)
      if n then return n end
    end
  end
  return nil
end

--- Splits a batch (a table of tensors whose first dim is the rows, lists of
-- per-row items such as batch.examples, nested tables such as batch.chosen,
-- and other values, copied) into n micro-batches of consecutive rows, their
-- sizes differing by at most one.  n = 1 returns {batch}.
function A.split(batch, n)
  local core = require "lualign.core"
  if math.type(n) ~= "integer" or n < 1 then util.error("accumulate.split: n must be a positive integer (got " .. tostring(n) .. ")") end
  if n == 1 then return {batch} end
  local rows = batch_rows(batch, core)
  if not rows then util.error("accumulate.split: the batch holds no tensor to split") end
  if rows < n then
    util.error(string.format("accumulate.split: a batch of %d rows cannot make %d micro-batches (grad_accum > batch size)", rows, n))
  end
  local out, lo = {}, 1
  for i = 1, n do
    local size = rows // n + (i <= rows % n and 1 or 0)
    out[i] = rows_of(batch, lo, lo + size - 1, rows, core, "batch")
    lo = lo + size
  end
  return out
end

--- The number of units of the whole accumulated batch from the counts of its
-- micro-batches: their sum (a distributed run sums it over ranks too).
function A.total(counts)
  local total = 0
  for _, c in ipairs(counts) do total = total + c end
  return total
end

--- Target tokens of an SFT batch: the targets other than ignore_index (-100).
function A.tokens(batch)
  return (batch.targets:ne(-100)):sum():item()
end

--- Pairs of a preference batch: the rows of batch.chosen.ids.
function A.pairs(batch)
  return batch.chosen.ids:size(1)
end

--- Runs loss_fn(micro_batch) -> mean loss over its units (a scalar tensor)
-- [, metrics table of means] for each micro-batch, backpropagating each
-- loss times count(mb) / total as it goes (so one micro-batch's activations
-- are alive at a time), and skipping micro-batches with no units.  Returns
-- {loss = the accumulated batch's loss, metrics = each metric as the same
-- weighted mean, units = total}.
--
-- dp (a la.dist.data_parallel, optional) makes the accumulated batch the
-- global one: total counts the units of every rank's micro-batches, the
-- gradients are summed across the ranks by the last micro-batch's
-- dp:backward (the others keep theirs local), and the loss and metrics
-- returned are those of the global batch, the same on every rank.
function A.run(micro_batches, count, loss_fn, dp)
  local dist = require "lualign.dist"
  local counts = {}
  for i, mb in ipairs(micro_batches) do
    local c = count(mb)
    if type(c) ~= "number" or c < 0 then util.error("accumulate.run: count gave " .. tostring(c) .. " for micro-batch " .. i) end
    counts[i] = c
  end
  local total = A.total(counts)
  if dp then total = dist.sum(total) end
  if total <= 0 then util.error("accumulate.run: the accumulated batch has no units (no target tokens or pairs) to learn from") end
  local loss_sum, metrics, synced = 0, {}, false
  for i, mb in ipairs(micro_batches) do
    if counts[i] > 0 then
      local w = counts[i] / total
      local loss, m = loss_fn(mb)
      local value = loss:item()
      if w ~= 1 then loss = loss * w end
      if dp then
        synced = i == #micro_batches
        dp:backward(loss, {sync = synced})
      else
        loss:backward()
      end
      loss_sum = loss_sum + value * w
      if type(m) == "table" then
        for k, v in pairs(m) do
          if type(v) == "number" then metrics[k] = (metrics[k] or 0) + v * w end
        end
      end
    end
  end
  if dp and not synced then   -- the last micro-batch had no units: its exchange still happens
    dp:backward(require("lualign.core").zeros({}), {sync = true})
  end
  if dp and dist.size() > 1 then
    local names = util.sorted_keys(metrics)
    local values = {loss_sum}
    for j, k in ipairs(names) do values[j + 1] = metrics[k] end
    local sums = dist.sum(values)
    loss_sum = sums[1]
    for j, k in ipairs(names) do metrics[k] = sums[j + 1] end
  end
  return {loss = loss_sum, metrics = metrics, units = total}
end

return A
