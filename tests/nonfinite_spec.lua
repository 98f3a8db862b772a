-- Non-finite values: anomaly mode names the first op that makes NaN or inf,
-- forward and backward; recipes skip or stop on a non-finite loss or gradient
-- norm; no checkpoint or model file holding NaN is ever written.
local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"
local sys = require "lualign.sys"

local h = require "helpers"
local tmpdir, read = h.tmpdir, h.read

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

describe("anomaly mode", function()
  after_each(function() la.set_anomaly_enabled(false) end)

  it("is off by default, and ops make NaN quietly then", function()
    assert.is_false(la.is_anomaly_enabled())
    local x = la.tensor({-1.0, 1.0}):requires_grad()
    assert.is_false(x:log():all_finite())
  end)

  it("names the first op whose output is not finite, with the shapes", function()
    local x = la.tensor({{1.0, -2.0, 3.0}, {4.0, 5.0, 6.0}}):requires_grad()
    local w = la.ones(3, 2)
    assert.are.equal("detect_anomaly: 'log' produced NaN (1 of 6 values) in its output of shape (2, 3); "
      .. "its input has shape (2, 3)",
      errmsg(la.detect_anomaly, function() return x:log():matmul(w) end))
    assert.are.equal("detect_anomaly: 'div' produced inf (2 of 6 values) in its output of shape (2, 3); "
      .. "its inputs have shapes (2, 3) and (3,)",
      errmsg(la.detect_anomaly, function() return x / la.tensor({1.0, 0.0, 1.0}) end))
  end)

  it("names the first backward whose input gradient is not finite", function()
    local x = la.tensor({0.0, 4.0}):requires_grad()
    local msg = errmsg(la.detect_anomaly, function() (x:sqrt() * 3):sum():backward() end)
    assert.are.equal("detect_anomaly: the backward of 'sqrt' produced inf (1 of 2 values) in the gradient of "
      .. "its input 1 (of 1), of shape (2,); the gradient of its output, of shape (2,), was finite", msg)
    assert.is_nil(x.grad)   -- nothing was accumulated past the bad node
  end)

  it("refuses a non-finite gradient given to backward()", function()
    local x = la.ones(2):requires_grad()
    local y = x * 2
    assert.are.equal("detect_anomaly: the gradient passed to backward() is not finite",
      errmsg(la.detect_anomaly, function() y:backward(la.tensor({1.0, 0 / 0})) end))
  end)

  it("comes as a switch, a function form and a to-be-closed guard", function()
    assert.is_false(la.detect_anomaly(true))
    assert.is_true(la.is_anomaly_enabled())
    assert.is_true(la.detect_anomaly(false))
    assert.are.equal(7, la.detect_anomaly(function(a, b) return a + b end, 3, 4))
    assert.is_false(la.is_anomaly_enabled())
    do
      local _ <close> = la.detect_anomaly()
      assert.is_true(la.is_anomaly_enabled())
    end
    assert.is_false(la.is_anomaly_enabled())
    -- the function form restores the setting after an error too
    pcall(la.detect_anomaly, function() error("boom") end)
    assert.is_false(la.is_anomaly_enabled())
    assert.has_error(function() la.detect_anomaly("yes") end,
      "detect_anomaly: expected true/false, a function, or no argument for the to-be-closed form")
  end)

  it("leaves finite training untouched", function()
    la.manual_seed(1)
    local model = la.nn.Linear(4, 2)
    local x = la.randn(8, 4)
    local plain = (model(x) ^ 2):mean()
    plain:backward()
    local g1 = model.weight.grad:clone()
    model:zero_grad()
    la.detect_anomaly(function() (model(x) ^ 2):mean():backward() end)
    assert.is_true(g1:eq(model.weight.grad):all())
  end)

  it("skips views, which make no new values", function()
    local x = la.tensor({{1.0, 0 / 0}, {2.0, 3.0}}):requires_grad()
    assert.are.equal("detect_anomaly: 'mul' produced NaN (1 of 4 values) in its output of shape (2, 2); "
      .. "its inputs have shapes (2, 2) and (2, 2)",
      errmsg(la.detect_anomaly, function() local t = x:t(); return t * t end))
  end)
end)

