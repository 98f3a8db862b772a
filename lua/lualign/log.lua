--- lualign.log: training progress and metrics.
--
--     local logger = la.log.open(run, {total = config.steps, every = 10})
--     logger:log(step, {loss = 2.31, lr = 3e-4})   -- appends to metrics.jsonl
--     logger:close()
--
-- On a terminal a progress bar shows the rate, the ETA and the latest
-- metrics in place; otherwise (a pipe, a CI log) a plain line is printed every
-- `every` steps.  Each call appends {"step": n, ...metrics} to
-- <run>/metrics.jsonl; a resumed run first drops the lines after its
-- checkpoint's step, so the file reads as if the run had never stopped.
-- In a data-parallel job only rank 0 shows progress (the others' run folder
-- is private: see recipe.run).

local core = require "lualign.core"
local sys = require "lualign.sys"
local recipe = require "lualign.recipe"
local util = require "lualign.util"

local log = {}

local Logger = {}
Logger.__index = Logger

--- Seconds as "42s", "3m05s" or "1h02m" ("?" when unknown).
local function format_duration(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

local function format_metrics(metrics, keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = metrics[k]
    if type(v) == "number" then
      local f = (math.abs(v) >= 1e4 or (v ~= 0 and math.abs(v) < 1e-3)) and "%.3e" or "%.4g"
      parts[#parts + 1] = k .. " " .. string.format(f, v)
    end
  end
  return table.concat(parts, "  ")
end

-- Keeps the lines of metrics.jsonl whose step is at most `step`.  A run
-- killed while it wrote a line leaves that line cut short: only whole lines
-- (ending in a newline, and decoding as a JSON object) are kept.
local function truncate_metrics(path, step)
  local f = io.open(path, "rb")
  if not f then return end
  local text = f:read("a")
  f:close()
  local cjson = require "cjson"
  local kept = {}
  for line in text:gmatch("([^\n]*)\n") do
    local ok, row = pcall(cjson.decode, line)
    local s = ok and type(row) == "table" and tonumber(row.step)
    if s and s <= step then kept[#kept + 1] = line end
  end
  recipe.write_atomic(path, #kept > 0 and (table.concat(kept, "\n") .. "\n") or "")
end

--- Opens the run's metrics log.  opts: total (steps, for the bar and ETA),
-- every (plain-line interval, default 10), start_step (a resumed run's step:
-- later lines are dropped), show (list of metric names for the bar/lines;
-- default: all, sorted), stage (a label printed first), quiet (no output).
function log.open(run, opts)
  opts = util.check_options("log.open", opts, {"file", "total", "every", "start_step", "show", "stage", "quiet"})
  if run.started == false then
    error(string.format("%s: log.open before run:start() (a run writes nothing until its inputs are checked)",
      run.config.name), 2)
  end
  local path = run:path(opts.file or "metrics.jsonl")
  if opts.start_step and opts.start_step > 0 then
    truncate_metrics(path, opts.start_step)
  else
    recipe.write_atomic(path, "")
  end
  local f = assert(io.open(path, "a"))
  local quiet = opts.quiet or not require("lualign.dist").is_main()
  return setmetatable({
    file = f, path = path, total = opts.total, every = opts.every or 10, show = opts.show,
    stage = opts.stage or run.config.name, quiet = quiet,
    tty = not quiet and sys.isatty(1) and os.getenv("TERM") ~= "dumb",
    start_clock = core.clock(), start_step = opts.start_step or 0, last = nil,
  }, Logger)
end

--- Records metrics for a step: one JSON line, and the bar or a plain line.
function Logger:log(step, metrics)
  local row = {step = step}
  for k, v in pairs(metrics) do row[k] = v end
  self.file:write(recipe.json(row), "\n")
  self.file:flush()
  self.last = row
  local keys = self.show
  if not keys then
    keys = {}
    for k, v in pairs(metrics) do if type(v) == "number" then keys[#keys + 1] = k end end
    table.sort(keys)
  end
  local elapsed = core.clock() - self.start_clock
  local done = step - self.start_step
  local rate = done > 0 and done / elapsed or 0
  local eta = (self.total and rate > 0) and (self.total - step) / rate or 0 / 0
  local text = format_metrics(metrics, keys)
  if self.tty then
    local frac = self.total and math.min(1, step / self.total) or 0
    local bar = string.rep("=", math.floor(frac * 20)) .. string.rep(" ", 20 - math.floor(frac * 20))
    io.write(string.format("\r\27[K%s [%s] %d/%s %.1f it/s ETA %s  %s", self.stage, bar, step,
      tostring(self.total or "?"), rate, format_duration(eta), text))
    io.flush()
  elseif not self.quiet and (step % self.every == 0 or step == self.total) then
    print(string.format("%s step %d/%s  %s  (%.1f it/s, ETA %s)", self.stage, step,
      tostring(self.total or "?"), text, rate, format_duration(eta)))
  end
end

--- A line of its own (evaluation results, say), without breaking the bar.
function Logger:note(text)
  if self.quiet then return end
  if self.tty then io.write("\r\27[K") end
  print(text)
end

--- Ends the bar's line and closes the file.
function Logger:close()
  if self.tty then io.write("\n") end
  if self.file then self.file:close(); self.file = nil end
end

log.format_duration = format_duration

--- The curve of one metric over a run: the steps of the rows that have it
-- and its values there, as two lists (for lualign.plot's :line).
function log.series(rows, key)
  local steps, values = {}, {}
  for _, r in ipairs(rows) do
    if r[key] ~= nil then steps[#steps + 1], values[#values + 1] = r.step, r[key] end
  end
  return steps, values
end

--- Reads a metrics.jsonl file back as a list of rows.  A metric that was NaN
-- or inf (written as null, since JSON has neither) reads back as NaN, so that
-- reports and plots of a run that met one still work.
function log.read(path)
  local cjson = require "cjson"
  local rows = {}
  local f = io.open(path, "r")
  if not f then return rows end
  for line in f:lines() do
    if line ~= "" then
      local row = cjson.decode(line)
      for k, v in pairs(row) do if v == cjson.null then row[k] = 0 / 0 end end
      rows[#rows + 1] = row
    end
  end
  f:close()
  return rows
end

return log
