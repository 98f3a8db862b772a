-- bench/soak.lua -- memory soak: trains a small GPT for 10,000 steps with no
-- collectgarbage() call and reports the resident size over the run.  The bar:
-- after warm-up, the resident size grows by less than 5%.
--
--   bin/lualign bench/soak.lua [steps=10000] [warmup=1000] [every=500] [threads=1]
--
-- Each step: a random batch of token ids, forward (with dropout), cross-entropy,
-- backward, gradient clipping, AdamW; every 1,000 steps a checkpoint is saved to
-- a temporary file and loaded back, and a few tokens are sampled, so that those
-- paths are soaked too.  Prints one line per `every` steps and a summary; exits
-- with status 1 when the growth is 5% or more.  Results: bench/README.md.
local la = require "lualign"

local opts = {steps = 10000, warmup = 1000, every = 500, threads = 1, n_layer = 2, n_embd = 64, n_head = 4,
              vocab = 256, context = 32, batch = 8, seed = 1}
for _, a in ipairs(arg or {}) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  if not k or opts[k] == nil then error("unknown argument " .. a .. " (keys: steps, warmup, every, threads, ...)") end
  opts[k] = math.tointeger(tonumber(v)) or tonumber(v)
end

local function rss_mib()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("n", "n")
  f:close()
  return resident * 4096 / 1048576
end

la.set_num_threads(opts.threads)
la.manual_seed(opts.seed)
local model = la.models.gpt{vocab_size = opts.vocab, n_positions = opts.context, n_embd = opts.n_embd,
                            n_layer = opts.n_layer, n_head = opts.n_head, dropout = 0.1}
local opt = la.optim.AdamW(model, {lr = 1e-3, weight_decay = 0.01})
local ckpt = os.tmpname()

print(string.format("soak: %d steps of a %d-layer GPT (%d parameters), batch %dx%d, %d thread(s)",
  opts.steps, opts.n_layer, model:num_parameters(), opts.batch, opts.context, opts.threads))
print(string.format("%8s %10s %14s %12s %10s", "step", "RSS MiB", "tensors MiB", "Lua KiB", "loss"))
local t0 = la.clock()
local base, peak, samples = nil, 0, {}
local loss_value
for step = 1, opts.steps do
  local ids = la.randint(0, opts.vocab, opts.batch, opts.context + 1)
  local x, y = ids:narrow(2, 1, opts.context), ids:narrow(2, 2, opts.context)
  local loss = model:loss(x, y)
  opt:zero_grad()
  loss:backward()
  la.optim.clip_grad_norm(model, 1.0)
  opt:step()
  loss_value = loss:item()
  if step % 1000 == 0 then
    la.checkpoint.save(ckpt, model:state_dict(), {step = tostring(step)})
    model:load_state_dict((la.checkpoint.load(ckpt)))
    model:eval()
    model:generate({{1, 2, 3}}, {max_new_tokens = 8, temperature = 1})
    model:train()
  end
  if step % opts.every == 0 or step == opts.steps then
    local rss = rss_mib()
    samples[#samples + 1] = {step = step, rss = rss}
    if step == opts.warmup then base = rss end
    if base and step > opts.warmup then peak = math.max(peak, rss) end
    print(string.format("%8d %10.1f %14.2f %12.0f %10.4f", step, rss, la.memory().live_bytes / 1048576,
      collectgarbage("count"), loss_value))
    io.stdout:flush()
  end
end
os.remove(ckpt)
local final = samples[#samples].rss
base = base or samples[1].rss
local growth = (final - base) / base * 100
local peak_growth = (math.max(peak, final) - base) / base * 100
print(string.format("RSS after warm-up (step %d) %.1f MiB, at the end %.1f MiB: %+.2f%% (peak %+.2f%%); "
  .. "%d full collections; %.1f s, %.2f ms/step", opts.warmup, base, final, growth, peak_growth,
  la.memory().collections, la.clock() - t0, (la.clock() - t0) / opts.steps * 1000))
if growth >= 5 then
  print("FAIL: the resident size grew by 5% or more after warm-up")
  os.exit(1)
end
print("ok: flat within 5% after warm-up")