describe("t:all_finite()", function()
  it("looks at every element, whatever the layout", function()
    assert.is_true(la.ones(3, 4):all_finite())
    assert.is_false(la.tensor({{1.0, 2.0}, {1 / 0, 4.0}}):t():all_finite())
    assert.is_false(la.tensor(-1 / 0):all_finite())
    assert.is_true(la.tensor({1, 2}):all_finite())
    assert.is_true(la.zeros(0, 3):all_finite())
    assert.is_false(la.all_finite(la.full({5}, 0 / 0):narrow(1, 2, 2)))
  end)
end)

describe("recipe.finite_step", function()
  local function config(extra)
    local argv = {"name=t"}
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    return recipe.config(argv, "demo", {})
  end

  it("lets finite steps through", function()
    local c = config()
    assert.are.equal("stop", c.nonfinite)
    assert.is_true(recipe.finite_step(c, 1, 2.5, 1.0))
    assert.is_true(recipe.finite_step(c, 2, la.tensor(2.5), nil))
  end)

  it("stops on a NaN or inf loss or gradient norm, naming the step", function()
    local c = config()
    assert.has_error(function() recipe.finite_step(c, 7, 0 / 0, 1.0) end,
      "t: stopped at step 7: non-finite loss nan (nonfinite=stop; nonfinite=skip skips such steps instead); "
      .. "the last checkpoint is left as it was")
    assert.has_error(function() recipe.finite_step(c, 8, 1.0, -1 / 0) end,
      "t: stopped at step 8: non-finite gradient norm -inf (nonfinite=stop; nonfinite=skip skips such steps "
      .. "instead); the last checkpoint is left as it was")
  end)

  it("computes the gradient norm from a model", function()
    local c = config()
    local m = la.nn.Linear(2, 1)
    m.weight.grad = la.tensor({{1 / 0, 0.0}})
    assert.has_error(function() recipe.finite_step(c, 3, 1.0, m) end)
    m.weight.grad = la.tensor({{1.0, 0.0}})
    assert.is_true(recipe.finite_step(c, 3, 1.0, m))
  end)

  it("skips with nonfinite=skip, and stops after MAX_SKIPS steps in a row", function()
    local c = config({"nonfinite=skip"})
    local old = recipe.MAX_SKIPS
    recipe.MAX_SKIPS = 3
    local ok, err = pcall(function()
      assert.is_false(recipe.finite_step(c, 1, 0 / 0, 1.0))
      assert.is_false(recipe.finite_step(c, 2, 0 / 0, 1.0))
      assert.is_true(recipe.finite_step(c, 3, 1.0, 1.0))      -- a good step resets the count
      assert.is_false(recipe.finite_step(c, 4, 1 / 0, 1.0))
      assert.is_false(recipe.finite_step(c, 5, 1.0, 0 / 0))
      assert.are.equal(4, recipe.skipped_steps(c))
      assert.has_error(function() recipe.finite_step(c, 6, 0 / 0, 1.0) end,
        "t: stopped at step 6: 3 steps in a row had a non-finite loss or gradient norm (the last: loss nan); "
        .. "the run has diverged")
    end)
    recipe.MAX_SKIPS = old
    assert(ok, err)
  end)

  it("is refused an unknown choice", function()
    assert.has_error(function() config({"nonfinite=ignore"}) end,
      "argument 'nonfinite=ignore': nonfinite must be 'skip' or 'stop' (got 'ignore')")
  end)
end)

