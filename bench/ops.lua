-- bench/ops.lua -- engine-ops benchmark driver: lualign against PyTorch CPU and
-- direct OpenBLAS, in the same command.
--
--   make bench                                   (builds, then runs this)
--   lua5.4 bench/ops.lua [--rounds N] [--threads T] [--sections tiny,elementwise,matmul]
--                        [--peers all|stock,passive,glibc,jemalloc] [--wait-policy PASSIVE|ACTIVE]
--                        [--markdown]
--
-- Three sections:
--   tiny         per-op overhead on (4, 4) tensors, microseconds per op
--   elementwise  throughput of large (16M float32) elementwise ops, GB/s
--   matmul       GFLOP/s of training-shaped and attention-shaped products
--
-- Each contender is a separate process that measures one section and prints
-- "result" lines (bench/ops_lualign.lua, bench/ops_torch.py and, for matmul,
-- build/bench/sgemm_direct).  The machine is shared and noisy, so the driver
-- runs every contender once per round, rotating their order from round to
-- round, and reports for each case the median over rounds, the spread of the
-- rounds, and ratios of medians.  Each process's own figure is already the
-- median of several timed repeats after a warm-up.
--
-- The PyTorch peer runs under each setting of bench/peer.lua (stock, OpenMP
-- passive waiting, glibc's malloc keeping freed memory, jemalloc), with the
-- same thread count; the ratio columns are against its best setting for
-- each case, and a table per section gives every setting's figure.  lualign
-- uses the same OpenMP runtime (libgomp) with OMP_WAIT_POLICY=PASSIVE
-- (--wait-policy changes it); on this shared 2-core machine the default,
-- spinning policy makes every 2-thread kernel wait out a scheduler tick
-- whenever another process holds the second core.  Without python3-torch
-- the peer's columns read "n/a".

local ROOT = arg[0]:match("^(.*)/bench/[^/]*$") or "."
package.path = ROOT .. "/bench/?.lua;" .. package.path
local peer = require "peer"

local function parse_args(argv)
  local opts = {rounds = 5, threads = 2, sections = {"tiny", "elementwise", "matmul"}, markdown = false,
                wait_policy = "PASSIVE", peers = "all"}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--rounds" then opts.rounds = assert(tonumber(argv[i + 1]), "--rounds N"); i = i + 1
    elseif a == "--threads" then opts.threads = assert(tonumber(argv[i + 1]), "--threads T"); i = i + 1
    elseif a == "--sections" then
      opts.sections = {}
      for s in argv[i + 1]:gmatch("[^,]+") do opts.sections[#opts.sections + 1] = s end
      i = i + 1
    elseif a == "--peers" then opts.peers = assert(argv[i + 1], "--peers LIST"); i = i + 1
    elseif a == "--wait-policy" then opts.wait_policy = assert(argv[i + 1], "--wait-policy PASSIVE|ACTIVE"); i = i + 1
    elseif a == "--markdown" then opts.markdown = true
    else error("unknown argument " .. a .. " (see the header of bench/ops.lua)") end
    i = i + 1
  end
  return opts
end

local opts = parse_args(arg)
local settings = peer.select(opts.peers)

------------------------------------------------------------------------------
-- Contenders: how to start each one for a section.

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function have_torch()
  local ok = os.execute("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1")
  return ok == true
end

local CONTENDERS = {
  {
    key = "lualign",
    sections = {tiny = true, elementwise = true, matmul = true},
    command = function(section)
      -- The driver's LUA_PATH / LUA_CPATH (set by `make bench`) carry over.
      -- Both OpenMP users run with the same wait policy: see bench/README.md.
      return string.format("OMP_WAIT_POLICY=%s lua5.4 %s %s %d", opts.wait_policy,
                           sh_quote(ROOT .. "/bench/ops_lualign.lua"), section, opts.threads)
    end,
  },
  {
    key = "openblas",
    sections = {matmul = true},
    available = function()
      local f = io.open(ROOT .. "/build/bench/sgemm_direct")
      if f then f:close() end
      return f ~= nil
    end,
    command = function(section)
      return string.format("%s %d", sh_quote(ROOT .. "/build/bench/sgemm_direct"), opts.threads)
    end,
  },
}

-- The PyTorch peer, once per setting, between lualign and OpenBLAS.
for i, setting in ipairs(settings) do
  table.insert(CONTENDERS, 1 + i, {
    key = setting.name,
    sections = {tiny = true, elementwise = true, matmul = true},
    available = have_torch,
    command = function(section)
      return peer.command(setting, string.format("%s %s %d", sh_quote(ROOT .. "/bench/ops_torch.py"), section,
                                                 opts.threads))
    end,
  })
end

-- Runs one contender on one section; returns {case = value}, the cases in
-- the order printed, and the "info" lines.
local function run_once(contender, section)
  local cmd = contender.command(section)
  local p = assert(io.popen(cmd, "r"))
  local values, cases, infos = {}, {}, {}
  for line in p:lines() do
    local kind, a, b, c = line:match("^(%a+)\t([^\t]*)\t([^\t]*)\t?([^\t]*)")
    if kind == "result" and a == section then
      values[b] = tonumber(c)
      cases[#cases + 1] = b
    elseif kind == "info" then
      infos[#infos + 1] = a .. ": " .. b
    end
  end
  local ok, how, code = p:close()
  if not ok then error(string.format("%s failed (%s %s): %s", contender.key, how, code, cmd)) end
  return values, cases, infos
end

------------------------------------------------------------------------------
-- Statistics.

local function median(xs)
  local s = {}
  for i, v in ipairs(xs) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

-- (max - min) / median, in percent: how much the rounds disagreed.
local function spread(xs)
  local m = median(xs)
  if not m or m == 0 then return nil end
  return (math.max(table.unpack(xs)) - math.min(table.unpack(xs))) / m * 100
end

------------------------------------------------------------------------------
-- Output.

local function fmt(v, digits)
  if v == nil then return "n/a" end
  return string.format("%." .. (digits or 2) .. "f", v)
end

local function ratio(a, b)
  if a == nil or b == nil or b == 0 then return nil end
  return a / b
end

-- Prints rows as an aligned text table, or a Markdown table with --markdown.
local function print_table(header, rows)
  if opts.markdown then
    print("| " .. table.concat(header, " | ") .. " |")
    local rule = {}
    for i = 1, #header do rule[i] = i == 1 and "---" or "---:" end
    print("| " .. table.concat(rule, " | ") .. " |")
    for _, r in ipairs(rows) do print("| " .. table.concat(r, " | ") .. " |") end
    return
  end
  local width = {}
  for i, h in ipairs(header) do width[i] = #h end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do width[i] = math.max(width[i], #c) end
  end
  local function line(r)
    local out = {}
    for i, c in ipairs(r) do
      out[i] = i == 1 and c .. string.rep(" ", width[i] - #c) or string.rep(" ", width[i] - #c) .. c
    end
    print("  " .. table.concat(out, "  "))
  end
  line(header)
  for _, r in ipairs(rows) do line(r) end
end

-- What a section's ratio columns mean, and how its rows are built.
local SECTION_INFO = {
  tiny = {
    title = "Per-op overhead on (4, 4) tensors, microseconds per op (lower is better)",
    higher = false, digits = 3,
    note = "torch/lualign: how many times cheaper a lualign op is (target >= 3); "
           .. "cpu: the same in CPU time, which leaves out waits for a core",
    row = function(case, m, sp, cpu)
      return {case, fmt(m.lualign, 3), fmt(m.torch, 3), fmt(ratio(m.torch, m.lualign)),
              fmt(cpu.lualign, 3), fmt(cpu.torch, 3), fmt(ratio(cpu.torch, cpu.lualign)),
              fmt(sp.lualign, 0) .. "/" .. fmt(sp.torch, 0)}
    end,
    header = {"op", "lualign us", "torch us", "torch/lualign", "lualign cpu", "torch cpu",
              "cpu ratio", "spread % (l/t)"},
  },
  elementwise = {
    title = "Elementwise throughput on 16M float32, GB/s moved (higher is better)",
    higher = true, digits = 2,
    note = "lualign/torch > 1: lualign faster",
    row = function(case, m, sp)
      return {case, fmt(m.lualign, 2), fmt(m.torch, 2), fmt(ratio(m.lualign, m.torch)),
              fmt(sp.lualign, 0) .. "/" .. fmt(sp.torch, 0)}
    end,
    header = {"op", "lualign GB/s", "torch GB/s", "lualign/torch", "spread % (l/t)"},
  },
  matmul = {
    title = "Matmul GFLOP/s, M x N x K (higher is better)",
    higher = true, digits = 1,
    note = "lualign/openblas: share of direct cblas_sgemm (target >= 0.95)",
    row = function(case, m, sp)
      return {case, fmt(m.lualign, 1), fmt(m.openblas, 1), fmt(m.torch, 1),
              fmt(ratio(m.lualign, m.openblas)), fmt(ratio(m.lualign, m.torch)),
              fmt(sp.lualign, 0) .. "/" .. fmt(sp.openblas, 0) .. "/" .. fmt(sp.torch, 0)}
    end,
    header = {"product", "lualign", "openblas", "torch", "lualign/openblas", "lualign/torch",
              "spread % (l/o/t)"},
  },
}

------------------------------------------------------------------------------
-- Main: alternate the contenders, round by round, section by section.

local function active_contenders(section)
  local list = {}
  for _, c in ipairs(CONTENDERS) do
    if c.sections[section] then
      if c.available and not c.available() then
        io.stderr:write(string.format("note: %s is not available; its columns read n/a\n", c.key))
      else
        list[#list + 1] = c
      end
    end
  end
  return list
end

local function run_section(section)
  local info = SECTION_INFO[section] or error("unknown section " .. section)
  local contenders = active_contenders(section)
  local samples, order, infos = {}, {}, {}
  for _, c in ipairs(contenders) do samples[c.key] = {} end
  for round = 1, opts.rounds do
    io.stderr:write(string.format("%s: round %d/%d:", section, round, opts.rounds))
    for j = 0, #contenders - 1 do
      -- rotate the order each round so no contender always runs first
      local c = contenders[(round - 1 + j) % #contenders + 1]
      io.stderr:write(" " .. c.key)
      io.stderr:flush()
      local values, cases, lines = run_once(c, section)
      for _, case in ipairs(cases) do
        if not samples[c.key][case] then
          samples[c.key][case] = {}
          -- "case|cpu" rows are a second figure for "case", shown beside it
          if c.key == "lualign" and not case:find("|cpu", 1, true) then order[#order + 1] = case end
        end
        table.insert(samples[c.key][case], values[case])
      end
      for _, l in ipairs(lines) do infos[l] = true end
    end
    io.stderr:write("\n")
  end
  print(string.format("\n%s (median of %d rounds, %d threads, OMP_WAIT_POLICY=%s)", info.title,
                      opts.rounds, opts.threads, opts.wait_policy))
  for l in pairs(infos) do print("  " .. l) end
  print("  " .. info.note .. "; torch: its best setting for the case")
  for _, l in ipairs(peer.describe(settings)) do print("  peer " .. l) end
  local rows, per_setting = {}, {}
  for _, case in ipairs(order) do
    local m, sp, cpu = {}, {}, {}
    for key, by_case in pairs(samples) do
      if by_case[case] then
        m[key] = median(by_case[case])
        sp[key] = spread(by_case[case])
      end
      if by_case[case .. "|cpu"] then cpu[key] = median(by_case[case .. "|cpu"]) end
    end
    -- PyTorch at its best setting for this case
    local best, who = peer.best(settings, function(st) return m[st.name] end, info.higher)
    if who then m.torch, sp.torch, cpu.torch = best, sp[who.name], cpu[who.name] end
    local row = info.row(case, m, sp, cpu)
    row[#row + 1] = who and who.key or "n/a"
    rows[#rows + 1] = row
    local each = {case}
    for _, st in ipairs(settings) do each[#each + 1] = fmt(m[st.name], info.digits) end
    per_setting[#per_setting + 1] = each
  end
  local header = {table.unpack(info.header)}
  header[#header + 1] = "torch best setting"
  print_table(header, rows)
  print("\n  PyTorch under each setting (medians):")
  local each_header = {info.header[1]}
  for _, st in ipairs(settings) do each_header[#each_header + 1] = st.name end
  print_table(each_header, per_setting)
end

print(string.format("lualign engine ops vs PyTorch CPU and direct OpenBLAS -- %s", os.date("%Y-%m-%d %H:%M")))
for _, section in ipairs(opts.sections) do run_section(section) end
