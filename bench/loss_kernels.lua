-- bench/loss_kernels.lua -- lualign's side of the sequence log-probs benchmark.
--
-- Per-sequence log-probs of B sequences of T tokens over a vocabulary of V,
-- forward and backward, one variant per process (so the process's peak RSS
-- belongs to that variant).  Prints one JSON object.
--
--   lua5.4 bench/loss_kernels.lua VARIANT V C [B=8] [T=512] [reps=3] [warmup=1] [mask=full|half]
--
-- VARIANT:
--   composed        logits (B,T,V) -> log_softmax -> gather -> * mask -> sum(T)
--   fused           logits -> lualign.loss.sequence_logprobs (one fused kernel)
--   linear_composed hidden (B,T,C), weight (V,C) -> linear -> composed
--   linear_fused    hidden, weight -> linear -> fused (logits still materialised)
--   hidden_fused    hidden, weight -> lualign.loss.sequence_logprobs_hidden (no logits at all)
--
-- Memory: "peak" is la.memory().peak_bytes after la.reset_peak_memory()
-- (live tensor bytes, inputs included); "extra" is that minus the bytes
-- live before the step (the inputs); "rss_extra" is the process's peak RSS
-- (VmHWM) minus its RSS once the inputs exist.  Run through
-- bench/loss_compare.lua, which alternates it with the PyTorch peer.

local la = require "lualign"

local variant = arg[1] or "fused"
local V, C = tonumber(arg[2] or 8192), tonumber(arg[3] or 384)
local B, T = tonumber(arg[4] or 8), tonumber(arg[5] or 512)
local reps, warmup = tonumber(arg[6] or 3), tonumber(arg[7] or 1)
local mask_kind = arg[8] or "full"
la.set_num_threads(tonumber(os.getenv("LUALIGN_THREADS") or "2"))

local function status_kib(field)
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. field .. ":%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

local function median(xs)
  local s = {table.unpack(xs)}
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

la.manual_seed(1)
local targets = la.randint(0, V, B, T)
local mask = la.ones(B, T)
if mask_kind == "half" then mask:narrow(2, 1, T // 2):fill(0) end   -- a prompt of T/2 tokens
local from_logits = variant == "composed" or variant == "fused"
local logits, hidden, weight
if from_logits then
  logits = la.randn(B, T, V):requires_grad()
else
  hidden = la.randn(B, T, C):requires_grad()
  weight = (la.randn(V, C) * 0.02):requires_grad()
end

local function composed(x)
  return (x:log_softmax(-1):gather(3, targets:unsqueeze(3)):squeeze(3) * mask):sum(2)
end

local steps = {
  composed = function() return composed(logits) end,
  fused = function() return la.loss.sequence_logprobs(logits, targets, mask) end,
  linear_composed = function() return composed(la.nn.functional.linear(hidden, weight)) end,
  linear_fused = function()
    return la.loss.sequence_logprobs(la.nn.functional.linear(hidden, weight), targets, mask)
  end,
  hidden_fused = function() return la.loss.sequence_logprobs_hidden(hidden, weight, targets, mask) end,
}
local step = assert(steps[variant], "unknown variant " .. variant)

collectgarbage()
collectgarbage()
local rss0 = status_kib("VmRSS")
local fwd, bwd, tot, peaks, extras, check = {}, {}, {}, {}, {}, nil
for rep = 1, warmup + reps do
  collectgarbage()
  la.reset_peak_memory()
  local live0 = la.memory().live_bytes
  local t0 = la.clock()
  local out = step()
  local t1 = la.clock()
  out:sum():backward()
  local t2 = la.clock()
  local m = la.memory()
  if rep > warmup then
    fwd[#fwd + 1], bwd[#bwd + 1], tot[#tot + 1] = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t0) * 1e3
    peaks[#peaks + 1], extras[#extras + 1] = m.peak_bytes, m.peak_bytes - live0
  end
  check = out:sum():item()
  out = nil
  if logits then logits.grad = nil end
  if hidden then hidden.grad, weight.grad = nil, nil end
end

local cjson = require "cjson"
print(cjson.encode({
  peer = "lualign", variant = variant, B = B, T = T, V = V, C = from_logits and 0 or C, mask = mask_kind,
  threads = la.get_num_threads(), forward_ms = median(fwd), backward_ms = median(bwd),
  total_ms = median(tot), peak_mib = median(peaks) / 2 ^ 20, extra_mib = median(extras) / 2 ^ 20,
  rss_extra_mib = (status_kib("VmHWM") - rss0) / 1024, check = check,
}))
