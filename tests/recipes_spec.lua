-- Each recipe end to end on a miniature config: its loss falls or its metric
-- moves the right way; a run stopped mid-way and resumed ends with the same
-- metrics as an uninterrupted one.
local la = require "lualign"
local recipe = require "lualign.recipe"
local log = require "lualign.log"

local out = os.tmpname()
os.remove(out)
assert(require("lualign.sys").mkdir(out))

local function script(name) return "recipes/" .. name .. ".lua" end

local tiny_model = {n_layer = 1, n_embd = 32, n_head = 2, context = 64, vocab_size = 320,
                    batch_size = 8, eval_batches = 4}

local function with(base, extra)
  local t = {out_dir = out}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

-- Mean of a metric over the first and the last n logged rows that have it.
local function ends(path, key, n)
  local rows = {}
  for _, r in ipairs(log.read(path)) do if r[key] then rows[#rows + 1] = r[key] end end
  local a, b = 0, 0
  for i = 1, n do a, b = a + rows[i], b + rows[#rows - n + i] end
  return a / n, b / n
end

local h = require "helpers"
local read = h.read

-- The first n soft-label pairs of the bundled modest set, written to path.
local function first_pairs(n, path)
  local lines = {}
  for line in io.lines(la.data.path("vader/modest/train.jsonl")) do
    if #lines == n then break end
    lines[#lines + 1] = line
  end
  return h.write(path, table.concat(lines, "\n") .. "\n")
end

-- The bundled VADER set's held-out files and judge, for a training file of pairs taken from it.
local vader_eval = {eval = "vader/modest/validation.jsonl", eval_pairs = 64, eval_prompts = "vader/prompts_test.jsonl",
                    judge = "lexicon", test = "vader/test.jsonl"}

describe("recipes on miniature configs", function()
  local pre
  setup(function()
    pre = recipe.run_script(script("pretrain"), with(tiny_model, {name = "pre", steps = 40, eval_every = 20,
                                                                   warmup = 5}))
  end)
  teardown(function() os.execute("rm -rf " .. out) end)

  it("pretrain lowers the held-out loss and writes its run folder", function()
    assert.is_true(pre.valid_loss < pre.first_valid_loss - 0.5,
      string.format("held-out loss %.3f -> %.3f", pre.first_valid_loss, pre.valid_loss))
    for _, f in ipairs({"config.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors",
                        "tokenizer.json", "loss.svg", "report.md"}) do
      assert.is_true(pre.run:exists(f), f)
    end
    assert.is_truthy(read(pre.run:path("report.md")):find("held-out loss after training", 1, true))
    -- hf/: the same model as a GPT-2 folder
    local ids = la.tensor({{1, 5, 9, 200}}, "int64")
    local back, trained = la.models.from_pretrained(pre.saved), recipe.load_model(pre.run.dir)
    assert.are.equal(0, (back(ids) - trained(ids)):abs():max():item())
    assert.are.equal(trained.config.vocab_size, la.tokenizer.load(pre.saved).vocab_size)
  end)

  it("resumes to the same metrics as an uninterrupted run", function()
    local args = with(tiny_model, {name = "pre_full", steps = 30, eval_every = 10, warmup = 5,
                                   tokenizer = out .. "/pre/tokenizer.json"})
    recipe.run_script(script("pretrain"), args)
    args.name, args.stop_at = "pre_cut", 25
    assert.has_error(function() recipe.run_script(script("pretrain"), args) end,
      "pre_cut: stopped after step 25 (stop_at)")
    args.stop_at, args.resume = 0, true
    recipe.run_script(script("pretrain"), args)
    assert.are.equal(read(out .. "/pre_full/metrics.jsonl"), read(out .. "/pre_cut/metrics.jsonl"))
  end)

  it("sft lowers the held-out completion loss below the base model's", function()
    local r = recipe.run_script(script("sft"), {out_dir = out, name = "sft", base = out .. "/pre", steps = 40,
      eval_every = 20, batch_size = 8, max_len = 64, eval_examples = 32, samples = 2})
    assert.is_true(r.valid_loss < r.base_loss - 0.15, string.format("%.3f -> %.3f", r.base_loss, r.valid_loss))
  end)

  it("reward lowers its loss and ranks held-out pairs far better than chance", function()
    local r = recipe.run_script(script("reward"), {out_dir = out, name = "rm", base = out .. "/pre", steps = 300,
      eval_every = 150, batch_size = 16, max_len = 48, lr = 2e-3})
    local first, last = ends(r.run:path("metrics.jsonl"), "loss", 10)
    assert.is_true(last < first - 0.05, string.format("loss %.3f -> %.3f", first, last))
    -- 298 held-out pairs (test and validation): chance gives 0.5 with a standard deviation of 0.029,
    -- so 0.62 is 4 of them away; this run gives about 0.67 (a reward read at the wrong
    -- position, or a loss of the wrong sign, gives 0.5 or less)
    local _, valid = log.series(log.read(r.run:path("metrics.jsonl")), "valid_accuracy")
    local held_out = (r.accuracy + valid[#valid]) / 2
    assert.is_true(held_out > 0.62, string.format("held-out accuracy %.3f (test %.3f, validation %.3f)",
      held_out, r.accuracy, valid[#valid]))
  end)

  it("ppo raises the score of a scripted reward, on its rollouts and on held-out prompts", function()
    -- a reward that asks for the letter e (a quarter per e), with no EOS penalty: easy to learn
    local rf = out .. "/reward_e.lua"
    local f = assert(io.open(rf, "w"))
    f:write("return function(prompt, response) local _, n = response:gsub('e', '') return n / 4 end\n")
    f:close()
    local r = recipe.run_script(script("ppo"), {out_dir = out, name = "ppo", policy = out .. "/sft",
      reward = "script", reward_script = rf, advantage = "rloo", rloo_k = 4, iterations = 24, batch_size = 16,
      mini_batch_size = 16, max_new_tokens = 8, lr = 1e-3, eval_every = 12, eval_batch = 64, target_kl = 0,
      missing_eos_penalty = 0})
    -- The score roughly doubles (about 0.27 -> 0.55 over the first and last 6 rollouts; held out,
    -- 0.26 -> 0.6).  Rollout means of 6 iterations vary by about 0.04 without learning, and the
    -- held-out evaluation draws the same samples before and after, so a policy that does not
    -- learn gains nothing there; one that climbs the wrong way loses.
    local first, last = ends(r.run:path("metrics.jsonl"), "objective/scores", 6)
    assert.is_true(last > first + 0.12, string.format("rollout score %.3f -> %.3f", first, last))
    assert.is_true(r.after.reward > r.before.reward + 0.15,
      string.format("held-out score %.3f -> %.3f", r.before.reward, r.after.reward))
  end)

  it("ppo resumes (policy, value model and both optimizers) to the metrics of an uninterrupted run", function()
    local args = {out_dir = out, name = "ppo_full", policy = out .. "/sft", reward_model = out .. "/rm",
      advantage = "gae", iterations = 6, batch_size = 8, mini_batch_size = 4, max_new_tokens = 6, eval_every = 2,
      eval_batch = 8, target_kl = 0.5}
    recipe.run_script(script("ppo"), args)
    args.name, args.stop_at = "ppo_cut", 4
    assert.has_error(function() recipe.run_script(script("ppo"), args) end, "ppo_cut: stopped after step 4 (stop_at)")
    args.stop_at, args.resume = 0, true
    recipe.run_script(script("ppo"), args)
    local full, cut = read(out .. "/ppo_full/metrics.jsonl"), read(out .. "/ppo_cut/metrics.jsonl")
    assert.is_truthy(full:find('value_avg', 1, true))   -- the value model trained
    assert.are.equal(full, cut)
    assert.are.equal(read(out .. "/ppo_full/hf/model.safetensors"), read(out .. "/ppo_cut/hf/model.safetensors"))
  end)

  it("gdpo widens the margin between chosen and rejected", function()
    -- 32 soft-label pairs seen 20 times: the margin must grow as they are learned
    local small = first_pairs(32, out .. "/pairs.jsonl")
    local r = recipe.run_script(script("gdpo"), with(vader_eval, {name = "gdpo", policy = out .. "/sft", train = small,
      sft_steps = 10, steps = 40, batch_size = 16, lr = 1e-3, eval_every = 20, eval_samples = 4}))
    local first, last = ends(r.run:path("metrics.jsonl"), "rewards/margins", 5)
    assert.is_true(last > first + 0.1, string.format("margin %.3f -> %.3f", first, last))
    assert.is_true(r.run:exists("ref_logps.safetensors"))
    assert.is_number(r.last.win_rate)
    assert.is_number(r.last["eval_rewards/accuracies"])
  end)

  it("never mixes two runs in one folder: a second run refuses, a resumed one must keep its config", function()
    local first = read(out .. "/gdpo/config.json")
    local args = with(vader_eval, {name = "gdpo", policy = out .. "/sft", train = "vader/confident/train.jsonl",
                  sft_steps = 10, steps = 40, batch_size = 16, lr = 1e-3, eval_every = 20, eval_samples = 4})
    local ok, err = pcall(recipe.run_script, script("gdpo"), args)
    assert.is_false(ok)
    assert.matches(out:gsub("%p", "%%%0") .. "/gdpo already holds a run %(.*%); to replace it: overwrite=true; "
      .. "to keep it: a new name=", err)
    args.resume = true
    ok, err = pcall(recipe.run_script, script("gdpo"), args)
    assert.is_false(ok)
    assert.matches("cannot resume the run in .*/gdpo with another config: train='vader/confident/train.jsonl' "
      .. "%(the run has '.*pairs.jsonl'%)", err)
    -- a start that fails (a missing data file) writes nothing, even with overwrite=true
    args.resume, args.overwrite, args.train = false, true, out .. "/no_such_pairs.jsonl"
    assert.has_error(function() recipe.run_script(script("gdpo"), args) end,
      "train: no such file: " .. out .. "/no_such_pairs.jsonl (nor a bundled dataset of that name in "
      .. table.concat(la.data.search_dirs(), ", ") .. ")")
    args.train, args.policy = out .. "/pairs.jsonl", out .. "/no_such_run"
    assert.has_error(function() recipe.run_script(script("gdpo"), args) end,
      "policy: no such run folder, model file or Hugging Face model folder: " .. out .. "/no_such_run")
    assert.are.equal(first, read(out .. "/gdpo/config.json"))
  end)

  it("computes a cached file again when what it was computed from changes", function()
    -- the gdpo run above, resumed after its training pairs changed on disk: same config,
    -- other data, so the fitted reference and the reference log-probs are computed again
    local cjson = require "cjson"
    local caches = cjson.decode(read(out .. "/gdpo/caches.json"))
    local small = out .. "/pairs.jsonl"
    local lines = {}
    for line in io.lines(small) do lines[#lines + 1] = line end
    lines[1], lines[2] = lines[2], lines[1]
    local f = assert(io.open(small, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    recipe.run_script(script("gdpo"), with(vader_eval, {name = "gdpo", policy = out .. "/sft", train = small,
      sft_steps = 10, steps = 40, batch_size = 16, lr = 1e-3, eval_every = 20, eval_samples = 4, resume = true}))
    local now = cjson.decode(read(out .. "/gdpo/caches.json"))
    local id = recipe.file_identity(small)
    local function train_digest(inputs) return (inputs.train or inputs.data.train).digest end
    for _, file in ipairs({"reference.safetensors", "ref_logps.safetensors"}) do
      assert.are_not.equal(train_digest(caches[file].inputs), train_digest(now[file].inputs), file)
      assert.are.equal(id.digest, train_digest(now[file].inputs), file)
    end
    -- the held-out pairs' log-probs depend on the reference, which changed with the data
    assert.are_not.equal(caches["ref_logps_test.safetensors"].inputs.reference.digest,
      now["ref_logps_test.safetensors"].inputs.reference.digest)
  end)

  it("turns evaluation off with eval_every=0 and names a dataset smaller than one batch", function()
    local r = recipe.run_script(script("sft"), {out_dir = out, name = "sft_noeval", base = out .. "/pre", steps = 3,
      eval_every = 0, batch_size = 4, max_len = 64, eval_examples = 8, samples = 1})
    assert.is_nil(r.valid_loss)
    assert.is_nil(r.base_loss)
    assert.is_true(r.run:exists("checkpoint.safetensors"))
    assert.is_truthy(read(r.run:path("report.md")):find("not evaluated (eval_every=0)", 1, true))
    local tiny = first_pairs(5, out .. "/five_pairs.jsonl")
    assert.has_error(function()
      recipe.run_script(script("gdpo"), with(vader_eval, {name = "five", policy = out .. "/sft", train = tiny,
        batch_size = 16}))
    end, tiny .. ": 5 examples are fewer than one batch of 16 (batch_size); lower batch_size or give more data")
    assert.is_nil(require("lualign.sys").listdir(out .. "/five"))   -- refused before anything was written
  end)

  it("rejects unknown losses and keys", function()
    assert.has_error(function() recipe.run_script(script("gdpo"), {out_dir = out, name = "kto", loss = "kto"}) end,
      "loss must be one of dpo, cdpo, rdpo, ipo, hinge, gdpo, gipo, simpo (got 'kto') -- did you mean 'dpo'?")
    assert.has_error(function() recipe.run_script(script("sft"), {out_dir = out, step = 3}) end)
  end)
end)
