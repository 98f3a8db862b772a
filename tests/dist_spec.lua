-- la.dist: in a world of one (every build), and across two processes under
-- `mpirun --oversubscribe -np 2` when lualign is built with Open MPI:
-- collectives and the gradient reducer (tests/dist/collectives.lua), an
-- error on one rank ending the job, and pretraining, SFT, reward, DPO, GRPO
-- and PPO runs of two processes against one process with the same global batch.
local la = require "lualign"
local sys = require "lualign.sys"
local dist = la.dist
local batch = require "lualign.data.batch"

local h = require "helpers"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local read = h.read

describe("la.dist in a world of one", function()
  it("is rank 0 of 1, and its collectives are the identity", function()
    assert.are.equal(0, dist.rank())
    assert.are.equal(1, dist.size())
    assert.is_true(dist.is_main())
    local t = la.tensor({1.5, 2})
    assert.are.equal(t, dist.all_reduce(t, "mean"))
    assert.is_true(t:eq(la.tensor({1.5, 2})):all())
    dist.broadcast(t, 0)
    local g = dist.all_gather(t)
    assert.are.same({1, 2}, g:shape())
    assert.are.equal(2.5, dist.sum(2.5))
    assert.are.equal("s", dist.broadcast_string("s"))
    dist.barrier()
  end)

  it("checks its arguments", function()
    assert.has_error(function() dist.broadcast(la.zeros(1), 1) end,
      "root 1 is not a rank of this world of 1 (ranks are 0 to 0)")
    assert.has_error(function() dist.all_reduce(la.zeros(1), "min") end,
      "unknown reduction 'min' (expected 'sum', 'mean' or 'max')")
    assert.has_error(function() dist.all_reduce(la.zeros(1, "bool")) end,
      "all_reduce: bool tensors cannot be reduced (convert to int32 first)")
    assert.has_error(function() dist.data_parallel({la.ones(1)}) end,
      "data_parallel: the model has no parameter that requires grad")
    assert.has_error(function() dist.data_parallel({la.ones(1):requires_grad()}, {bucket = 1}) end)
  end)

  it("data_parallel is plain training: loss and gradients untouched", function()
    la.manual_seed(3)
    local w = la.randn(4, 2):requires_grad()
    local dp = dist.data_parallel({w})
    assert.is_nil(dp:stats())
    local loss = la.randn(3, 4):matmul(w):square():mean()
    assert.are.equal(loss, dist.global_mean(loss, 6))
    local expected = la.no_grad(function() return w:clone() end)
    dp:backward(loss)
    assert.is_truthy(w.grad)
    assert.is_true(w:eq(expected):all())
    assert.are.same({a = 1, b = "x"}, dist.mean_metrics({a = 1, b = "x"}, 3))
  end)

  it("shares n items in contiguous parts that differ by at most one", function()
    assert.are.same({1, 5}, {dist.share(5)})
    local parts = {}
    for r = 0, 2 do parts[r + 1] = {dist.share(10, r, 3)} end
    assert.are.same({{1, 3}, {4, 6}, {7, 10}}, parts)
    local first, last = dist.share(1, 0, 2)
    assert.is_true(last < first, "rank 0 of 2 gets none of 1 item")
  end)

  it("global_mean rescales a share's mean to the global batch's", function()
    local loss = la.tensor(2.0)
    assert.are.equal(0.5, dist.global_mean(loss, 2, 8):item())
    local empty = dist.global_mean(loss, 0, 8)
    assert.are.equal(0, empty:item())
    assert.is_false(empty:needs_grad())
  end)
end)

