--- lualign.plot: line plots written as SVG by plain Lua (no dependencies).
--
--     local plot = require "lualign.plot"
--     local p = plot.new{title = "loss", xlabel = "step", ylabel = "loss"}
--     p:line(steps, losses, {label = "train"})
--     p:line(steps, val, {label = "validation", dash = true})
--     p:save("runs/sft/loss.svg")
--
-- Several plots side by side: plot.save_grid(path, {p1, p2, p3}, {cols = 3}).
-- Axes get "nice" 1-2-5 ticks; series get a legend when labelled; NaN and
-- infinite points break a line instead of spoiling the axes.

local util = require "lualign.util"

local plot = {}

--- The default colour cycle (Tableau 10).
plot.colors = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

local Plot = {}
Plot.__index = Plot

--- A new empty plot.  opts: title, xlabel, ylabel, width (640), height (400),
-- xmin, xmax, ymin, ymax (fixed limits; otherwise from the data), legend
-- ("top-right" (default), "top-left", "bottom-right", "bottom-left" or false),
-- logy (true: a log10 y axis; points with y <= 0 are left out).
function plot.new(opts)
  opts = util.check_options("plot.new", opts, {"title", "xlabel", "ylabel", "width", "height", "xmin", "xmax",
                                               "ymin", "ymax", "legend", "logy"})
  return setmetatable({
    logy = opts.logy or false,
    title = opts.title, xlabel = opts.xlabel, ylabel = opts.ylabel,
    width = opts.width or 640, height = opts.height or 400,
    limits = {xmin = opts.xmin, xmax = opts.xmax, ymin = opts.ymin, ymax = opts.ymax},
    legend = opts.legend == nil and "top-right" or opts.legend,
    series = {},
  }, Plot)
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

