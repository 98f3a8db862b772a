-- Crash safety: a recipe run killed with SIGKILL at a random moment after its
-- first checkpoint keeps a whole, loadable checkpoint, and `resume=true`
-- finishes with the same metrics.jsonl, byte for byte, and the same weights
-- as a run that was never interrupted (same seed, one thread).  Done for SFT
-- and for GDPO, each as a separate `bin/lualign recipes/NAME.lua` process on a
-- miniature config.  The delay before the kill is printed, to replay a failure.
local la = require "lualign"
local sys = require "lualign.sys"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local h = require "helpers"
local read, exists = h.read, h.exists

local function sleep(s) os.execute(string.format("sleep %.3f", s)) end

local function command(recipe, args)
  local parts = {"bin/lualign", "recipes/" .. recipe .. ".lua"}
  local keys = {}
  for k in pairs(args) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = q(k .. "=" .. tostring(args[k])) end
  return table.concat(parts, " ")
end

-- Runs a recipe to the end in a process of its own; returns its output.
local function run(recipe, args, log)
  local ok = os.execute(command(recipe, args) .. " > " .. q(log) .. " 2>&1")
  assert(ok, recipe .. " failed:\n" .. (read(log) or ""))
end

local function alive(pid)
  local ok = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return ok == true
end

-- Starts a run in the background, kills it with SIGKILL `delay` seconds after
-- its first checkpoint appears, and waits until it is gone.  Returns whether
-- it was still running when killed.
local function run_and_kill(recipe, args, dir, delay, log)
  local p = assert(io.popen(command(recipe, args) .. " > " .. q(log) .. " 2>&1 & echo $!"))
  local pid = assert(tonumber(p:read("l")))
  p:close()
  local checkpoint = dir .. "/checkpoint.safetensors"
  local waited = 0
  while not exists(checkpoint) do
    assert(alive(pid), recipe .. " ended before its first checkpoint:\n" .. (read(log) or ""))
    assert(waited < 120, recipe .. ": no checkpoint after 120 s")
    sleep(0.05)
    waited = waited + 0.05
  end
  sleep(delay)
  local was_running = alive(pid)
  os.execute("kill -9 " .. pid .. " 2>/dev/null")
  while alive(pid) do sleep(0.02) end
  return was_running
end

-- The tensors of two safetensors files are equal, bit for bit.
local function same_tensors(a, b)
  local ta, tb = la.checkpoint.load(a), la.checkpoint.load(b)
  for name, t in pairs(ta) do
    local u = tb[name]
    if not u then return false, name .. " is missing" end
    if not la.no_grad(function() return t:eq(u):all() end) then return false, name .. " differs" end
  end
  for name in pairs(tb) do if not ta[name] then return false, name .. " is extra" end end
  return true
end

local function stray_temporaries(dir)
  local found = {}
  for _, name in ipairs(sys.listdir(dir) or {}) do
    if name:match("%.tmp") then found[#found + 1] = name end
  end
  return found
end

describe("a run killed with SIGKILL", function()
  local out = os.tmpname()
  os.remove(out)
  assert(sys.mkdir(out))
  math.randomseed(os.time())
  local base = {out_dir = out, threads = 1, seed = 3}
  local function with(extra)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    for k, v in pairs(extra) do t[k] = v end
    return t
  end

  setup(function()
    run("pretrain", with{name = "pre", steps = 6, eval_every = 3, warmup = 1, n_layer = 1, n_embd = 32,
      n_head = 2, context = 64, vocab_size = 300, batch_size = 8, eval_batches = 2}, out .. "/pre.log")
  end)
  teardown(function() os.execute("rm -rf " .. q(out)) end)

  local function check(recipe, args, eval_every)
    run(recipe, with(args), out .. "/" .. recipe .. "_full.log")
    local full = out .. "/" .. args.name
    local cut_args = with(args)
    cut_args.name = args.name .. "_cut"
    local cut = out .. "/" .. cut_args.name
    local delay = math.random() * 0.8
    local was_running = run_and_kill(recipe, cut_args, cut, delay, out .. "/" .. recipe .. "_cut.log")
    local note = string.format("%s killed %.3f s after its first checkpoint%s", recipe, delay,
      was_running and "" or " (it had already finished)")
    -- What the kill left: a checkpoint that loads, at a checkpoint step.
    local tensors, meta = la.checkpoint.load(cut .. "/checkpoint.safetensors")
    assert.is_truthy(next(tensors), note)
    local step = tonumber(meta.step)
    assert.is_true(step ~= nil and step > 0 and step % eval_every == 0, note .. ": checkpoint step " .. tostring(meta.step))
    -- Resume to the end.
    cut_args.resume = true
    run(recipe, cut_args, out .. "/" .. recipe .. "_resume.log")
    assert.are.equal(read(full .. "/metrics.jsonl"), read(cut .. "/metrics.jsonl"), note)
    local ok, why = same_tensors(full .. "/checkpoint.safetensors", cut .. "/checkpoint.safetensors")
    assert.is_true(ok, note .. ": checkpoint " .. tostring(why))
    ok, why = same_tensors(full .. "/model.safetensors", cut .. "/model.safetensors")
    assert.is_true(ok, note .. ": model " .. tostring(why))
    assert.are.same({}, stray_temporaries(cut), note)
  end

  it("SFT resumes to the metrics of an uninterrupted run", function()
    check("sft", {name = "sft", base = out .. "/pre", steps = 40, eval_every = 5, batch_size = 8, max_len = 64,
      eval_examples = 16, samples = 1}, 5)
  end)

  it("GDPO resumes to the metrics of an uninterrupted run", function()
    check("gdpo", {name = "gdpo", policy = out .. "/sft", sft_steps = 4, steps = 30, batch_size = 16,
      eval_every = 5, eval_samples = 2}, 5)
  end)
end)