describe("Loader:shard", function()
  local function ids_of(loader, epoch)
    local out = {}
    for b in loader:epoch(epoch) do out[#out + 1] = b.items end
    return out
  end
  local function make() return batch.loader({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, function(list)
    return {items = list} end, {batch_size = 5, seed = 4, drop_last = true}) end

  it("splits every batch into contiguous shares whose union is one process's batch", function()
    local whole = ids_of(make(), 2)
    for _, size in ipairs({2, 3}) do
      local shares = {}
      for r = 0, size - 1 do shares[r] = ids_of(make():shard(r, size), 2) end
      for k, items in ipairs(whole) do
        local joined = {}
        for r = 0, size - 1 do
          assert.is_true(#shares[r][k] >= 1)
          for _, x in ipairs(shares[r][k]) do joined[#joined + 1] = x end
        end
        assert.are.same(items, joined)
      end
    end
  end)

  it("refuses shares with nothing in them and bad ranks", function()
    local loader = batch.loader({1, 2, 3}, function(list) return {items = list} end, {batch_size = 3})
    loader:shard(3, 4)
    assert.has_error(function() loader:epoch(1)() end, "loader: batch 1 of epoch 1 has 3 unit(s), fewer "
      .. "than the 4 processes sharing it; use batches of at least 4 (or drop_last = true)")
    assert.has_error(function() loader:shard(2, 2) end,
      "shard: rank must be 0 to size - 1 and size at least 1 (got rank 2 of 2)")
  end)
end)

----------------------------------------------------------------------------
-- Across two processes

local mpirun = io.popen("command -v mpirun 2>/dev/null"):read("l")
local with_mpi = dist.built_with_mpi() and mpirun ~= nil
-- The ranks run this lua5.4 (make sanitize's, say): mpirun puts its own
-- folder first on the ranks' PATH.  Under make sanitize they look for memory
-- errors but not for leaks: MPI_Init's allocations live until the process
-- ends, in plugins unloaded by then, which LeakSanitizer cannot tell from
-- ours (the one-process tests check lualign's own for leaks).
local lua = io.popen("command -v lua5.4 2>/dev/null"):read("l") or "lua5.4"
local rank_env = os.getenv("LUALIGN_SANITIZE") and os.getenv("ASAN_OPTIONS")
  and ("ASAN_OPTIONS=" .. os.getenv("ASAN_OPTIONS") .. ":detect_leaks=0 ") or ""

-- Open MPI refuses to run as root unless told; two ranks on two cores (or
-- fewer) need --oversubscribe; each rank computes on one thread.  Shared
-- memory copies without process_vm_readv, which containers often forbid.
local function launch(np, args)
  return string.format("env %sOMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 %s --oversubscribe "
    .. "--bind-to none --mca btl_vader_single_copy_mechanism none -x OMP_NUM_THREADS=1 -np %d %s bin/lualign %s",
    rank_env, mpirun or "mpirun", np, lua, args)
end

if not with_mpi then
  describe("la.dist across processes", function()
    pending("lualign is built without Open MPI (install libopenmpi-dev and openmpi-bin, then make test)")
  end)
  return
end

require("c_tests")(_ENV, "la.dist across 2 processes (mpirun -np 2)", "tests/dist/collectives.lua",
  launch(2, "tests/dist/collectives.lua"))

describe("a job of two processes", function()
  local out = h.tmpdir()
  teardown(function() os.execute("rm -rf " .. q(out)) end)

  it("ends promptly with the failing rank's message when one rank fails", function()
    local script = h.write(out .. "/fail.lua", [[
local dist = require("lualign").dist
if dist.rank() == 1 then error("the data on this rank is bad", 0) end
dist.barrier()          -- rank 0 waits here for rank 1, which never comes
print("rank 0 went past the barrier")
]])
    local t0 = la.clock()
    local p = io.popen("timeout 60 " .. launch(2, q(script)) .. " 2>&1; echo \"exit $?\"")
    local output = p:read("a")
    p:close()
    local elapsed = la.clock() - t0
    assert.is_truthy(output:find("lualign: rank 1 of 2: the data on this rank is bad", 1, true), output)
    assert.is_nil(output:find("went past the barrier", 1, true), output)
    local status = tonumber(output:match("exit (%d+)%s*$"))
    assert.is_true(status ~= 0 and status ~= 124, "exit status " .. tostring(status) .. "\n" .. output)
    assert.is_true(elapsed < 20, string.format("the job took %.1f s to end", elapsed))
  end)
end)

-- Numbers in two metrics rows agree within rel (relative, with an absolute
-- floor of rel as well); strings are not compared (sampled text).
local function rows_agree(a_path, b_path, rel)
  local log = require "lualign.log"
  local a, b = log.read(a_path), log.read(b_path)
  if #a ~= #b or #a == 0 then return false, string.format("%d rows against %d", #a, #b) end
  for i, ra in ipairs(a) do
    local rb = b[i]
    for k, va in pairs(ra) do
      local vb = rb[k]
      if type(va) == "number" then
        if type(vb) ~= "number" or math.abs(va - vb) > rel * math.max(1, math.abs(va)) then
          return false, string.format("row %d, %s: %s against %s", i, k, tostring(va), tostring(vb))
        end
      elseif vb == nil then
        return false, string.format("row %d: %s missing", i, k)
      end
    end
  end
  return true
end

-- The largest difference between the tensors of two safetensors files.
local function weights_diff(a_path, b_path)
  local ta, tb = la.checkpoint.load(a_path), la.checkpoint.load(b_path)
  local worst, names = 0, 0
  for name, t in pairs(ta) do
    names = names + 1
    assert(tb[name], name .. " missing from " .. b_path)
    worst = math.max(worst, la.no_grad(function() return (t - tb[name]):abs():max():item() end))
  end
  assert(names > 0)
  return worst
end

describe("data-parallel recipes against one process (same global batch)", function()
  local out = h.tmpdir()
  local private = out .. "/tmp"     -- TMPDIR of the ranks: their private folders
  assert(sys.mkdir(private))
  teardown(function() os.execute("rm -rf " .. q(out)) end)

  local function args(t)
    local keys, parts = {}, {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = q(k .. "=" .. tostring(t[k])) end
    return table.concat(parts, " ")
  end
  local function run(np, recipe, t, log)
    local cmd = np == 1 and ("bin/lualign recipes/" .. recipe .. ".lua " .. args(t))
                         or ("TMPDIR=" .. q(private) .. " " .. launch(np, "recipes/" .. recipe .. ".lua " .. args(t)))
    local ok = os.execute(cmd .. " > " .. q(log) .. " 2>&1")
    assert(ok, recipe .. " on " .. np .. " process(es) failed:\n" .. (read(log) or ""))
    return read(log)
  end
  local function with(base, extra)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    for k, v in pairs(extra) do t[k] = v end
    return t
  end

  local pre = {out_dir = out, steps = 6, eval_every = 3, warmup = 1, n_layer = 1, n_embd = 32, n_head = 2,
               context = 64, vocab_size = 300, batch_size = 8, eval_batches = 2, threads = 1}
  setup(function() run(1, "pretrain", with(pre, {name = "pre"}), out .. "/pre.log") end)

  -- Metrics within rel, weights within abs_w, of one process's.
  local function same_run(one, two, rel, abs_w)
    local ok, why = rows_agree(out .. "/" .. one .. "/metrics.jsonl", out .. "/" .. two .. "/metrics.jsonl", rel)
    assert.is_true(ok, why)
    local d = weights_diff(out .. "/" .. one .. "/model.safetensors", out .. "/" .. two .. "/model.safetensors")
    assert.is_true(d < abs_w, string.format("weights differ by %.3g", d))
  end

  it("pretrain: the same metrics and weights", function()
    run(2, "pretrain", with(pre, {name = "pre2"}), out .. "/pre2.log")
    same_run("pre", "pre2", 2e-5, 2e-5)
  end)

  it("reward: the same metrics and weights", function()
    local r = {out_dir = out, base = out .. "/pre", steps = 6, eval_every = 3, batch_size = 16, max_len = 48,
               threads = 1}
    run(1, "reward", with(r, {name = "rm1"}), out .. "/rm1.log")
    run(2, "reward", with(r, {name = "rm2"}), out .. "/rm2.log")
    same_run("rm1", "rm2", 2e-5, 2e-5)
  end)

  local sft = {steps = 10, eval_every = 5, batch_size = 8, max_len = 64,
               eval_examples = 16, samples = 1, threads = 1}

  it("SFT: the same metrics and weights, only rank 0 writes, and it resumes", function()
    local a = with(sft, {out_dir = out, base = out .. "/pre"})
    run(1, "sft", with(a, {name = "sft1"}), out .. "/sft1.log")
    local log2 = run(2, "sft", with(a, {name = "sft2"}), out .. "/sft2.log")
    same_run("sft1", "sft2", 2e-5, 2e-5)
    -- one report on the terminal, the same files as one process's, no private folder left
    local _, reports = log2:gsub("sft: held%-out loss [%d.]+ %->", "")
    assert.are.equal(1, reports, log2)
    assert.are.same(sys.listdir(out .. "/sft1"), sys.listdir(out .. "/sft2"))
    assert.are.same({}, sys.listdir(private))
    -- stopped after its first checkpoint, resumed with the same two processes
    local cut = with(a, {name = "sft2cut", stop_at = 5})
    assert.is_false(pcall(run, 2, "sft", cut, out .. "/cut.log"))
    assert.is_truthy(read(out .. "/cut.log"):find("stopped after step 5", 1, true))
    cut.stop_at, cut.resume = 0, true
    run(2, "sft", cut, out .. "/resume.log")
    assert.are.equal(read(out .. "/sft2/metrics.jsonl"), read(out .. "/sft2cut/metrics.jsonl"))
    assert.are.equal(0, weights_diff(out .. "/sft2/model.safetensors", out .. "/sft2cut/model.safetensors"))
  end)

  it("SFT with LoRA and grad_accum: 2 ranks x 2 micro-batches give one process's whole batches", function()
    local a = with(sft, {out_dir = out, base = out .. "/pre", lora = true, lora_r = 4, steps = 6, eval_every = 3})
    run(1, "sft", with(a, {name = "lora1"}), out .. "/lora1.log")
    run(2, "sft", with(a, {name = "lora2", grad_accum = 2}), out .. "/lora2.log")
    same_run("lora1", "lora2", 2e-5, 2e-5)
    assert.is_truthy(sys.listdir(out .. "/lora2/adapter"), "the adapter folder is written")
  end)

  it("DPO: the same metrics and weights", function()
    local a = with(sft, {out_dir = out, base = out .. "/pre", name = "sftp", steps = 4})
    run(1, "sft", a, out .. "/sftp.log")
    local prompts = h.write(out .. "/prompts.jsonl",
      '{"prompt": "I think it was"}\n{"prompt": "The film is"}\n{"prompt": "She felt"}\n')
    local g = {out_dir = out, policy = out .. "/sftp", loss = "dpo", sft_steps = 4, steps = 10, batch_size = 16,
               eval_every = 5, eval_samples = 2, eval_prompts = prompts, threads = 1}
    run(1, "gdpo", with(g, {name = "dpo1"}), out .. "/dpo1.log")
    -- (a job ended by an error, as the stopped SFT run above, may leave a killed rank's private folder)
    local before = sys.listdir(private)
    run(2, "gdpo", with(g, {name = "dpo2"}), out .. "/dpo2.log")
    same_run("dpo1", "dpo2", 2e-5, 2e-5)
    assert.are.same(before, sys.listdir(private))
  end)

  -- GRPO and PPO: each rank samples its share of every iteration's prompts (and of
  -- the held-out ones); every completion draws from a random stream seeded by its
  -- place in the global batch, so both jobs sample the same completions.
  local function rl_start()
    if not h.exists(out .. "/sftrl/model.safetensors") then
      run(1, "sft", with(sft, {out_dir = out, base = out .. "/pre", name = "sftrl", steps = 4}), out .. "/sftrl.log")
    end
    return h.write(out .. "/reward_e.lua",
      "return function(prompt, response) local _, n = response:gsub('e', '') return n / 4 end\n")
  end

  it("GRPO: the same completions, metrics and weights", function()
    local g = {out_dir = out, policy = out .. "/sftrl", reward_script = rl_start(), source_prefix = "", iterations = 4,
               eval_every = 2, prompts_per_step = 4, num_generations = 4, eval_examples = 8, eval_samples = 2,
               max_new_tokens = 6, lr = 1e-3, threads = 1}
    run(1, "grpo", with(g, {name = "grpo1"}), out .. "/grpo1.log")
    run(2, "grpo", with(g, {name = "grpo2"}), out .. "/grpo2.log")
    same_run("grpo1", "grpo2", 2e-5, 2e-5)
  end)

  it("PPO (GAE, value model, whitening): the same completions, metrics and weights", function()
    local p = {out_dir = out, policy = out .. "/sftrl", reward = "script", reward_script = rl_start(), iterations = 4,
               batch_size = 8, mini_batch_size = 4, max_new_tokens = 6, lr = 1e-3, eval_every = 2, eval_batch = 8,
               threads = 1}
    run(1, "ppo", with(p, {name = "ppo1"}), out .. "/ppo1.log")
    run(2, "ppo", with(p, {name = "ppo2"}), out .. "/ppo2.log")
    same_run("ppo1", "ppo2", 2e-5, 2e-5)
    assert.is_true(weights_diff(out .. "/ppo1/value_model.safetensors", out .. "/ppo2/value_model.safetensors") < 2e-5)
  end)
end)