--- Adds a line through the points (xs[i], ys[i]).  xs and ys are Lua lists
-- of numbers (or tensors, read with totable).  style: label, color, width
-- (2; 0 draws no line), dash (true or a dasharray string), markers (true or a
-- radius: a dot per point),
-- step (true: a staircase, for histograms), fill (an opacity: shade to y = 0).
-- Returns the plot, for chaining.
function Plot:line(xs, ys, style)
  if type(xs) ~= "table" and xs.totable then xs = xs:totable() end
  if type(ys) ~= "table" and ys.totable then ys = ys:totable() end
  if #xs ~= #ys then
    error(string.format("plot: %d x values but %d y values", #xs, #ys), 2)
  end
  style = util.check_options("plot:line", style, {"label", "color", "width", "dash", "markers", "step", "fill"})
  local s = {x = xs, y = ys, label = style.label, width = style.width or 2, dash = style.dash,
             markers = style.markers, step = style.step, fill = style.fill,
             color = style.color or plot.colors[(#self.series % #plot.colors) + 1]}
  self.series[#self.series + 1] = s
  return self
end

--- Adds a vertical marker line at x.  style: label, color, dash (default true).
function Plot:vline(x, style)
  style = util.check_options("plot:vline", style, {"label", "color", "dash"})
  self.vlines = self.vlines or {}
  self.vlines[#self.vlines + 1] = {x = x, label = style.label, color = style.color or "#444444",
                                   dash = style.dash == nil and true or style.dash}
  return self
end

-- A "nice" step of the 1-2-5 series for about n intervals over span.
local function nice_step(span, n)
  local raw = span / n
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local f = raw / mag
  local nice = f < 1.5 and 1 or (f < 3 and 2 or (f < 7 and 5 or 10))
  return nice * mag
end

local function ticks(lo, hi, n)
  local step = nice_step(hi - lo, n)
  local out, v = {}, math.ceil(lo / step - 1e-9) * step
  while v <= hi + step * 1e-9 do
    out[#out + 1] = math.abs(v) < step * 1e-9 and 0 or v
    v = v + step
  end
  return out, step
end

local function fmt(v, step)
  if v == 0 then return "0" end
  local a = math.abs(v)
  if a >= 1e5 or a < 1e-3 then return string.format("%.1e", v) end
  local digits = math.max(0, -math.floor(math.log(step, 10) + 1e-9))
  return string.format("%." .. digits .. "f", v)
end

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

-- y as drawn: log10 on a log axis (nil for points that cannot be drawn).
local function ty(self, y)
  if not finite(y) then return nil end
  if self.logy then
    if y <= 0 then return nil end
    return math.log(y, 10)
  end
  return y
end

-- The data range (of drawn y), padded when degenerate.
local function range(self)
  local L = self.limits
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(self.series) do
    for i = 1, #s.x do
      local x, y = s.x[i], ty(self, s.y[i])
      if finite(x) and y then
        xmin, xmax = math.min(xmin, x), math.max(xmax, x)
        ymin, ymax = math.min(ymin, y), math.max(ymax, y)
      end
    end
    if s.fill and not self.logy then ymin, ymax = math.min(ymin, 0), math.max(ymax, 0) end
  end
  for _, v in ipairs(self.vlines or {}) do xmin, xmax = math.min(xmin, v.x), math.max(xmax, v.x) end
  if xmin > xmax then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  xmin, xmax = L.xmin or xmin, L.xmax or xmax
  local lymin, lymax = L.ymin, L.ymax
  if self.logy then
    lymin = lymin and lymin > 0 and math.log(lymin, 10) or nil
    lymax = lymax and lymax > 0 and math.log(lymax, 10) or nil
  end
  ymin, ymax = lymin or ymin, lymax or ymax
  if xmax - xmin <= 0 then xmin, xmax = xmin - 0.5, xmax + 0.5 end
  if ymax - ymin <= 0 then
    local pad = math.abs(ymin) * 0.1 + 0.5
    ymin, ymax = ymin - pad, ymax + pad
  elseif not (lymin and lymax) then
    local pad = (ymax - ymin) * 0.05
    ymin, ymax = lymin or ymin - pad, lymax or ymax + pad
  end
  return xmin, xmax, ymin, ymax
end

--- The plot as SVG elements inside a <g> placed at (ox, oy): for composing
-- several plots into one picture (see plot.grid).
function Plot:render(ox, oy)
  ox, oy = ox or 0, oy or 0
  local W, H = self.width, self.height
  local ml, mr, mt, mb = 64, 16, self.title and 32 or 14, self.xlabel and 48 or 32
  local pw, ph = W - ml - mr, H - mt - mb
  local xmin, xmax, ymin, ymax = range(self)
  local function px(x) return ml + (x - xmin) / (xmax - xmin) * pw end
  local function py(y) return mt + (1 - (y - ymin) / (ymax - ymin)) * ph end
  local o = {}
  local function add(...) o[#o + 1] = string.format(...) end
  add('<g transform="translate(%g,%g)" font-family="sans-serif" font-size="11">', ox, oy)
  add('<rect x="0" y="0" width="%d" height="%d" fill="white"/>', W, H)
  -- grid and ticks
  local xt, xs = ticks(xmin, xmax, math.max(2, math.floor(pw / 80)))
  local yt, ys = ticks(ymin, ymax, math.max(2, math.floor(ph / 50)))
  if self.logy then   -- whole powers of ten
    yt, ys = {}, 1
    local step = math.max(1, math.ceil((ymax - ymin) / math.max(2, math.floor(ph / 40))))
    for e = math.ceil(ymin), math.floor(ymax), step do yt[#yt + 1] = e end
  end
  for _, v in ipairs(xt) do
    local x = px(v)
    add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>', x, mt, x, mt + ph)
    add('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#333">%s</text>', x, mt + ph + 14, fmt(v, xs))
  end
  for _, v in ipairs(yt) do
    local y = py(v)
    add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>', ml, y, ml + pw, y)
    local label = self.logy and (v == 0 and "1" or string.format("1e%d", v)) or fmt(v, ys)
    add('<text x="%.1f" y="%.1f" text-anchor="end" fill="#333">%s</text>', ml - 5, y + 4, label)
  end
  add('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>', ml, mt, pw, ph)
  -- series, clipped to the plotting area
  local clip = string.format("clip%d", math.floor(ox * 7 + oy * 13 + W + H))
  add('<clipPath id="%s"><rect x="%d" y="%d" width="%d" height="%d"/></clipPath>', clip, ml, mt, pw, ph)
  add('<g clip-path="url(#%s)">', clip)
  for _, s in ipairs(self.series) do
    local dash = s.dash and string.format(' stroke-dasharray="%s"', s.dash == true and "6,4" or s.dash) or ""
    local runs, cur = {}, {}
    local prev
    for i = 1, #s.x do
      local x, y = s.x[i], ty(self, s.y[i])
      if finite(x) and y then
        if s.step and #cur > 0 then cur[#cur + 1] = string.format("%.2f,%.2f", px(x), py(prev)) end
        cur[#cur + 1] = string.format("%.2f,%.2f", px(x), py(y))
        prev = y
      elseif #cur > 0 then
        runs[#runs + 1], cur = cur, {}
        prev = nil
      end
    end
    if #cur > 0 then runs[#runs + 1] = cur end
    for _, r in ipairs(runs) do
      if s.fill then
        local first, last = r[1]:match("^([^,]+)"), r[#r]:match("^([^,]+)")
        local base = self.logy and ymin or math.max(ymin, math.min(ymax, 0))
        add('<polygon points="%s,%.2f %s %s,%.2f" fill="%s" fill-opacity="%g" stroke="none"/>',
          first, py(base), table.concat(r, " "), last, py(base), s.color, s.fill)
      end
      if s.width > 0 then
        add('<polyline points="%s" fill="none" stroke="%s" stroke-width="%g"%s stroke-linejoin="round"/>',
          table.concat(r, " "), s.color, s.width, dash)
      end
    end
    if s.markers then
      for i = 1, #s.x do
        local y = ty(self, s.y[i])
        if finite(s.x[i]) and y then
          add('<circle cx="%.2f" cy="%.2f" r="%g" fill="%s"/>', px(s.x[i]), py(y), s.markers == true and 3 or s.markers, s.color)
        end
      end
    end
  end
  for _, v in ipairs(self.vlines or {}) do
    add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="1.5"%s/>', px(v.x), mt,
      px(v.x), mt + ph, v.color, v.dash and ' stroke-dasharray="4,3"' or "")
  end
  add('</g>')
  -- labels
  if self.title then
    add('<text x="%.1f" y="20" text-anchor="middle" font-size="14" font-weight="bold">%s</text>',
      ml + pw / 2, esc(self.title))
  end
  if self.xlabel then
    add('<text x="%.1f" y="%d" text-anchor="middle" font-size="12">%s</text>', ml + pw / 2, H - 10, esc(self.xlabel))
  end
  if self.ylabel then
    add('<text x="14" y="%.1f" text-anchor="middle" font-size="12" transform="rotate(-90 14 %.1f)">%s</text>',
      mt + ph / 2, mt + ph / 2, esc(self.ylabel))
  end
  -- legend
  local entries = {}
  for _, s in ipairs(self.series) do if s.label then entries[#entries + 1] = s end end
  for _, v in ipairs(self.vlines or {}) do if v.label then entries[#entries + 1] = v end end
  if self.legend and #entries > 0 then
    local longest = 0
    for _, e in ipairs(entries) do longest = math.max(longest, #tostring(e.label)) end
    local lw, lh = 34 + longest * 6.5, 8 + 16 * #entries
    local lx = self.legend:find("left") and ml + 8 or ml + pw - lw - 8
    local ly = self.legend:find("bottom") and mt + ph - lh - 8 or mt + 8
    add('<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="white" fill-opacity="0.85" stroke="#bbb"/>',
      lx, ly, lw, lh)
    for i, e in ipairs(entries) do
      local y = ly + 4 + 16 * (i - 1) + 8
      local dash = e.dash and ' stroke-dasharray="6,4"' or ""
      if (e.width or 1.5) > 0 then
        add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%g"%s/>', lx + 6, y,
          lx + 26, y, e.color, e.width or 1.5, dash)
      end
      if e.markers then add('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>', lx + 16, y, e.color) end
      add('<text x="%.1f" y="%.1f">%s</text>', lx + 30, y + 4, esc(e.label))
    end
  end
  add('</g>')
  return table.concat(o, "\n")
end

--- The plot as a standalone SVG document (a string).
function Plot:svg()
  return plot.grid({self}, {cols = 1})
end

--- Writes the SVG to path; returns path.
function Plot:save(path)
  return plot.write(path, self:svg())
end

--- Several plots in one SVG document, row by row.  opts: cols (number of
-- columns, default all in one row), title.
function plot.grid(plots, opts)
  opts = util.check_options("plot.grid", opts, {"cols", "title"})
  local cols = opts.cols or #plots
  local cw, rh = 0, {}
  for i, p in ipairs(plots) do
    cw = math.max(cw, p.width)
    local r = (i - 1) // cols + 1
    rh[r] = math.max(rh[r] or 0, p.height)
  end
  local top = opts.title and 30 or 0
  local offsets, y = {}, top
  for r = 1, #rh do offsets[r] = y; y = y + rh[r] end
  local W = cw * math.min(cols, #plots)
  local parts = {string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">',
    W, y, W, y), string.format('<rect width="%d" height="%d" fill="white"/>', W, y)}
  if opts.title then
    parts[#parts + 1] = string.format(
      '<text x="%d" y="21" text-anchor="middle" font-family="sans-serif" font-size="16" font-weight="bold">%s</text>',
      W // 2, esc(opts.title))
  end
  for i, p in ipairs(plots) do
    local r, c = (i - 1) // cols + 1, (i - 1) % cols
    parts[#parts + 1] = p:render(c * cw, offsets[r])
  end
  parts[#parts + 1] = "</svg>\n"
  return table.concat(parts, "\n")
end

--- Writes an SVG string to path (creating nothing else); returns path.
function plot.write(path, svg)
  local f, err = io.open(path, "w")
  if not f then error("plot: cannot write " .. tostring(err), 2) end
  f:write(svg)
  f:close()
  return path
end

--- plot.grid written to path; returns path.
function plot.save_grid(path, plots, opts)
  return plot.write(path, plot.grid(plots, opts))
end

return plot
