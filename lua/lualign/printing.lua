--- Formats tensors for print() and the REPL, in PyTorch's style:
--
--     tensor([[ 0.1234, -1.5000],
--             [ 3.0000,  4.0000]], shape=(2, 2), dtype=float32)
--
-- Tensors of more than `threshold` elements show `edge` entries at each end
-- of every dim with "..." between.  Shape and dtype are always shown.

local core = require "lualign.core"

local M = {threshold = 1000, edge = 3, precision = 4, linewidth = 80}

-- Collects the displayed values as a nested list (with "..." markers).
local function collect(t, elide)
  local n = t:size(1)
  if t:dim() == 1 then
    if elide and n > 2 * M.edge then
      local head = t:narrow(1, 1, M.edge):totable()
      local tail = t:narrow(1, n - M.edge + 1, M.edge):totable()
      head[#head + 1] = "..."
      for _, v in ipairs(tail) do head[#head + 1] = v end
      return head
    end
    return t:totable()
  end
  local rows = {}
  local function add(i) rows[#rows + 1] = collect(t:select(1, i), elide) end
  if elide and n > 2 * M.edge then
    for i = 1, M.edge do add(i) end
    rows[#rows + 1] = "..."
    for i = n - M.edge + 1, n do add(i) end
  else
    for i = 1, n do add(i) end
  end
  return rows
end

local function each_value(rows, fn)
  for _, v in ipairs(rows) do
    if type(v) == "table" then each_value(v, fn) elseif v ~= "..." then fn(v) end
  end
end

-- Picks one number format for all values, as PyTorch does.
local function float_formatter(rows)
  local all_int, max_abs, min_abs = true, 0, math.huge
  each_value(rows, function(v)
    if v == v and v ~= math.huge and v ~= -math.huge then
      local a = math.abs(v)
      if a ~= math.floor(a) then all_int = false end
      if a > max_abs then max_abs = a end
      if a > 0 and a < min_abs then min_abs = a end
    end
  end)
  local p = M.precision
  local sci = max_abs >= 1e8 or (min_abs < 1e-4 and not all_int) or
              (min_abs < math.huge and max_abs / min_abs > 1e5 and not all_int)
  return function(v)
    if v ~= v then return "nan" end
    if v == math.huge then return "inf" end
    if v == -math.huge then return "-inf" end
    if sci then return string.format("%." .. p .. "e", v) end
    if all_int then return string.format("%.0f.", v) end
    return string.format("%." .. p .. "f", v)
  end
end

local function value_formatter(t, rows)
  local dt = t:dtype()
  if dt == "float32" or dt == "bfloat16" or dt == "float16" then return float_formatter(rows) end
  if dt == "bool" then return function(v) return v and "true" or "false" end end
  return function(v) return string.format("%d", v) end
end

local function render(rows, fmt, width, indent)
  if type(rows[1]) ~= "table" and rows[1] ~= "..." or #rows == 0 then
    local parts = {}
    for i, v in ipairs(rows) do
      parts[i] = v == "..." and "..." or string.format("%" .. width .. "s", fmt(v))
    end
    -- Wrap long rows at linewidth.
    local lines, line = {}, {}
    local per_line = math.max(1, math.floor((M.linewidth - indent) / (width + 2)))
    for i, p in ipairs(parts) do
      line[#line + 1] = p
      if #line == per_line and i < #parts then
        lines[#lines + 1] = table.concat(line, ", ")
        line = {}
      end
    end
    lines[#lines + 1] = table.concat(line, ", ")
    return "[" .. table.concat(lines, ",\n" .. string.rep(" ", indent + 1)) .. "]"
  end
  local parts = {}
  for i, r in ipairs(rows) do
    parts[i] = r == "..." and "..." or render(r, fmt, width, indent + 1)
  end
  local depth, probe = 1, rows
  while type(probe[1]) == "table" do depth, probe = depth + 1, probe[1] end
  local sep = "," .. string.rep("\n", depth > 2 and 2 or 1) .. string.rep(" ", indent + 1)
  return "[" .. table.concat(parts, sep) .. "]"
end

--- The printed form of a tensor.
function M.format(t)
  if not core.is_tensor(t) then return "lualign.Tensor (closed)" end
  local previous = core.set_grad_enabled(false)
  local ok, body = pcall(function()
    local dims = t:dim()
    if dims == 0 then return value_formatter(t, {t:item()})(t:item()) end
    if t:numel() == 0 then return "[]" end
    local rows = collect(t, t:numel() > M.threshold)
    local fmt = value_formatter(t, rows)
    local width = 0
    each_value(rows, function(v) width = math.max(width, #fmt(v)) end)
    return render(rows, fmt, width, #"tensor(")
  end)
  core.set_grad_enabled(previous)
  if not ok then error(body, 0) end
  local extra = {"shape=" .. t:shape_str(), "dtype=" .. t:dtype()}
  if t:grad_fn() then extra[#extra + 1] = "grad_fn=" .. t:grad_fn()
  elseif t:needs_grad() then extra[#extra + 1] = "requires_grad=true" end
  return "tensor(" .. body .. ", " .. table.concat(extra, ", ") .. ")"
end

return M