describe("checkpoints never hold NaN", function()
  it("save_checkpoint and save_model refuse non-finite weights and leave the old files", function()
    local dir = tmpdir()
    local c = recipe.config({"out_dir=" .. dir, "name=r"}, "demo", {})
    local run = recipe.run(c):start()
    local model = la.nn.Linear(3, 2)
    local opt = la.optim.AdamW(model, {lr = 0.1})
    run:save_checkpoint(model, opt, 5)
    local before = read(run:path("checkpoint.safetensors"))
    local model_before = read(run:path("model.safetensors"))
    la.no_grad(function() model.bias:fill(1 / 0) end)
    assert.has_error(function() run:save_checkpoint(model, opt, 10) end,
      "save_checkpoint: refusing to write " .. run:path("checkpoint.safetensors") .. ": tensor 'model.bias' "
      .. "holds NaN or inf (the run has diverged; the file on disk, if any, is left as it was)")
    assert.has_error(function() run:save_model(model, nil, "final.safetensors") end,
      "save_model: refusing to write " .. run:path("final.safetensors") .. ": tensor 'bias' holds NaN or inf "
      .. "(the run has diverged; the file on disk, if any, is left as it was)")
    assert.are.equal(before, read(run:path("checkpoint.safetensors")))
    assert.are.equal(model_before, read(run:path("model.safetensors")))
    assert.is_nil(read(run:path("final.safetensors")))
    assert.are.same({"checkpoint.safetensors", "config.json", "model.safetensors"}, sys.listdir(run.dir))
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

describe("metrics files", function()
  it("read NaN back for the null a NaN metric was written as", function()
    local dir = tmpdir()
    local f = assert(io.open(dir .. "/m.jsonl", "w"))
    f:write('{"loss": null, "step": 1}\n{"loss": 2.5, "step": 2}\n')
    f:close()
    local rows = log.read(dir .. "/m.jsonl")
    assert.is_true(rows[1].loss ~= rows[1].loss)
    assert.are.equal(2.5, rows[2].loss)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("drop, on resume, a line a killed run left cut short", function()
    local dir = tmpdir()
    local c = recipe.config({"out_dir=" .. dir, "name=r"}, "demo", {})
    local run = recipe.run(c):start()
    local f = assert(io.open(run:path("metrics.jsonl"), "w"))
    -- the last line was cut in the middle of step 12's row: it must not count as step 1
    f:write('{"loss": 1.5, "step": 1}\n{"loss": 1.25, "step": 2}\n{"loss": 1.0, "step": 3}\n{"grad_norm": 1.0, "step": 1')
    f:close()
    local logger = log.open(run, {start_step = 2, quiet = true})
    logger:close()
    assert.are.equal('{"loss": 1.5, "step": 1}\n{"loss": 1.25, "step": 2}\n', read(run:path("metrics.jsonl")))
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("resumed runs clear the temporary files a killed run left", function()
    local dir = tmpdir()
    local config = recipe.config({"out_dir=" .. dir, "name=r", "resume=true"}, "demo", {})
    recipe.run(config):start()
    for _, name in ipairs({".checkpoint.safetensors.tmp-123-456-0", "report.md.tmp", "keep.txt"}) do
      local f = assert(io.open(dir .. "/r/" .. name, "w"))
      f:write("x")
      f:close()
    end
    recipe.run(config):start()
    assert.are.same({"config.json", "keep.txt"}, sys.listdir(dir .. "/r"))
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

describe("recipes on a diverging run", function()
  local out
  setup(function()
    out = tmpdir()
    recipe.run_script("recipes/pretrain.lua", {out_dir = out, name = "pre", steps = 2, eval_every = 2, warmup = 1,
      n_layer = 1, n_embd = 32, n_head = 2, context = 64, vocab_size = 300, batch_size = 8, eval_batches = 1})
  end)
  teardown(function() os.execute("rm -rf '" .. out .. "'") end)

  -- lr = 1e30 makes the first update blow the weights up, and the loss is NaN from step 2.
  local args = {base = nil, steps = 5, eval_every = 1, batch_size = 8, max_len = 48, eval_examples = 8,
                samples = 1, lr = 1e30, warmup = 0}

  it("stop (the default) ends the run at the first NaN and keeps the last checkpoint", function()
    local a = {out_dir = out, name = "stop", base = out .. "/pre"}
    for k, v in pairs(args) do a[k] = a[k] or v end
    assert.has_error(function() recipe.run_script("recipes/sft.lua", a) end,
      "stop: stopped at step 2: non-finite loss nan (nonfinite=stop; nonfinite=skip skips such steps instead); "
      .. "the last checkpoint is left as it was")
    local tensors, meta = la.checkpoint.load(out .. "/stop/checkpoint.safetensors")
    assert.are.equal("1", meta.step)
    for name, t in pairs(tensors) do assert.is_true(t:all_finite(), name) end
  end)

  it("skip leaves out the bad steps and finishes", function()
    local a = {out_dir = out, name = "skip", base = out .. "/pre", nonfinite = "skip"}
    for k, v in pairs(args) do a[k] = a[k] or v end
    local r = recipe.run_script("recipes/sft.lua", a)
    local rows = log.read(r.run:path("metrics.jsonl"))
    assert.are.equal(6, #rows)                 -- step 0 (the data's counts), then steps 1 to 5
    assert.are.equal(3263, rows[1]["train/examples"])
    assert.is_true(rows[2].loss == rows[2].loss)
    assert.is_true(rows[4].loss ~= rows[4].loss)
    local tensors = la.checkpoint.load(r.run:path("checkpoint.safetensors"))
    for name, t in pairs(tensors) do assert.is_true(t:all_finite(), name) end
  end)
end)
